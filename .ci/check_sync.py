"""Fail when notebooks are not clean, the library is not exported, or README.md is stale.

Runs nbdev_clean and nbdev_export on copies' behalf: it snapshots nbs/ and har_colab/, runs the tools, and reports
(and keeps) any change they made, so a developer sees exactly what to commit.
"""
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def snapshot(folder, pattern):
    return {p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / folder).rglob(pattern)) if ".ipynb_checkpoints" not in p.parts}


def changed(before, after):
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def main():
    failures = []
    for tool, folder, pattern in (("nbdev_clean", "nbs", "*.ipynb"), ("nbdev_export", "har_colab", "*.py")):
        before = snapshot(folder, pattern)
        subprocess.run([str(BIN / tool)], cwd=ROOT, check=True)
        diff = changed(before, snapshot(folder, pattern))
        if diff:
            failures.append(f"{tool} changed {', '.join(diff)}: run `{tool}` and commit the result")
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme.py"), "--check"], cwd=ROOT)
    if r.returncode:
        failures.append("README.md is stale: run `make readme` and commit it")
    for f in failures:
        print("check_sync: " + f, file=sys.stderr)
    if not failures:
        print("check_sync: notebooks clean, library exported, README in sync")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
