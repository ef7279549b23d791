"""Run every benchmark and write BENCHMARKS.md at the repository root (every table, with the command that made it).

    PYTHONPATH=. python benchmarks/run_all.py [--quick] [--only NAME ...] [--no-run]

Each benchmark is a script in benchmarks/ that writes its own results_*.md; this runs them one after another (never in
parallel: they time things) and then concatenates their tables. `--no-run` rebuilds BENCHMARKS.md from the results
files already there. `--quick` makes the demo benchmark train 5 epochs instead of 20 and the input benchmarks use their
small video sets.
"""
import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (script args, quick args, results file, what it measures)
BENCHES = {
    "input": (["bench_input.py", "--quick"], [], "results_input.md", "input pipeline: clips/s per decoder vs decode only and pytorchvideo"),
    "profile_stages": (["profile_stages.py"], [], "results_profile_stages.md", "where a clip's input time goes, stage by stage, and what 2 workers add"),
    "cache": (["bench_cache.py"], ["--quick"], "results_cache.md", "decoded-clip cache: first epoch vs later epochs vs no cache"),
    "loop": (["bench_loop.py"], [], "results_loop.md", "training loop overhead: Trainer vs a bare PyTorch loop"),
    "checkpoint": (["bench_checkpoint.py", "--reps", "3"], [], "results_checkpoint.md", "checkpoint save time vs torch.save; time to the first resumed step"),
    "rss": (["bench_rss.py", "--epochs", "2"], [], "results_rss.md", "peak memory of a training process and its workers"),
    "demo": (["bench_demo.py"], ["--epochs", "20"], "results_demo.md", "the demo: tiny3d learning the synthetic motion dataset, with its control"),
    "seed_run": (["bench_seed_run.py"], [], "results_seed_run.md", "the seed's run scaled down: old defaults vs new (validation clips, cache)"),
    "transfer": (["bench_transfer.py"], [], "results_transfer.md", "few videos per class: scratch vs --init with the recipe off / on"),
    "memory": (["memory_table.py"], [], "results_memory.md", "training activation memory per clip and the T4 micro-batch estimate"),
    "tests": (["bench_test_processes.py"], [], "results_tests.md", "the test suite's CLI processes: fresh interpreters vs forked"),
    "gpu_check": (["gpu_check.py", "--device", "cpu", "--quick", "--out", "benchmarks/results_gpu_check.md"], [],
                  "results_gpu_check.md", "the GPU check's code path on the CPU (on a GPU: `python benchmarks/gpu_check.py`)"),
}

