"""Packaging for har_colab, read from settings.ini (nbdev 2 layout, without pkg_resources)."""
from configparser import ConfigParser
import shlex
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

licenses = {'apache2': 'Apache-2.0'}   # settings.ini's nbdev name -> the SPDX expression (PEP 639)
statuses = ['0 - Pre-Planning', '1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature',
            '7 - Inactive']   # PyPI's trove classifiers
lic = licenses[cfg['license'].lower()]
min_python = cfg['min_python']
py_versions = ['3.9', '3.10', '3.11', '3.12', '3.13']

def reqs(key):
    return shlex.split(cfg.get(key, ''))

with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setuptools.setup(
    name=cfg['lib_name'],
    license=lic,
    license_files=['LICENSE'],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['har_colab', 'har_colab.*']),
    include_package_data=True,
    install_requires=reqs('requirements'),
    extras_require={'dev': reqs('dev_requirements'), 'torchcodec': ['torchcodec'], 'hf': reqs('hf_requirements'),
                    'export': reqs('export_requirements'), 'tensorboard': reqs('tensorboard_requirements')},
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + min_python,
    long_description=long_description,
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d'],
    },
    version=cfg['version'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    description=cfg['description'],
    keywords=cfg['keywords'],
)
