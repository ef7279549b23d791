"""The demo's learning benchmark: tiny3d on the synthetic motion dataset, and the control run on the same clips with
frames shuffled in time (the model can then use appearance only, which carries no class information).

    PYTHONPATH=. python benchmarks/bench_demo.py [--epochs 20] [--out benchmarks/results_demo.md]

Reports per-epoch validation accuracy, the wall time until val accuracy first reaches 90%, and the control's best.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_demo(run_dir, data, epochs, shuffle):
    args = [sys.executable, "-m", "har_colab.cli", "demo", "--run-dir", str(run_dir), "--data", str(data),
            "--epochs", str(epochs), "--no-progress"] + (["--shuffle-frames"] if shuffle else [])
    t0 = time.time()
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return out, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--work", default=str(HERE / "_work" / "demo"))
    ap.add_argument("--out", default=str(HERE / "results_demo.md"))
    a = ap.parse_args()
    import shutil, csv
    work = Path(a.work)
    shutil.rmtree(work / "runs", ignore_errors=True)
    from har_colab.synthetic import make_synthetic_dataset
    t0 = time.time()
    data = make_synthetic_dataset(work / "synthetic_motion", classes=8, videos_per_class=100, frames=24)
    synth_s = time.time() - t0
    res = {}
    for name, shuffle in (("motion", False), ("shuffled frames (control)", True)):
        run = work / "runs" / ("shuffled" if shuffle else "motion")
        out, secs = run_demo(run, data, a.epochs, shuffle)
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        accs = [float(r["val_acc"]) for r in rows]
        elapsed = 0.0; t90 = None
        for r in rows:
            elapsed += float(r["epoch_seconds"])
            if t90 is None and float(r["val_acc"]) >= 0.9: t90 = (int(r["epoch"]), elapsed)
        res[name] = dict(accs=accs, secs=secs, t90=t90)
    lines = ["# Demo benchmark", "", f"Command: `PYTHONPATH=. python benchmarks/bench_demo.py --epochs {a.epochs}`", "",
             f"Synthetic dataset (8 classes x 100 videos, 24 frames, 64x64): written in {synth_s:.1f} s.", "",
             "| run | final val acc | best val acc | first epoch >= 90% (training seconds) | whole run (s, incl. start-up) |",
             "| --- | ---: | ---: | --- | ---: |"]
    for name, r in res.items():
        t90 = f"epoch {r['t90'][0]} ({r['t90'][1]:.0f} s)" if r["t90"] else "never"
        lines.append(f"| {name} | {100*r['accs'][-1]:.1f}% | {100*max(r['accs']):.1f}% | {t90} | {r['secs']:.0f} |")
    lines += ["", "Val accuracy per epoch:", ""]
    for name, r in res.items():
        lines.append(f"- {name}: " + ", ".join(f"{100*x:.0f}" for x in r["accs"]))
    lines.append("")
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