T4 = """## Colab T4: expected bottleneck per model and settings

A T4 gives ~65 TFLOPS fp16 with tensor cores (8 TFLOPS fp32); 3D convolutions in training reach perhaps 10-15 TFLOPS
with AMP. A training step costs about 3x the forward pass. Colab's 2 vCPUs are one physical core with two hyperthreads:
decord decodes ~20-25 HMDB51-sized (320x240) 16-frame clips/s there (`results_input.md`: 22.6 clips/s decode-only on one
core of this machine), fewer for larger videos. The decoded-clip cache reads a clip from a memmap in ~1-2 ms plus the
crop and normalise (~3 ms), so after the first epoch the CPU side delivers well over 100 clips/s (`results_cache.md`).

| model (input) | forward GFLOPs per clip | GPU-side train clips/s on a T4 with AMP (estimate) | CPU side without cache (2 vCPUs) | expected bottleneck | settings |
| --- | ---: | ---: | ---: | --- | --- |
| tiny3d (8x56x56) | {tiny:.2f} | >1000 | ~25-40 (its short side 64 is cheap to resize) | decoding | `--cache local`, workers 2, AMP auto (model too small to gain) |
| x3d_xs (4x160x160) | 0.6 | ~1500 | ~20-25 | decoding | `--cache local`, workers 2, AMP auto |
| x3d_s (13x160x160) | 2.0 | ~600 | ~20-25 | decoding | `--cache local`, workers 2, AMP auto |
| s3d (16x224x224) | 18 | ~150-250 | ~15-20 (short side 256: larger resize) | decoding (x10) | `--cache local`, workers 2, AMP auto |
| r3d_18 / r2plus1d_18 / mc3_18 (16x112x112) | 41-43 | ~80-120 | ~20-25 | decoding (x4) | `--cache local`, workers 2, AMP auto (fp16 on a T4) |
| swin3d_t (16x224x224) | 44 | ~40-60 (attention runs below the conv rate) | ~15-20 | balanced: the cache still helps | `--cache local`, workers 2, AMP auto, batch 8 fits in 16 GB with AMP |
| slowfast_r50 (8x8, 32 frames) | 66 | ~50-70 | ~10-12 (32 decoded frames per clip) | decoding | `--cache local`, workers 2, AMP auto |
| mvit_v2_s (16x224x224) | 64 | ~30-40 | ~15-20 | GPU (with the cache) | AMP auto (fp16), workers 2, `--cache local` for epochs > 1 |

Reasoning. GPU-side rate = ~12 TFLOPS / (3 x forward GFLOPs), a rough figure (real kernels on small batches do worse;
treat it as +-50%). Every model that Colab can train at a useful speed wants more clips per second than one physical
core can decode, so **`--cache local` is the first setting to turn on** whenever the dataset fits on the local disk
(HMDB51 at short side 128: ~2-3 GB; UCF101 ~8-10 GB; at short side 256 four times that: mind `--cache-max-gb` and the
~100 GB local disk of a Colab VM; the size estimate is printed before the cache is built). The first epoch still runs at
decode speed; later ones are limited by the GPU. **workers 2** (= the vCPUs; more workers only add memory: the
processes compete for the same core). **AMP auto** picks fp16 with a GradScaler on a T4 (no bf16): 2-4x faster 3D
convolutions and half the activation memory. Without the cache, AMP and a bigger model cost nothing extra per epoch
because the GPU waits for the decoder anyway: prefer the stronger model in that case.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", choices=list(BENCHES), help="run only these (others: use their last results)")
    ap.add_argument("--no-run", action="store_true", help="only rebuild BENCHMARKS.md from the results files")
    a = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    commands = {}
    for name, (args, quick, out, _) in BENCHES.items():
        cmd = args + (quick if a.quick else [])
        commands[name] = "PYTHONPATH=. python benchmarks/" + " ".join(cmd)
        if a.no_run or (a.only and name not in a.only): continue
        print(f"== {commands[name]}", flush=True)
        t = time.time()
        subprocess.run([sys.executable, str(HERE/cmd[0]), *cmd[1:]], cwd=ROOT, env=env, check=True)
        print(f"== {name} done in {time.time() - t:.0f} s", flush=True)
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
        from har_colab.models import create_model
        m = create_model("tiny3d", 8, pretrained=False).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad(): m(torch.zeros(1, 3, 8, 56, 56))
        tiny = fc.get_total_flops() / 2 / 1e9     # multiply-accumulates, as torchvision's GFLOPS figures count
    except Exception: tiny = float("nan")
    parts = ["# Benchmarks\n",
             f"Made by `make bench` (= `python benchmarks/run_all.py{' --quick' if a.quick else ''}`) on {platform.node() or 'a'} "
             f"machine with {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, shared with "
             "other jobs: timings are noisy, so every comparison is measured side by side in one run and reported as a "
             "ratio of medians.\n"]
    for name, (_, _, out, what) in BENCHES.items():
        p = HERE/out
        parts.append(f"<!-- {name}: {what} -->\nCommand: `{commands[name]}`\n")
        body = p.read_text().strip() if p.exists() else f"# {what}\n\n(not run yet: {commands[name]})"
        parts.append("#" + body.replace("\n# ", "\n## ") + "\n")      # each results file's title becomes a section
    notes = HERE/"notes_profile.md"
    if notes.exists(): parts.append("#" + notes.read_text().strip().replace("\n# ", "\n## ") + "\n")
    parts.append(T4.format(tiny=tiny))
    (ROOT/"BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT/'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
