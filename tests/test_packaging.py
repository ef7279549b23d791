"""The package as PyPI would ship it: sdist and wheel build from the checkout (the wheel from the sdist), pass
`twine check`, carry the version of settings.ini, and the sdist installs into a fresh venv (it once lacked settings.ini,
so its setup.py failed). The Colab twin (.ci/colab_twin.py) installs both with their dependencies."""
import configparser
import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs a source checkout (setup.py)")]


def run(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_sdist_and_wheel_build_pass_twine_and_the_sdist_installs(tmp_path):
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    version = cfg["DEFAULT"]["version"]
    run(sys.executable, "-m", "build", "--outdir", tmp_path / "dist", ROOT)
    sdist, wheel = (tmp_path / "dist" / f"har_colab-{version}.tar.gz"), (tmp_path / "dist" / f"har_colab-{version}-py3-none-any.whl")
    assert sdist.exists() and wheel.exists(), sorted(p.name for p in (tmp_path / "dist").iterdir())
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    names = set(tarfile.open(sdist).getnames())
    for f in ("settings.ini", "setup.py", "README.md", "LICENSE", "CHANGELOG.md", "har_colab/__init__.py", "tests/conftest.py",
              "tests/fake_colab/google/colab/drive.py", "nbs/tutorials/own_dataset.ipynb"):
        assert f"har_colab-{version}/{f}" in names, f
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    with zipfile.ZipFile(wheel) as z:
        files = {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist() if n.startswith("har_colab/")}
        assert f'__version__ = "{version}"' in z.read("har_colab/__init__.py").decode()           # one version: settings.ini's
        meta = z.read(f"har_colab-{version}.dist-info/METADATA").decode()
    assert "Requires-Dist: torch>=" in meta and "License-File: LICENSE" in meta
    # a fresh venv; --no-deps: this checks the sdist itself (the twin installs it with torch and the rest)
    run(sys.executable, "-m", "venv", tmp_path / "venv")
    py = tmp_path / "venv" / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--no-deps", sdist)
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    assert {n: hashlib.sha256((site / n).read_bytes()).hexdigest() for n in files} == files      # the wheel's files
    assert run(py, "-c", "import har_colab; print(har_colab.__version__)", cwd=tmp_path).stdout.strip() == version
    assert (tmp_path / "venv" / "bin" / "har-colab").exists()
