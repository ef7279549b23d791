"Stand-in `google.colab.drive`: `mount(path)` makes `path/MyDrive` (a plain folder) and records the call."
import os

calls = []


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    calls.append(mountpoint)
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
    with open(os.path.join(mountpoint, ".mounts"), "a") as f:
        f.write("mounted\n")


def flush_and_unmount(timeout_ms=24 * 3600 * 1000):
    pass
