"""Training-loop overhead: time per optimizer step of har_colab's `Trainer` (default callbacks, progress and plots off)
against a bare PyTorch loop over the same in-memory batches, same model, same optimizer (AdamW via `make_optimizer`),
same loss (label smoothing 0.1), same gradient clipping and LR schedule.

    PYTHONPATH=. python benchmarks/bench_loop.py [--reps 3] [--out benchmarks/results_loop.md]

Both loops read the same `MemoryClips` (random tensors) through a DataLoader with the same batch sampler (no workers),
so data costs the same; the difference is the Trainer's own per-step work: callbacks, running metrics, AMP/scaler
plumbing. Step time = time between consecutive step ends (the first 2 steps are warm-up and not counted); median over
steps, then the median of `--reps` alternating repetitions. CPU only.
"""
import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import MODELS, MemoryClips, make_model, make_trainer   # noqa: E402


def bare_loop(model, ds, cfg_like, steps) -> list:
    "Step end times of a plain loop."
    from har_colab.train import EpochBatchSampler, lr_factor, make_optimizer
    opt = make_optimizer(model, cfg_like)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, steps * 10))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    sampler = EpochBatchSampler(len(ds), cfg_like.batch_size, 0, steps)
    model.train(); ends = []
    for x, y in torch.utils.data.DataLoader(ds, batch_sampler=sampler):
        out = model(x); loss = loss_fn(out.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True); sched.step()
        ends.append(time.perf_counter())
    return ends


def trainer_loop(model, ds, steps, bs) -> list:
    from har_colab.train import Callback
    ends = []
    class Clock(Callback):
        order = 1000
        def after_step(self, tr): ends.append(time.perf_counter())
    with tempfile.TemporaryDirectory() as d:
        from har_colab.callbacks import default_callbacks
        t = make_trainer(model, ds, d, steps, batch_size=bs)
        t.callbacks = sorted(t.callbacks + [Clock()], key=lambda c: c.order)
        t.event("before_fit"); t.run_epoch(); t.close()
    return ends


def per_step(ends) -> float: return statistics.median(b - a for a, b in zip(ends[2:], ends[3:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="steps per repetition (default: 30 tiny3d, 10 r3d_18)")
    ap.add_argument("--out", default=str(HERE/"results_loop.md"))
    a = ap.parse_args()
    import types
    lines = ["# Training-loop overhead: Trainer vs a bare PyTorch loop\n",
             f"CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores ({platform.processor() or platform.machine()}, "
             f"shared with other jobs: noisy), torch {torch.__version__}; medians over steps, median of {a.reps} alternating "
             "repetitions; same in-memory batches, model, AdamW, loss, clipping and schedule.\n",
             "| model | input (B,C,T,H,W) | bare loop s/step | Trainer s/step | overhead |", "| --- | --- | ---: | ---: | ---: |"]
    res = {}
    for name, (shape, bs) in MODELS.items():
        steps = a.steps or (8 if name == "r3d_18" else 30)
        ds = MemoryClips(bs * steps, shape)
        base = make_model(name)
        cfg_like = types.SimpleNamespace(optimizer="adamw", lr=1e-3, weight_decay=0.05, momentum=0.9, batch_size=bs)
        bare, ours = [], []
        for r in range(a.reps):
            ours.append(per_step(trainer_loop(copy.deepcopy(base), ds, steps, bs)))
            bare.append(per_step(bare_loop(copy.deepcopy(base), ds, cfg_like, steps)))
            print(f"{name} rep {r}: bare {bare[-1]*1e3:.1f} ms, Trainer {ours[-1]*1e3:.1f} ms", flush=True)
        b, o = statistics.median(bare), statistics.median(ours)
        lines.append(f"| {name} | {(bs, *shape)} | {b:.4f} | {o:.4f} | {100 * (o / b - 1):+.1f}% |")
        res[name] = (b, o)
    nb, no = res["null (pool + linear)"]
    lines += ["", f"The loop's own cost, measured with the null model (no compute): Trainer {1e3 * no:.2f} ms/step vs bare "
              f"{1e3 * nb:.2f} ms/step, i.e. {1e3 * (no - nb):+.2f} ms per step. As a share of a real step (bare loop time above): " +
              ", ".join(f"{m} {100 * (no - nb) / res[m][0]:+.2f}%" for m in res if not m.startswith("null")) +
              ". On a machine this noisy the model rows differ by more than that from run to run (other jobs share the two "
              "cores); the null-model difference is the robust figure."]
    text = "\n".join(lines) + "\n"
    print("\n" + text); Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
