"""Input-pipeline benchmark: clips/s of `ClipDataset` per backend vs pytorchvideo's `LabeledVideoDataset` vs decode only.

    PYTHONPATH=. python benchmarks/bench_input.py --quick

Writes HMDB51-like videos (320x240, 30 fps, 3-6 s; MPEG-4 Part 2 .avi and H.264 .mp4) under benchmarks/_work/, then times
16-frame 112x112 clips (stride 2, short side 128, Kinetics mean/std) through each pipeline with 0 and 2 DataLoader
workers, medians of `--reps` repetitions; also the RSS growth of one process decoding 5,000 clips with decord. Prints a
markdown table and writes it to benchmarks/results_input.md.
"""
import argparse
import gc
import importlib
import os
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

HERE = Path(__file__).resolve().parent
WORK = HERE/"_work"
SPEC = types.SimpleNamespace(frames=16, stride=2, resize=128, crop=112,
                             mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989))
CLASSES = ["wave", "run"]
FULL = "decode only, full size (read_frames)"
OURS = "har_colab ClipDataset (default decoder_resize=auto: full size at 320x240)"


def make_videos(root:Path, per_kind:int) -> Path:
    "`per_kind` .avi (mpeg4) and `per_kind` .mp4 (H.264) videos per class, 320x240, 30 fps, 3 to 6 s."
    from har_colab.synthetic import render_motion_video, write_video
    for c, cls in enumerate(CLASSES):
        for i in range(per_kind):
            seconds = 3 + (i % 4)
            for ext, codec in (("avi", "mpeg4"), ("mp4", "libx264")):
                p = root/cls/f"{cls}_{i:02d}.{ext}"
                if p.exists(): continue
                frames = render_motion_video(np.random.default_rng(100 * c + i), 2 * c, 30 * seconds, (320, 240))
                write_video(p, frames, fps=30, codec=codec, crf=23)
    return root


def median_rate(fn, n_clips:int, reps:int) -> float:
    "Median clips/s of `fn()` (which produces `n_clips` clips) over `reps` runs."
    rates = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); rates.append(n_clips / (time.perf_counter() - t))
    return statistics.median(rates)


def probe_sizes(samples) -> dict:
    "{path: (height, width)}: the probing pass a caller runs once, before training (not timed)."
    from har_colab.video import probe
    return {p: (i.height, i.width) for p in samples.paths for i in [probe(p, "torchcodec")]}


def ours(samples, backend, workers, n_clips, batch_size, **kw):
    from har_colab.clips import ClipDataset
    ds = ClipDataset(samples, SPEC, train=True, backend=backend, normalize=False, **kw)   # as `fit` makes it: uint8 items,
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=n_clips, generator=torch.Generator().manual_seed(0))
    def run():
        for x, y in torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers):
            x = ds.transform.normalize_batch(x)                                      # normalised in the main process
            assert x.shape[1:] == (3, 16, 112, 112) and x.dtype == torch.float32
    return run


def decode_only(samples, backend, n_clips, sizes=None):
    """Just the frames a clip needs: open, choose the same indices as ClipDataset, read; no transform. Full size, or with
    `sizes` at the model's short side (decoder-side resize)."""
    from har_colab.clips import effective_stride, train_clip_indices
    from har_colab.video import open_video
    g = torch.Generator().manual_seed(0)
    order = torch.randint(0, len(samples), (n_clips,), generator=g).tolist()
    def run():
        for v in order:
            kw = dict(short_side=SPEC.resize, source_size=sizes[samples.paths[v]]) if sizes else {}
            with open_video(samples.paths[v], backend, size=False, **kw) as video:   # as ClipDataset opens it
                idx = train_clip_indices(video.info.frames, SPEC.frames, effective_stride(SPEC.stride, video.info.fps), g)
                video.read(idx)
    return run


def pytorchvideo_pipeline(root, decoder, workers, n_clips, batch_size):
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        try: importlib.import_module("torchvision.transforms.functional_tensor")   # old torchvision has it
        except ImportError: sys.modules["torchvision.transforms.functional_tensor"] = torchvision.transforms._functional_tensor
    from pytorchvideo.data import labeled_video_dataset, make_clip_sampler
    from pytorchvideo.transforms import (ApplyTransformToKey, Normalize, RandomShortSideScale, ShortSideScale,
                                         UniformTemporalSubsample)
    from torchvision.transforms import Compose, Lambda, RandomCrop, RandomHorizontalFlip
    transform = ApplyTransformToKey("video", Compose([
        UniformTemporalSubsample(SPEC.frames), Lambda(lambda x: x / 255.0), Normalize(SPEC.mean, SPEC.std),
        ShortSideScale(SPEC.resize), RandomCrop(SPEC.crop), RandomHorizontalFlip()]))
    seconds = (SPEC.frames * SPEC.stride) / 30.0       # 32 source frames at 30 fps, as stride 2 covers
    def run():
        ds = labeled_video_dataset(str(root), make_clip_sampler("random", seconds), transform=transform,
                                   decode_audio=False, decoder=decoder)
        dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
        got = 0
        while True:                                     # its iterator ends after one pass over the videos
            for b in dl:
                assert b["video"].shape[1:] == (3, 16, 112, 112)
                got += b["video"].shape[0]
                if got >= n_clips: return
    return run


