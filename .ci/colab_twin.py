"""The Colab twin: har_colab installed the way a Colab notebook installs it, into Colab's packages, then tested as installed.

`make test-colab` (CI runs it after `make test`); `python .ci/colab_twin.py --install-only` stops after step 5, and
`--venv-only` after step 2 (`.ci/run` makes the venv that way while `make test` runs, then `make test-colab` takes it).
Steps, each timed:
1. settings.ini's lower bounds never exceed Colab's versions: a requirement of ours or of an extra with a `>=` bound
   above the version .ci/colab_image.txt pins fails, naming each;
2. a venv of Python 3.13 (Colab's) from pyenv, holding Colab's image: Colab's pip, then .ci/colab_image.txt (Colab's
   GPU image as far as our dependencies, extras and the notebook stack touch it, ipywidgets 7.7.1 included) with one
   `pip install -r`; the versions it holds are recorded;
3. our sdist and wheel built from this checkout (`python -m build`: the wheel is built from the sdist), `twine check`;
4. the wheel installed with plain `pip install` and no constraints file, as the tutorials' install cell does; pip takes
   the newest releases of what Colab lacks (PyAV, decord2, pytorchvideo, ...). Then, after an uninstall, the same from
   the sdist (the installed files must be the wheel's), then each extra (hf, export, tensorboard, torchcodec) with
   plain pip. After each install, every package of the list whose version pip changed is named (name, before, after)
   and the twin fails: installing har_colab changes none of Colab's versions;
5. the test tools (pytest, ...), which must not change the list's versions either;
6. the non-slow test suite, copied outside the checkout so that it imports the installed package, which includes the
   tutorial notebooks in SMOKE mode (tests/test_tutorials.py): the suite runs at Colab's versions (numpy 2.1,
   ipywidgets 7, transformers 5.15, ...), the dev venv at constraints.txt's.
The venv (.venv-colab) is kept between local runs while the list is unchanged: what earlier runs installed beyond the
list is uninstalled and the list installed again, so a reused venv starts as a new one; under CI (CI=true) it is made
anew, except that a venv made by `--venv-only` in the same CI run (`HAR_COLAB_CI_RUN`, set by `.ci/run`) is taken as
it is, once. Python 3.13 comes from `HAR_COLAB_TWIN_PYTHON` or pyenv (`$(pyenv root)/versions/3.13.*`); without one it checks
the bounds (step 1), prints one SKIP line and exits 0.
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

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-colab"
IMAGE = ROOT / ".ci" / "colab_image.txt"         # Colab's GPU image (2026-08-19) as far as we touch it
# Colab has the CUDA toolkit on the loader path; torchcodec's build links its NPP (libnppicc.so.13), which a pip-installed
# torch does not bring: nvidia-npp of torch's CUDA 13.0, its folder on LD_LIBRARY_PATH (see `colab_env`). Not Colab's
# package (Colab's torch is a CUDA 12.8 build with the toolkit beside it), so not in the list
TWIN_ONLY = ["nvidia-npp==13.0.*"]
EXTRAS = ["hf", "export", "tensorboard", "torchcodec"]                             # setup.py's extras but dev
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


def norm(name) -> str: return re.sub(r"[-_.]+", "-", name).lower()


def image_pins() -> dict:
    "name -> version of each `name==version` line of .ci/colab_image.txt."
    pins = {}
    for line in IMAGE.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"): continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if not m: sys.exit(f"colab twin: {IMAGE.name}: '{line}' is not name==version")
        pins[norm(m[1])] = m[2]
    return pins


def bounds_above_image(pins) -> list:
    "'key: name>=bound > Colab's version' for each lower bound in settings.ini (requirements and extras) above the list's."
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    keys = ["requirements"] + [f"{e}_requirements" for e in EXTRAS if cfg.has_option("DEFAULT", f"{e}_requirements")]
    bad = []
    for key in keys:
        for req in cfg["DEFAULT"][key].split():
            m = re.match(r"([A-Za-z0-9_.-]+)(?:\[.*\])?>=([^,;]+)", req)
            if m and norm(m[1]) in pins and Version(m[2]) > Version(pins[norm(m[1])]):
                bad.append(f"{key}: {req} > Colab's {pins[norm(m[1])]}")
    return bad


def versions(py) -> dict:
    out = run(py, "-m", "pip", "list", "--format=json", quiet=True).stdout
    return {norm(p["name"]): p["version"] for p in json.loads(out)}


def torch_runtime(name) -> bool:
    "The CUDA runtime packages torch pins for itself (they differ between Colab's CUDA 12.8 build and PyPI's)."
    return name.startswith(("nvidia-", "cuda-")) or name == "triton"


def make_venv(python, pins):
    "The twin venv with Colab's image; reused (never under CI) when made from the same list by the same Python."
    stamp = VENV / ".colab_set.json"
    want = {"python": python, "image": hashlib.sha256(IMAGE.read_bytes()).hexdigest()}
    py = VENV / "bin" / "python"
    same = stamp.exists() and json.loads(stamp.read_text()) == want and py.exists()
    fresh, ci_run = VENV / ".made_in_ci_run", os.environ.get("HAR_COLAB_CI_RUN")
    if same and ci_run and fresh.exists() and fresh.read_text() == ci_run:   # `--venv-only` made it in this CI run
        fresh.unlink()
        say(f"taking {VENV.name} as `--venv-only` made it earlier in this CI run")
        return py
    reuse = os.environ.get("CI") != "true" and same
    if reuse:        # what earlier runs added (har_colab, its dependencies, the test tools) goes; the list comes back
        extra = sorted(n for n in versions(py) if n not in pins and not torch_runtime(n) and n not in ("setuptools", "wheel"))
        if extra: run(py, "-m", "pip", "uninstall", "-y", "-q", *extra, quiet=True)
        say(f"reusing {VENV.name} (the list is unchanged; CI makes it anew): removed {len(extra)} packages installed since")
    else:
        shutil.rmtree(VENV, ignore_errors=True)
        run(python, "-m", "venv", VENV)
        say(f"installing Colab's image into {VENV.name}: {len(pins)} packages of {IMAGE.name}")
    if "pip" in pins: run(py, "-m", "pip", "install", "-q", f"pip=={pins['pip']}", quiet=True)   # Colab's pip resolves ours
    run(py, "-m", "pip", "install", "-q", "-r", IMAGE, *TWIN_ONLY, quiet=True)
    stamp.write_text(json.dumps(want))
    return py


def changed(before, after, names) -> list:
    "'name before -> after' for each of `names` whose installed version differs (or that is gone)."
    return [f"{n} {before.get(n)} -> {after.get(n, '(uninstalled)')}" for n in names if before.get(n) != after.get(n)]


def check_kept(py, before, names, what):
    "Colab's packages keep their versions after `what`: else fail, naming every one that changed."
    moved = changed(before, versions(py), names)
    if moved: sys.exit(f"colab twin: {what} changed {len(moved)} of Colab's packages: " + "; ".join(moved))


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


def main(argv=None):
    install_only = "--install-only" in (sys.argv[1:] if argv is None else argv)
    pins = image_pins()
    bad = bounds_above_image(pins)
    if bad: sys.exit(f"colab twin: settings.ini lower bounds above Colab's versions ({IMAGE.name}): " + "; ".join(bad))
    say(f"settings.ini's lower bounds are at most Colab's versions ({IMAGE.name}, {len(pins)} packages)")
    python, pyenv_root = find_python()
    if python is None:
        print(f"SKIP colab twin: no Python 3.13 under {pyenv_root}/versions (pyenv install 3.13 to run it)")
        return 0
    venv_only = "--venv-only" in (sys.argv[1:] if argv is None else argv)
    py = make_venv(python, pins)
    names = sorted(pins)
    before = versions(py)
    wrong = changed({n: pins[n] for n in names}, before, names)
    if wrong: sys.exit(f"colab twin: {VENV.name} does not hold {IMAGE.name} after installing it: " + "; ".join(wrong))
    if venv_only:
        if os.environ.get("HAR_COLAB_CI_RUN"): (VENV / ".made_in_ci_run").write_text(os.environ["HAR_COLAB_CI_RUN"])
        say(f"--venv-only: {VENV.name} holds Colab's image")
        return 0
    say("Colab's image installed: " + ", ".join(f"{n} {before[n]}" for n in
                                                  ("torch", "torchvision", "torchcodec", "transformers", "numpy", "ipywidgets")))
    with tempfile.TemporaryDirectory(prefix="har_colab_twin_") as tmp:
        tmp = Path(tmp)
        run(sys.executable, "-m", "build", "--outdir", tmp / "dist", ROOT, quiet=True)
        sdist, wheel = (next((tmp / "dist").glob(p)) for p in ("*.tar.gz", "*.whl"))
        run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
        say(f"built {sdist.name} and {wheel.name} (the wheel from the sdist); twine check passed")
        r = run(py, "-m", "pip", "install", wheel, quiet=True)   # plain pip, no constraints: the notebook's install cell
        say("pip install " + wheel.name + ": " + (r.stdout.strip().splitlines() or ["(nothing new)"])[-1])
        check_kept(py, before, names, f"pip install {wheel.name}")
        say(f"Colab's {len(names)} packages kept their versions")
        files = package_files(wheel)
        run(py, "-m", "pip", "uninstall", "-y", "-q", "har_colab", quiet=True)
        run(py, "-m", "pip", "install", "-q", sdist, quiet=True)
        if installed_files(py, files) != files: sys.exit("colab twin: the sdist installs other files than the wheel")
        check_kept(py, before, names, f"pip install {sdist.name}")
        say(f"pip install {sdist.name}: the wheel's {len(files)} files, Colab's packages kept")
        for extra in EXTRAS:                                      # plain pip again: what `pip install har_colab[hf]` does
            r = run(py, "-m", "pip", "install", f"{wheel}[{extra}]", quiet=True)
            check_kept(py, before, names, f"pip install har_colab[{extra}]")
            added = [l for l in r.stdout.splitlines() if l.startswith("Successfully installed")] or ["nothing new"]
            say(f"pip install har_colab[{extra}]: {added[-1]}; Colab's packages kept")
        run(py, "-m", "pip", "install", "-q", *TEST_TOOLS, quiet=True)
        check_kept(py, before, names, "pip install " + " ".join(TEST_TOOLS))
        deps = versions(py)
        say("installed by pip: " + ", ".join(f"{n} {deps[n]}" for n in ("av", "decord2", "pytorchvideo", "rarfile", "onnx",
                                                                         "onnxruntime") if n in deps))
        if install_only:
            say("--install-only: the install checks passed; the suite is not run")
            return 0
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
