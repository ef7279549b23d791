"""Where a ClipDataset clip's time goes, stage by stage, per decoder, and what 2 DataLoader workers add on 2 cores.

    PYTHONPATH=. python benchmarks/profile_stages.py [--clips 96]

The bench_input videos (HMDB51-like: 320x240, 30 fps, 3-6 s; .avi MPEG-4 Part 2 and .mp4 H.264), 16-frame 112x112
training clips (stride 2, short side 128), torch threads 1. For each backend, in one process: open (frame count and
fps only, as ClipDataset opens), read the clip's frames at full size, resize them to short side 128 (`resize_frames`),
crop + resize to 112 + flip (`VideoTransform.geometry`), `to_layout`, and collate + `normalize_batch` per batch of 4
(per clip), each timed around the call (medians over clips of per-clip milliseconds, summed for the total). Also the
same clips read at 128 by the decoder, and the DataLoader rates of ClipDataset with 0 and 2 workers. Writes
benchmarks/results_profile_stages.md.
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_input import SPEC, WORK, make_videos, ours, probe_sizes   # noqa: E402  (the same videos and pipeline)


def stages(samples, backend:str, n:int, sizes:dict) -> dict:
    "{stage: median ms per clip} over `n` clips (keys: open, read, resize, geometry, layout, batch; read@128 apart)."
    from har_colab.clips import effective_stride, train_clip_indices
    from har_colab.transforms import VideoTransform
    from har_colab.video import open_video, resize_frames, short_side_size
    tf = VideoTransform(SPEC, train=True)
    g = torch.Generator().manual_seed(0)
    order = torch.randint(0, len(samples), (n,), generator=g).tolist()
    ms = {k: [] for k in ("open", "read", "resize", "geometry", "layout", "batch", "open+read at 128")}
    batch = []
    clock = time.perf_counter
    for v in order:
        p = samples.paths[v]
        t0 = clock(); video = open_video(p, backend, size=False); t1 = clock()
        idx = train_clip_indices(video.info.frames, SPEC.frames, effective_stride(SPEC.stride, video.info.fps), g)
        x = video.read(idx); t2 = clock(); video.close()
        h, w = x.shape[1:3]
        t3 = clock(); y = resize_frames(x, short_side_size(h, w, SPEC.resize)); t4 = clock()
        z = tf.geometry(y, g); t5 = clock()
        c = tf.to_layout(z); t6 = clock()
        batch.append(c)
        if len(batch) == 4:
            t7 = clock(); tf.normalize_batch(torch.stack(batch)); ms["batch"] += [(clock() - t7) * 250] * 4; batch = []
        t8 = clock()                                     # open + read as above (closing is not timed in either)
        small = open_video(p, backend, size=False, short_side=SPEC.resize, source_size=sizes[p], decoder_resize=True)
        small.read(idx); ms["open+read at 128"].append((clock() - t8) * 1e3); small.close()
        for k, a, b in (("open", t0, t1), ("read", t1, t2), ("resize", t3, t4), ("geometry", t4, t5), ("layout", t5, t6)):
            ms[k].append((b - a) * 1e3)
    return {k: statistics.median(v) for k, v in ms.items() if v}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--out", default=str(HERE/"results_profile_stages.md"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from har_colab.datasets import load_samples
    samples = load_samples("folder", make_videos(WORK/"hmdb_like", 3))
    sizes = probe_sizes(samples)
    rows, rates = {}, {}
    for backend in ("decord", "torchcodec", "pyav"):
        ours(samples, backend, 0, 8, 4, video_sizes=sizes)()             # warm-up: imports, first opens
        rows[backend] = stages(samples, backend, a.clips, sizes)
        for w in (0, 2):
            fn = ours(samples, backend, w, a.clips, 4, video_sizes=sizes)
            t = time.perf_counter(); fn(); rates[backend, w] = a.clips / (time.perf_counter() - t)
        print(backend, {k: round(v, 2) for k, v in rows[backend].items()}, rates[backend, 0], rates[backend, 2], flush=True)
    keys = ("open", "read", "resize", "geometry", "layout", "batch")
    lines = ["# Where a clip's time goes (stage profile)", "",
             f"`PYTHONPATH=. python benchmarks/profile_stages.py --clips {a.clips}`: {len(samples)} HMDB51-like videos "
             "(320x240, 30 fps, 3-6 s, MPEG-4 Part 2 and H.264), 16-frame 112x112 training clips (stride 2, short side "
             f"128), {a.clips} clips per backend, medians of per-clip milliseconds, torch threads 1, {os.cpu_count()} CPU "
             f"cores, torch {torch.__version__}. 'decode only' = open + read at full size; 'ClipDataset' adds resize, "
             "geometry (random resized crop to 112 and flip), layout and the batch's collate + normalise. The DataLoader "
             "rows time ClipDataset itself (one pass, batch 4).", "",
             "| ms per clip | " + " | ".join(rows) + " |", "| --- |" + " ---: |" * len(rows)]
    for k in keys + ("open+read at 128",):
        lines.append(f"| {k} | " + " | ".join(f"{rows[b][k]:.2f}" for b in rows) + " |")
    dec = {b: rows[b]["open"] + rows[b]["read"] for b in rows}
    tot = {b: sum(rows[b][k] for k in keys) for b in rows}
    lines += [f"| **decode only** (open + read) | " + " | ".join(f"{dec[b]:.2f}" for b in rows) + " |",
              f"| **ClipDataset, sum of stages** | " + " | ".join(f"{tot[b]:.2f}" for b in rows) + " |",
              f"| work after decoding (share of the sum) | " + " | ".join(f"{100 * (tot[b] - dec[b]) / tot[b]:.0f}%" for b in rows) + " |",
              f"| ceiling: sum vs decode only | " + " | ".join(f"{100 * dec[b] / tot[b]:.0f}%" for b in rows) + " |",
              f"| DataLoader, 0 workers: clips/s (ms per clip) | " + " | ".join(f"{rates[b, 0]:.1f} ({1e3 / rates[b, 0]:.1f})" for b in rows) + " |",
              f"| DataLoader, 2 workers: clips/s (vs 0 workers) | " + " | ".join(f"{rates[b, 2]:.1f} ({rates[b, 2] / rates[b, 0]:.2f}x)" for b in rows) + " |"]
    at128 = {b: rows[b]["open+read at 128"] - dec[b] for b in rows}
    lines += ["", "What stops 'ClipDataset >= 100% of decode only at full size': ClipDataset does the decode and then "
              f"{min(tot[b] - dec[b] for b in rows):.1f}-{max(tot[b] - dec[b] for b in rows):.1f} ms of work per clip that "
              "decode-only does not (resize to the short side, the random resized crop, the layout, the batch), so in one "
              f"process it reaches at most {min(100 * dec[b] / tot[b] for b in rows):.0f}-"
              f"{max(100 * dec[b] / tot[b] for b in rows):.0f}% of it. Only a decoder that makes the small frames for less "
              "than the full-size ones could close that gap, and at 320x240 none does: decoding at 128 costs "
              + ", ".join(f"{b} {at128[b]:+.1f} ms" for b in rows) + " per clip against the full-size decode in this loop "
              "(FFmpeg's one-pass scale-and-convert is slower than its vectorised full-size conversion; at 1280x720 "
              "decord and PyAV win, which is what decoder_resize='auto' uses). With 2 workers on 2 cores the main "
              "process's share (collate, normalise, the copy out of the workers) and the third process keep the gain "
              "to " + ", ".join(f"{b} {rates[b, 2] / rates[b, 0]:.2f}x" for b in rows) + " over 0 workers."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
