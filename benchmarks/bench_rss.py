"""Peak memory of a training process and its DataLoader workers: `har-colab train` (tiny3d, 2 workers) on the HMDB51-like
videos of bench_input.py, with and without the decoded-clip cache; RSS and PSS summed over the process tree, sampled
every 0.1 s with psutil.

    PYTHONPATH=. python benchmarks/bench_rss.py [--out benchmarks/results_rss.md]

RSS counts pages shared between the parent and its forked workers once per process (an over-count); PSS splits shared
pages between the processes that map them (sums to the real footprint). Cached frames are read through memmaps: they
show up as page cache (file-backed, reclaimable), not as anonymous memory.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_input import WORK, make_videos   # noqa: E402


def tree_memory(proc) -> tuple:
    "(RSS sum, PSS sum, main RSS, number of processes) in MB."
    procs = [proc] + proc.children(recursive=True)
    rss = pss = 0; n = 0
    for p in procs:
        try:
            m = p.memory_full_info(); rss += m.rss; pss += getattr(m, "pss", m.rss); n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    return rss / 2**20, pss / 2**20, proc.memory_info().rss / 2**20, n


def peak_of(cmd, env) -> dict:
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(p.pid); peak = {"rss": 0.0, "pss": 0.0, "main": 0.0, "procs": 0}
    while p.poll() is None:
        try: r, s, m, n = tree_memory(proc)
        except psutil.NoSuchProcess: break
        peak = {"rss": max(peak["rss"], r), "pss": max(peak["pss"], s), "main": max(peak["main"], m), "procs": max(peak["procs"], n)}
        time.sleep(0.1)
    if p.returncode != 0: raise RuntimeError(p.stderr.read()[-2000:])
    peak["seconds"] = time.time() - t0
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=str(HERE/"results_rss.md"))
    a = ap.parse_args()
    data = make_videos(WORK/"hmdb_like", 3)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    lines = ["# Peak memory of a training run\n",
             f"`har-colab train --model tiny3d --no-pretrained --workers 2 --batch-size 4 --epochs {a.epochs}` on the "
             f"{sum(1 for _ in Path(data).rglob('*.*') if _.suffix in ('.avi', '.mp4'))} HMDB51-like videos of bench_input.py (320x240), CPU; {os.cpu_count()} cores ({platform.processor() or platform.machine()}, shared).\n",
             "| cache | processes | peak RSS, main process MB | peak RSS sum MB | peak PSS sum MB | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for cache in ("none", "local"):
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "har_colab.cli", "train", "--run-dir", f"{d}/run", "--data", str(data), "--model",
                   "tiny3d", "--no-pretrained", "--workers", "2", "--batch-size", "4", "--epochs", str(a.epochs),
                   "--no-progress", "--no-plot", "--cache", cache, "--cache-dir", f"{d}/cache"]
            pk = peak_of(cmd, env)
        lines.append(f"| {cache} | {pk['procs']} | {pk['main']:.0f} | {pk['rss']:.0f} | {pk['pss']:.0f} | {pk['seconds']:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text); Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
