"""The Colab twin: har_colab installed the way a Colab notebook installs it, then tested as installed.

`make test-colab` (CI runs it after `make test`). Steps, each timed:
1. a venv of Python 3.13 (Colab's) from pyenv, with Colab's preinstalled packages: torch, torchvision, torchcodec and
   transformers at Colab's versions, tensorboard, ipykernel, nbclient, and the preinstalled packages that we also
   require (numpy, matplotlib, ...) at the lowest version settings.ini claims, so those bounds are tested;
2. our sdist and wheel built from this checkout (`python -m build`: the wheel is built from the sdist), `twine check`;
3. the wheel installed with plain `pip install` and no constraints file, as the tutorials' install cell does; pip takes
   the newest releases of what Colab lacks (PyAV, decord2, pytorchvideo, ...); Colab's packages must keep their versions;
4. the same from the sdist (the installed files must be the wheel's);
5. the non-slow test suite, copied outside the checkout so that it imports the installed package, which includes the
   tutorial notebooks in SMOKE mode (tests/test_tutorials.py).
The venv (.venv-colab) is kept between local runs while its Colab set is unchanged; under CI (CI=true) it is made anew.
Python 3.13 comes from `HAR_COLAB_TWIN_PYTHON` or pyenv (`$(pyenv root)/versions/3.13.*`); without one it prints one
SKIP line and exits 0.
"""
import configparser
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-colab"
# Colab's runtime of 2026-08: Python 3.13, FFmpeg 4.4; PyAV, decord and pytorchvideo are not preinstalled
# Colab has the CUDA toolkit on the loader path; torchcodec's build links its NPP (libnppicc.so.13), which a pip-installed
# torch does not bring: nvidia-npp of torch's CUDA 13.0, its folder on LD_LIBRARY_PATH (see `colab_env`)
COLAB = ["torch==2.11.0", "torchvision==0.26.0", "torchcodec==0.11.0", "transformers==5.15.0", "tensorboard", "ipykernel",
         "nbclient", "nvidia-npp==13.0.*"]
LOWEST = ["numpy", "matplotlib", "ipywidgets", "tqdm", "gdown"]    # preinstalled in Colab and required by us
TEST_TOOLS = ["pytest", "pytest-timeout", "pytest-xdist", "scikit-video"]          # what the suite needs beyond the package
T0 = time.time()


def say(msg):
    print(f"colab twin [{time.time() - T0:5.0f} s] {msg}", flush=True)


def run(*cmd, quiet=False, **kw):
    "Run `cmd`, failing loudly; with `quiet`, its output is shown only when it fails."
    r = subprocess.run([str(c) for c in cmd], text=True, capture_output=quiet, **kw)
    if r.returncode:
        if quiet: print(r.stdout[-6000:], r.stderr[-6000:], sep="\n", file=sys.stderr)
        sys.exit(f"colab twin: failed ({r.returncode}): {' '.join(map(str, cmd))}")
    return r


def find_python():
    "`HAR_COLAB_TWIN_PYTHON` (e.g. from actions/setup-python), else the newest Python 3.13 under pyenv's versions, or None."
    if os.environ.get("HAR_COLAB_TWIN_PYTHON"): return os.environ["HAR_COLAB_TWIN_PYTHON"], "HAR_COLAB_TWIN_PYTHON"
    try: root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
    except OSError: root = ""
    root = root or os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = sorted(glob.glob(f"{root}/versions/3.13.*/bin/python3.13"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parents[1].name)])
    return (found[-1] if found else None), root


def lowest_bounds():
    "`name==lowest` for the LOWEST packages, read from settings.ini's requirements."
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    bounds = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(?:,.*)?", r).groups()
                  for r in cfg["DEFAULT"]["requirements"].split() if ">=" in r)
    missing = [n for n in LOWEST if n not in bounds]
    if missing: sys.exit(f"colab twin: settings.ini requirements has no lower bound for {missing}")
    return [f"{n}=={bounds[n]}" for n in LOWEST]


def versions(py) -> dict:
    out = run(py, "-m", "pip", "list", "--format=json", quiet=True).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def make_venv(python, preinstalled):
    "The twin venv with Colab's packages, reused when it holds exactly `preinstalled` (never under CI)."
    stamp = VENV / ".colab_set.json"
    want = {"python": python, "packages": preinstalled}
    py = VENV / "bin" / "python"
    if os.environ.get("CI") != "true" and stamp.exists() and json.loads(stamp.read_text()) == want and py.exists():
        run(py, "-m", "pip", "uninstall", "-y", "-q", "har_colab", quiet=True)
        say(f"reusing {VENV.name} (Colab's set unchanged; CI makes it anew)")
        return py
    shutil.rmtree(VENV, ignore_errors=True)
    run(python, "-m", "venv", VENV)
    run(py, "-m", "pip", "install", "-q", "--upgrade", "pip", quiet=True)
    say(f"installing Colab's set into {VENV.name}: {' '.join(preinstalled)}")
    run(py, "-m", "pip", "install", "-q", *preinstalled, quiet=True)
    stamp.write_text(json.dumps(want))
    return py


