"""Decoded-clip cache benchmark: input clips/s of `ClipDataset` in the first epoch (decode + build the cache) and in later
epochs (read from the cache), against the same dataset without the cache.

    PYTHONPATH=. python benchmarks/bench_cache.py [--quick] [--out benchmarks/results_cache.md]

Uses bench_input.py's HMDB51-like videos (320x240, 30 fps, 3-6 s, .avi mpeg4 and .mp4 H.264), r3d_18's input (16 frames,
stride 2, short side 128, crop 112), decord, batch 8, each video listed 8 times so an epoch is long enough for a steady
rate. Items are uint8 and batches are normalised in the main process, as in `fit`. The first epoch with the cache reads
every video once (all decoded and written); later epochs read the cache. The cache lives in a fresh temporary folder;
epochs alternate (no cache, cache) so that machine noise hits both; the DataLoaders are made as the Trainer makes them
(persistent workers, `EpochBatchSampler`), each timed after a warm-up epoch (workers started).
"""
import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_input import SPEC, WORK, make_videos   # noqa: E402


class Epochs:
    "A DataLoader as the Trainer makes it (persistent workers, `EpochBatchSampler`), one pass per `rate(epoch)` call."
    def __init__(self, ds, workers, batch_size):
        from har_colab.train import EpochBatchSampler
        self.sampler = EpochBatchSampler(len(ds), batch_size, seed=0)
        kw = dict(num_workers=workers, persistent_workers=workers > 0)
        self.dl = torch.utils.data.DataLoader(ds, batch_sampler=self.sampler, **kw)
        self.n = len(self.sampler) * batch_size
    def rate(self, epoch) -> float:
        "clips/s of one epoch."
        self.sampler.set_epoch(epoch)
        t = time.perf_counter()
        for x, y in self.dl:
            x = self.dl.dataset.transform.normalize_batch(x)       # uint8 items normalised in the main process, as in `fit`
            assert x.shape[1:] == (3, 16, 112, 112) and x.dtype == torch.float32
        return self.n / (time.perf_counter() - t)
    def close(self):
        if getattr(self.dl, "_iterator", None) is not None: self.dl._iterator._shutdown_workers()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 videos (else 32)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=8, help="list each video this many times per epoch")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (fresh cache each) and later epochs per repetition")
    ap.add_argument("--out", default=str(HERE/"results_cache.md"))
    a = ap.parse_args()
    torch.set_num_threads(1); warnings.filterwarnings("ignore")
    from har_colab.cache import ClipCache
    from har_colab.clips import ClipDataset
    from har_colab.datasets import Samples, load_samples
    per_kind = 3 if a.quick else 8
    videos = load_samples("folder", make_videos(WORK/"hmdb_like", per_kind))
    # each video listed `--repeat` times: epochs long enough for a steady rate (an HMDB51 epoch is ~3,600 clips), not
    # dominated by the start and end of an epoch; repeats read other random clips (and share one cache entry)
    samples = Samples(videos.paths * a.repeat, videos.labels * a.repeat, videos.class_names)
    rows = {}
    def add(key, r): rows.setdefault(key, []).append(r); print(f"{key}: {r:.1f} clips/s", flush=True)
    disk = {}
    for w in (0, 2):
        for rep in range(a.reps):
            root = Path(tempfile.mkdtemp(prefix="har_cache_bench_"))
            B = a.batch_size
            plain = Epochs(ClipDataset(samples, SPEC, train=True, normalize=False), w, B)
            first = Epochs(ClipDataset(videos, SPEC, train=True, normalize=False, cache=ClipCache(root, SPEC.resize)), w, B)
            cached = Epochs(ClipDataset(samples, SPEC, train=True, normalize=False, cache=ClipCache(root, SPEC.resize)), w, B)
            plain.rate(99)                                        # warm-up of the uncached loader (workers start)
            add(("no cache", w), plain.rate(rep))
            add(("cache, first epoch (decode + write)", w), first.rate(0))   # every video once: all decoded and written
            first.close(); cached.rate(99)                                   # warm-up (workers start)
            for e in range(1, a.reps + 1):
                add(("cache, later epochs (memmap)", w), cached.rate(e))
                add(("no cache", w), plain.rate(100 + e))
            plain.close(); cached.close()
            disk[w] = sum(f.stat().st_size for f in root.glob("*.npy"))
            shutil.rmtree(root)
    med = {k: statistics.median(v) for k, v in rows.items()}
    est = ClipCache(tempfile.mkdtemp(), SPEC.resize).estimate(videos.paths)[0]
    lines = ["# Decoded-clip cache benchmark\n",
             f"{'quick' if a.quick else 'full'} run: {len(videos)} HMDB51-like videos (320x240, 30 fps, 3-6 s), each listed "
             f"{a.repeat} times: {len(samples)} random 16x112x112 training clips per epoch (stride 2, short side 128), decord, batch {a.batch_size}, torch threads 1; medians of "
             f"{a.reps} fresh caches (first epoch) and {a.reps * a.reps} later epochs (persistent workers); {os.cpu_count()} CPU cores "
             f"({platform.processor() or platform.machine()}, shared with other jobs: noisy), torch {torch.__version__}.\n",
             "| input | workers | clips/s (median) | vs no cache |", "| --- | --- | ---: | ---: |"]
    for (name, w), r in med.items():
        lines.append(f"| {name} | {w} | {r:.1f} | {r / med[('no cache', w)]:.2f}x |")
    lines += ["", f"Cache size on disk: {disk[0] / 2**20:.1f} MB for {len(videos)} videos "
              f"({disk[0] / len(videos) / 2**20:.2f} MB per video); the estimate from probing was {est / 2**20:.1f} MB."]
    text = "\n".join(lines) + "\n"
    print("\n" + text); Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
