"""A parent that has already imported what every `har-colab` process imports (torch, torch._dynamo, torchvision,
matplotlib, har_colab), and forks one child per CLI call of the tests.

Each `har-colab` process of the suite would otherwise spend 5 to 7 s of CPU importing before it does anything, and the
suite starts a few hundred of them. The child is still its own process, as `subprocess.run` makes one: its own
stdin/stdout/stderr (files of the caller, passed over a Unix socket), the caller's environment, working directory and
umask, `sys.argv` as the console script sets it, then `sys.exit(main())` like the console script, and an exit status
(a negative signal number when it died of one, e.g. a SIGKILL injected by HAR_COLAB_KILL_*). The parent never runs
anything after its imports, so every child starts from the same state a fresh process reaches after those imports.

What a forked child cannot take from the caller it is not given: `conftest.run_cli` starts a fresh interpreter when
the call's environment differs from the parent's in anything read at start-up (PYTHONPATH, HF_*, ...; see
`conftest.FORK_SAFE_ENV`), and always with HAR_COLAB_TEST_FRESH_CLI=1.

Protocol (one connection per call): the caller sends 1 byte with three file descriptors (stdin, stdout, stderr), then a
length-prefixed JSON request {argv, env, cwd, umask, run}; the parent answers a JSON line {"pid": N}, and when the child
has ended a JSON line {"status": S} (S as `os.waitpid` gives it). `run` says what the child runs as `__main__`: absent,
the console script (`main()` with `argv` as sys.argv); {"module": M}, `python -m M ARGV`; {"script": S}, `python S ARGV`
(tests/cli_client.py, the stand-in process torchrun starts). A caller that goes away before its child has ended (killed,
or its connection closed) takes the child with it: SIGKILL, as the kernel would end a process group. The parent exits
when its stdin closes (its test process is gone)."""
import json
import os
import select
import socket
import struct
import sys

sys.path[0] = os.path.dirname(sys.executable)      # as for the console script: its bin folder, not this file's folder

import torch                                       # noqa: E402  (what every har-colab process imports, in this order)
import torch._dynamo                               # noqa: E402,F401  (torch.optim imports it on the first optimizer)
import har_colab.cli                               # noqa: E402,F401
import har_colab.core                              # noqa: E402,F401
import har_colab.train                             # noqa: E402,F401  (models, clips, video, plots and matplotlib)


def _recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        got = conn.recv(n - len(buf))
        if not got: raise EOFError("the caller went away")
        buf += got
    return buf


def _send(conn, obj):
    try: conn.sendall((json.dumps(obj) + "\n").encode())
    except OSError: pass                           # the caller gave up (its timeout): nothing to tell


def serve(path):
    """Accept calls until the caller's stdin closes; returns only in a forked child, with (request, fds, to_close)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path); listener.listen(16)
    sys.stdout.write("ready\n"); sys.stdout.flush()
    children = {}                                  # pid -> the caller's connection
    while True:
        callers = {conn: pid for pid, conn in children.items() if conn is not None}
        ready, _, _ = select.select([listener, sys.stdin, *callers], [], [], 0.05 if children else 1.0)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            for pid in children: os.kill(pid, 9)
            os._exit(0)
        for conn in set(ready) & set(callers):     # a caller sends nothing after its request: this is its end
            try: gone = not conn.recv(1)
            except OSError: gone = True
            if gone:
                pid = callers[conn]
                os.kill(pid, 9); conn.close(); children[pid] = None
        if listener in ready:
            conn, _ = listener.accept()
            try:
                _, fds, _, _ = socket.recv_fds(conn, 1, 3)
                req = json.loads(_recv_exact(conn, struct.unpack("!I", _recv_exact(conn, 4))[0]))
            except (OSError, EOFError, ValueError):
                conn.close(); continue
            pid = os.fork()
            if pid == 0:
                return req, fds, [listener, conn, *children.values()]
            for fd in fds: os.close(fd)
            children[pid] = conn
            _send(conn, {"pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0: break
            conn = children.pop(pid, None)
            if conn is not None: _send(conn, {"status": status}); conn.close()


def child(req, fds, to_close):
    "In the forked child: become the `har-colab` process the caller asked for."
    for s in to_close:
        if s is not None: s.close()
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    os.environ.clear(); os.environ.update(req["env"])
    os.chdir(req["cwd"])
    if req.get("umask") is not None: os.umask(req["umask"])
    threads = req["env"].get("OMP_NUM_THREADS")
    if threads: torch.set_num_threads(int(threads))   # the OpenMP runtime read the variable when torch loaded it
    import random
    random.seed()                                  # (Python reseeds `random` after a fork itself; numpy does not)
    import numpy as np
    np.random.seed()
    sys.argv = list(req["argv"])


def run(req):
    "Run what the request names as `__main__`, as the interpreter's command line would."
    import runpy
    what = req.get("run") or {}
    if "module" in what:                           # python -m M: sys.path[0] is the working directory
        sys.path[0] = os.getcwd()
        sys.modules.pop(what["module"], None)      # run as __main__ only, as a fresh `python -m` does
        runpy.run_module(what["module"], run_name="__main__", alter_sys=True)
    elif "script" in what:                         # python S: sys.path[0] is the script's folder
        sys.path[0] = os.path.dirname(os.path.abspath(what["script"]))
        runpy.run_path(what["script"], run_name="__main__")
    else:
        from har_colab.cli import main
        sys.exit(main())


if __name__ == "__main__":
    request, fds, to_close = serve(sys.argv[1])
    child(request, fds, to_close)
    run(request)