def check_kept(py, before, names):
    "Colab's packages keep their versions after an install of ours."
    after = versions(py)
    changed = {n: (before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)}
    if changed: sys.exit(f"colab twin: installing har_colab changed Colab's packages: {changed}")


def colab_env(py) -> dict:
    "The environment of the suite: no PYTHONPATH, the venv first on PATH, the CUDA libraries on the loader path as in Colab."
    site = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", quiet=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cuda = os.pathsep.join([f"{site}/nvidia/cu13/lib"] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
    env.update(HAR_COLAB_EXPECT_INSTALLED="1", PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}", LD_LIBRARY_PATH=cuda)
    return env


def package_files(wheel) -> dict:
    with zipfile.ZipFile(wheel) as z:
        return {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist() if n.startswith("har_colab/")}


def installed_files(py, names) -> dict:
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", quiet=True).stdout.strip())
    return {n: hashlib.sha256((site / n).read_bytes()).hexdigest() for n in names}


def main():
    python, pyenv_root = find_python()
    if python is None:
        print(f"SKIP colab twin: no Python 3.13 under {pyenv_root}/versions (pyenv install 3.13 to run it)")
        return 0
    preinstalled = COLAB + lowest_bounds()
    py = make_venv(python, preinstalled)
    names = [re.split(r"[=<>]", s)[0].lower() for s in preinstalled]
    before = versions(py)
    say("Colab's set: " + ", ".join(f"{n} {before.get(n)}" for n in names))
    with tempfile.TemporaryDirectory(prefix="har_colab_twin_") as tmp:
        tmp = Path(tmp)
        run(sys.executable, "-m", "build", "--outdir", tmp / "dist", ROOT, quiet=True)
        sdist, wheel = (next((tmp / "dist").glob(p)) for p in ("*.tar.gz", "*.whl"))
        run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
        say(f"built {sdist.name} and {wheel.name} (the wheel from the sdist); twine check passed")
        r = run(py, "-m", "pip", "install", wheel, quiet=True)   # plain pip, no constraints: the notebook's install cell
        say("pip install " + wheel.name + ": " + (r.stdout.strip().splitlines() or ["(nothing new)"])[-1])
        check_kept(py, before, names)
        say("Colab's packages kept their versions: " + ", ".join(f"{n} {before[n]}" for n in names if n in before))
        files = package_files(wheel)
        run(py, "-m", "pip", "uninstall", "-y", "-q", "har_colab", quiet=True)
        run(py, "-m", "pip", "install", "-q", sdist, quiet=True)
        if installed_files(py, files) != files: sys.exit("colab twin: the sdist installs other files than the wheel")
        check_kept(py, before, names)
        say(f"pip install {sdist.name}: the wheel's {len(files)} files, Colab's packages kept")
        run(py, "-m", "pip", "install", "-q", *TEST_TOOLS, quiet=True)
        check_kept(py, before, names)
        deps = versions(py)
        say("installed by pip: " + ", ".join(f"{n} {deps[n]}" for n in ("av", "decord2", "pytorchvideo", "gdown", "rarfile") if n in deps))
        suite = tmp / "suite"                                     # outside the checkout: imports the installed package
        shutil.copytree(ROOT / "tests", suite / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "nbs" / "tutorials", suite / "nbs" / "tutorials")
        shutil.copy2(ROOT / "benchmarks" / "gpu_check.py", suite / "gpu_check.py")   # tests/test_gpu_check.py runs it
        env = colab_env(py)
        where = run(py, "-c", "import har_colab, torchcodec.decoders, av, decord; print(har_colab.__file__, har_colab.__version__)",
                    cwd=suite, env=env, quiet=True).stdout.strip()           # and all three decoders import
        say(f"suite in {suite}, against {where}")
        r = subprocess.run([str(py), "-m", "pytest", "tests", "-q", "-m", "not slow", "-n", "2", "--dist", "worksteal",
                            "--timeout", "600", "--durations", "15", "-p", "no:cacheprovider"], cwd=suite, env=env)
    say(f"done, exit {r.returncode}")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
