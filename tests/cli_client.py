"""A stand-in for a `python [-m MODULE | SCRIPT] ARGS` process, for the processes that torchrun starts in the tests:
`python cli_client.py SOCKET -m har_colab.cli ARGS` (or `SCRIPT ARGS`) asks the forking parent at SOCKET
(tests/cli_zygote.py) for a child that runs `-m har_colab.cli ARGS` with this process's stdin/stdout/stderr,
environment (torchrun's RANK, MASTER_PORT, ... included), working directory and umask, then lives as long as that child:
the signals torchrun sends it (SIGTERM, SIGINT, ...) go on to the child, and it ends as the child ended (the same exit
code, or the same signal). When this process is SIGKILLed, the parent SIGKILLs the child (the connection closes).

It imports no torch: a few tens of milliseconds of start-up instead of 5 to 7 s of CPU per process."""
import json
import os
import signal
import socket
import struct
import sys


def send_request(path, fds, request:dict) -> socket.socket:
    "A call to the forking parent at `path` (tests/cli_zygote.py): `fds` (stdin, stdout, stderr), then `request`."
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socket.send_fds(s, [b"F"], list(fds))
    req = json.dumps(request).encode()
    s.sendall(struct.pack("!I", len(req)) + req)
    return s


def main():
    path, *argv = sys.argv[1:]
    what = {"module": argv[1]} if argv[0] == "-m" else {"script": os.path.abspath(argv[0])}
    args = argv[2:] if argv[0] == "-m" else argv[1:]
    umask = os.umask(0); os.umask(umask)
    s = send_request(path, [0, 1, 2], {"run": what, "argv": ["-", *args], "env": dict(os.environ), "cwd": os.getcwd(),
                                       "umask": umask})
    answers = s.makefile("rb")
    line = answers.readline()
    if not line: sys.exit("cli_client: the forking parent went away before it started the process")
    pid = json.loads(line)["pid"]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda n, _frame: os.kill(pid, n))
    line = answers.readline()                     # retried after a forwarded signal (PEP 475)
    if not line: sys.exit("cli_client: the forking parent went away while the process ran")
    status = json.loads(line)["status"]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
