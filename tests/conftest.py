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


# What may differ between a call's environment and the forking parent's (tests/cli_zygote.py): variables read only
# while a command runs (HAR_COLAB_*), pytest's own, and the thread counts (the child sets torch's threads from them).
# Anything else (PYTHONPATH, HF_HUB_OFFLINE, ...) may be read at start-up, so such a call gets a fresh interpreter.
FORK_SAFE_ENV = ("HAR_COLAB_", "PYTEST_", "PYTHONUNBUFFERED", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class CliParent:
    """This test process's forking parent of `har-colab` processes (tests/cli_zygote.py), started on first use: each call
    is its own process with the caller's files, environment, directory and umask, minus 5-7 s of imports."""
    _one = None

    @classmethod
    def get(cls):
        if cls._one is None or cls._one.proc.poll() is not None: cls._one = cls()
        return cls._one

    def __init__(self):
        import atexit, tempfile
        self.dir = tempfile.mkdtemp(prefix="har_colab_cli_")
        self.path = os.path.join(self.dir, "sock")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = open(os.path.join(self.dir, "parent.log"), "w+")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_zygote.py")), self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=self.env, text=True)
        if self.proc.stdout.readline() != "ready\n":
            self.log.seek(0)
            raise RuntimeError("the forking parent of har-colab processes did not start:\n" + self.log.read()[-3000:])
        atexit.register(self.proc.stdin.close)          # it exits when its stdin closes

    def takes(self, env) -> bool:
        "Whether a forked child can have `env` (see FORK_SAFE_ENV)."
        for k in set(env) | set(self.env):
            a, b = env.get(k), self.env.get(k)
            if a == b or k.startswith(FORK_SAFE_ENV[:2]) or k == "PYTHONUNBUFFERED": continue
            if k in FORK_SAFE_ENV and a and a.isdigit() and a == env.get("OMP_NUM_THREADS"): continue
            return False
        return True

    def run(self, argv, cwd, env, timeout, umask=None):
        import json, signal, tempfile
        from cli_client import send_request
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as nul, \
             send_request(self.path, [nul.fileno(), out.fileno(), err.fileno()],
                          {"argv": argv, "env": env, "cwd": str(cwd or os.getcwd()), "umask": umask}) as s:
            buf = b""
            def answer():                               # the parent's next JSON line
                nonlocal buf
                while b"\n" not in buf:
                    got = s.recv(4096)
                    if not got: raise RuntimeError("the forking parent of har-colab processes went away: " + self.dir)
                    buf += got
                line, buf = buf.split(b"\n", 1)
                return json.loads(line)
            pid = answer()["pid"]
            s.settimeout(timeout)
            try: status, timed_out = answer()["status"], False
            except TimeoutError:
                os.kill(pid, signal.SIGKILL); s.settimeout(None)
                status, timed_out = answer()["status"], True
            out.seek(0); err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if timed_out: raise subprocess.TimeoutExpired(argv, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), stdout, stderr)


def python_command(env, fresh=False):
    """The start of a command line that runs `-m MODULE ARGS` or `SCRIPT ARGS` the way `python` would, for processes the
    tests do not start themselves (torchrun's): a small client (tests/cli_client.py) whose process is forked from
    `CliParent` with the client's environment, files and signals, when `env` (the environment the command is started
    with) allows it; else (`fresh`, or HAR_COLAB_TEST_FRESH_CLI=1) the interpreter itself. torchrun adds RANK,
    MASTER_ADDR, TORCHELASTIC_*, ...: read when the process group starts, never at start-up, so they may differ."""
    if not fresh and not os.environ.get("HAR_COLAB_TEST_FRESH_CLI"):
        parent = CliParent.get()
        if parent.takes(env): return [sys.executable, str(Path(__file__).with_name("cli_client.py")), parent.path]
    return [sys.executable]


def run_cli(*args, cwd=None, timeout=1500, env=None, **popen):
    """Run `har-colab ARGS` in its own process (`popen`: more `subprocess.run` arguments); returns CompletedProcess with
    text stdout/stderr. The process is forked from `CliParent` when it can be, else (or with HAR_COLAB_TEST_FRESH_CLI=1)
    a fresh interpreter runs the console script."""
    e = dict(os.environ, **(env or {}))
    e.setdefault("PYTHONUNBUFFERED", "1")
    argv = [str(BIN / "har-colab"), *map(str, args)]
    if not os.environ.get("HAR_COLAB_TEST_FRESH_CLI") and set(popen) <= {"umask"}:
        parent = CliParent.get()
        if parent.takes(e): return parent.run(argv, cwd, e, timeout, **popen)
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e, **popen)


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
