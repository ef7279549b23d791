import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

# The cores shared out among the xdist workers: CI runs the suite in 2 workers on 2 cores, and every training subprocess
# would otherwise start one OpenMP thread per core next to its DataLoader workers, so the threads of both workers fight
# over the cores and spin while they wait (two demo runs side by side, 2 epochs each: 268 s; with one thread each: 107 s).
# Set before torch is imported, so the test processes and their subprocesses (the CLI, torchrun, Jupyter kernels)
# inherit it; a value already set is kept, and without xdist (-n 0) torch keeps its default.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, _cores // _workers)))


def run_cli(*args, cwd=None, timeout=1500, env=None, **popen):
    "Run `har-colab ARGS` in a subprocess (`popen`: more `subprocess.run` arguments); returns CompletedProcess with text stdout/stderr."
    e = dict(os.environ, **(env or {}))
    e.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run([str(BIN / "har-colab"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e, **popen)


@pytest.fixture(scope="session")
def motion_data(tmp_path_factory):
    "A small synthetic motion dataset (8 classes x 100 videos, the demo default), made once per test session."
    from har_colab.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "motion", classes=8, videos_per_class=100, frames=24)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    "A smaller motion dataset (4 classes x 14 videos, 20 frames) for resume and DDP tests."
    from har_colab.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(tmp_path_factory.mktemp("small") / "motion", classes=4, videos_per_class=14, frames=20)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("HAR_COLAB_HOME", str(tmp_path / "home"))


def pytest_sessionstart(session):
    "Under the Colab twin (HAR_COLAB_EXPECT_INSTALLED=1) the suite must test the installed package, not a source tree."
    if os.environ.get("HAR_COLAB_EXPECT_INSTALLED"):
        import har_colab
        if "site-packages" not in Path(har_colab.__file__).parts:
            raise pytest.UsageError(f"testing {har_colab.__file__}, not the installed har_colab: run from outside the checkout")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavier tests (large models on the CPU); still run by `make test`")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def cli_in_process(*args):
    "`har-colab ARGS` in this process (for refusals and commands that start no DataLoader), as a CompletedProcess-like object."
    import contextlib, io, types
    from har_colab.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def one_line(r, *words):
    "Exit 2, one line on stderr that contains `words`, no traceback anywhere; returns the line."
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-1500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
    for w in words: assert w in lines[0], lines[0]
    return lines[0]
