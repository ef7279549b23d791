"""Checkpoint cost: the time the training loop is blocked by a save (`CheckpointWriter.save`: `torch.save` into memory;
the file write, fsync and rename follow in a background thread) and the time until that checkpoint is on disk, vs a plain
`torch.save` of the same state (and `torch.save` + fsync), for tiny3d and r3d_18 with AdamW state; and the time from process start to the first step of a fresh run and of a
resumed run (tiny3d, `fit` on a small synthetic dataset).

    PYTHONPATH=. python benchmarks/bench_checkpoint.py [--reps 5] [--out benchmarks/results_checkpoint.md]
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import MODELS, MemoryClips, make_model, make_trainer   # noqa: E402

CHILD = r"""
import sys, time
from har_colab.train import TrainConfig, fit, resolve_config, Callback
from har_colab.callbacks import default_callbacks
class First(Callback):
    order = 1000
    def after_step(self, tr):
        print("FIRST_STEP", time.time(), flush=True); tr.request_stop("benchmark: first step done")
cfg = resolve_config(TrainConfig(run_dir=sys.argv[1], data=sys.argv[2], model="tiny3d", pretrained=False, epochs=int(sys.argv[3]),
                                 batch_size=8, workers=0, progress=False, plot=False, max_steps_per_epoch=3))
stop = sys.argv[4] == "1"
fit(cfg, callbacks=default_callbacks(cfg) + ([First()] if stop else []), echo=lambda m: None)
"""


def save_times(state, d:Path, reps:int, per_block:int=3, gap:float=1.0) -> tuple:
    """Median seconds of each way to save, and the file size. Each way runs in blocks of `per_block` saves to its own
    file, `gap` seconds apart (training goes on between saves), blocks alternating between the ways: a save right
    after another way's big write or delete measures the file system's bookkeeping of that one, not its own."""
    from har_colab.checkpoint import CheckpointWriter, save_checkpoint
    def plain(p, sync):
        with open(p, "wb") as f:
            torch.save(state, f)
            if sync: f.flush(); os.fsync(f.fileno())
    writer, times = CheckpointWriter(), {}
    def add(k, v): times.setdefault(k, []).append(v)
    def block(k, fn):
        for _ in range(per_block):
            t = time.perf_counter(); fn(); add(k, time.perf_counter() - t); time.sleep(gap)
    for _ in range(reps):
        block("torch.save", lambda: plain(d/"plain.pt", False))
        for _ in range(per_block):
            t = time.perf_counter(); writer.save(state, d/"last.pt"); add("writer blocked", time.perf_counter() - t)
            writer.wait(); add("writer durable", time.perf_counter() - t); time.sleep(gap)
        block("torch.save + fsync", lambda: plain(d/"plain_sync.pt", True))
        block("save_checkpoint", lambda: save_checkpoint(state, d/"sync.pt"))
    return {k: statistics.median(v) for k, v in times.items()}, (d/"last.pt").stat().st_size


def first_step_seconds(run_dir, data, epochs, reps, fresh:bool) -> float:
    "Median seconds from starting a Python process that calls fit() to the end of its first optimizer step."
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = []
    for r in range(reps):
        d = Path(run_dir)/f"rep{r}" if fresh else run_dir      # a fresh run needs an empty run folder each time
        t0 = time.time()
        p = subprocess.run([sys.executable, "-c", CHILD, str(d), str(data), str(epochs), "1"], capture_output=True,
                           text=True, env=env, timeout=600)
        line = [l for l in p.stdout.splitlines() if l.startswith("FIRST_STEP")]
        if not line: raise RuntimeError(p.stderr[-2000:])
        out.append(float(line[0].split()[1]) - t0)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(HERE/"results_checkpoint.md"))
    a = ap.parse_args()
    lines = ["# Checkpoint benchmark\n",
             f"CPU, local disk, {os.cpu_count()} cores ({platform.processor() or platform.machine()}, shared with other jobs: "
             f"noisy), torch {torch.__version__}; medians of {a.reps} x 3 saves of the same Trainer state (model, "
             "AdamW state after one step, scheduler, RNG, history, config).\n",
             "| model | checkpoint MB | torch.save s | training blocked by a save s | ratio (target <= 1.25x) | "
             "save until on disk s | torch.save + fsync s | ratio | save_checkpoint (synchronous) s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, (shape, bs) in MODELS.items():
        with tempfile.TemporaryDirectory() as d:
            t = make_trainer(make_model(name), MemoryClips(bs * 2, shape), d, 1, callbacks=[], batch_size=bs)
            t.run_epoch(); t.close()
            st = t.state_dict()
            m, size = save_times(st, Path(d), a.reps)
        p, b, du, ps, sc = m["torch.save"], m["writer blocked"], m["writer durable"], m["torch.save + fsync"], m["save_checkpoint"]
        lines.append(f"| {name} | {size / 2**20:.1f} | {p:.3f} | {b:.3f} | {b / p:.2f}x | {du:.3f} | {ps:.3f} | {du / ps:.2f}x | {sc:.3f} |")
        print(lines[-1], flush=True)
    lines += ["", "Training is blocked only while `torch.save` serialises the state into memory; writing the file, the fsync, "
              "the rename, the `last.pt` link and the log line follow in a background thread (`CheckpointWriter`) while the "
              "next steps run, so \"until on disk\" may be longer than a synchronous save without costing training time. "
              "\"Until on disk\" is the time from the start of the save to the renamed, fsynced file, against a plain "
              "`torch.save` + fsync. Each way saves in blocks of 3 to its own file, 1 s apart, blocks alternating (ext4 makes a "
              "write right after another file's large write or delete wait for that one's bookkeeping)."]
    from har_colab.synthetic import make_synthetic_dataset
    with tempfile.TemporaryDirectory() as d:
        data = make_synthetic_dataset(Path(d)/"motion", classes=4, videos_per_class=10, frames=24)
        fresh = first_step_seconds(Path(d)/"fresh", data, 1, min(a.reps, 3), True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-c", CHILD, str(Path(d)/"run"), str(data), "1", "0"], check=True, env=env,
                       capture_output=True, timeout=600)
        resumed = first_step_seconds(Path(d)/"run", data, 2, min(a.reps, 3), False)
    lines += ["", "| process start -> end of first optimizer step (tiny3d, 32 synthetic videos, workers 0) | seconds |",
              "| --- | ---: |", f"| fresh run | {fresh:.2f} |", f"| resumed run (loads last.pt, restores RNG, sampler) | {resumed:.2f} |",
              "", "Most of either is Python start-up and imports (torch, torchvision, decord); resuming adds loading and "
              "validating the checkpoint."]
    text = "\n".join(lines) + "\n"
    print("\n" + text); Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