def rss_growth(samples, n_clips:int) -> tuple:
    "(MB after warm-up, MB at the end) of this process while decoding `n_clips` clips with decord."
    import psutil
    proc = psutil.Process()
    run = decode_only(samples, "decord", 50); run(); gc.collect()
    start = proc.memory_info().rss / 2**20
    left, peak = n_clips, start
    while left > 0:
        k = min(250, left)
        decode_only(samples, "decord", k)(); left -= k
        peak = max(peak, proc.memory_info().rss / 2**20)
    gc.collect()
    return start, proc.memory_info().rss / 2**20, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer videos and clips: a few minutes on 2 cores")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rss-clips", type=int, default=5000)
    ap.add_argument("--out", default=str(HERE/"results_input.md"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    per_kind, n_clips, batch_size = (3, 24, 4) if a.quick else (8, 96, 8)
    from har_colab.datasets import load_samples
    root = make_videos(WORK/"hmdb_like", per_kind)
    samples = load_samples("folder", root)
    rows = []   # (pipeline, backend, workers, clips/s)
    def add(name, backend, workers, fn):
        r = median_rate(fn, n_clips, a.reps); rows.append((name, backend, workers, r))
        print(f"{name:<28} {backend:<11} workers={workers}  {r:7.1f} clips/s", flush=True)
    sizes = probe_sizes(samples)
    for backend in ("decord", "torchcodec", "pyav"):
        add(FULL, backend, 0, decode_only(samples, backend, n_clips))
        add("decode only at 128 (decoder-side resize)", backend, 0, decode_only(samples, backend, n_clips, sizes))
        add("ClipDataset, decoder_resize=True (decodes at 128)", backend, 0,
            ours(samples, backend, 0, n_clips, batch_size, video_sizes=sizes, decoder_resize=True))
        for w in (0, 2): add(OURS, backend, w, ours(samples, backend, w, n_clips, batch_size, video_sizes=sizes))
    for decoder in ("decord", "pyav"):
        for w in (0, 2): add("pytorchvideo LabeledVideoDataset", decoder, w, pytorchvideo_pipeline(root, decoder, w, n_clips, batch_size))
    t = time.perf_counter()
    rss0, rss1, peak = rss_growth(samples, a.rss_clips)
    rss_s = time.perf_counter() - t

    rate = {(n, b, w): r for n, b, w, r in rows}
    lines = [f"# Input pipeline benchmark\n",
             f"{'quick' if a.quick else 'full'} run: {len(samples)} videos ({sum(p.endswith('.avi') for p in samples.paths)} .avi mpeg4 + "
             f"{sum(p.endswith('.mp4') for p in samples.paths)} .mp4 H.264, {len(CLASSES)} classes, "
             f"320x240, 30 fps, 3-6 s), {n_clips} clips of 16x112x112 (stride 2, short side 128) per measurement, batch "
             f"{batch_size}, median of {a.reps}; torch threads 1; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
             f"torch {torch.__version__}.\n",
             "Rows that decode at full size (320x240, then torch's resize): 'decode only, full size', the default "
             "'har_colab ClipDataset' (decoder_resize='auto' keeps full size below an 8x pixel ratio; 320x240 -> 171x128 "
             "is 3.5x), pytorchvideo. Rows that decode at the model's size (the decoder resizes to short side 128): "
             "'decode only at 128', 'ClipDataset, decoder_resize=True'. Frame sizes come from a probing pass made before "
             "timing (`video_sizes=`; decord needs them to open its reader at 128). 'vs decode only' is against the "
             "full-size decode-only row. pytorchvideo has no torchcodec decoder. A quick run times few clips per "
             "row: rates vary by +-20% between runs (results_profile_stages.md has per-stage medians over 96 clips).\n",
             "| pipeline | backend | workers | clips/s | vs pytorchvideo (same decoder, workers) | vs decode only (full size) |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for n, b, w, r in rows:
        ptv = rate.get(("pytorchvideo LabeledVideoDataset", b, w)) if "ClipDataset" in n else None
        dec = rate.get((FULL, b, 0)) if "ClipDataset" in n else None
        lines.append(f"| {n} | {b} | {w} | {r:.1f} | {f'{r/ptv:.2f}x' if ptv else ''} | {f'{100*r/dec:.0f}%' if dec else ''} |")
    lines += ["", f"RSS while decoding {a.rss_clips} clips with decord in one process ({rss_s:.0f} s): "
              f"{rss0:.0f} MB after warm-up -> {rss1:.0f} MB at the end (growth {rss1-rss0:+.1f} MB, peak {peak:.0f} MB; target < 50 MB)."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
