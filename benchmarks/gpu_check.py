"""One command for any CUDA machine: what the GPU path does there, as a markdown section for BENCHMARKS.md.

    python benchmarks/gpu_check.py [--device cuda] [--out FILE]      # under 8 minutes on a GPU
    python benchmarks/gpu_check.py --device cpu --quick              # CI: the same code on the CPU, small, ~1 minute

Sections: the device and the autocast type `amp=auto` picks; one training step of r3d_18 / x3d_s / mvit_v2_s in fp16,
bf16 (where native) and fp32 (s/step, clips/s); peak memory at micro-batch 1, 4, 8; the out-of-memory fallback on a
deliberately too-large batch (on the CPU it is injected: HAR_COLAB_OOM_ABOVE) and in the final evaluation (injected);
an out-of-memory inside the optimizer step (injected after AdamW's update, also on a GPU) against one in the forward of
the same step; a short real run killed with SIGKILL and
resumed (same samples, weights compared with an uninterrupted run); the input pipeline on 2 CPU cores (Colab's
count) against the GPU's training rate, which says whether input or the GPU bounds an epoch; and `--decode-device cuda`
(torchcodec's NVDEC decoder against its CPU decoder, pixels compared, a 1-epoch run), on the CPU its one-line refusal.
"""
import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def har(*args, env=None, timeout=600):
    "`har-colab ARGS` in a subprocess of this Python."
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "har_colab.cli", *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=timeout)


def device_section(dev):
    from har_colab.core import amp_dtype, dtype_name
    lines = [f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        lines.insert(0, f"- device: **{p.name}**, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB")
    else:
        lines.insert(0, f"- device: CPU ({os.cpu_count()} cores): no GPU, so the GPU columns say n/a")
    lines.append(f"- `amp=auto` picks: {dtype_name(amp_dtype(dev, 'auto'))} (float32: no autocast)")
    return lines


def step_time(name, dev, dtype, micro, steps, frames=None, size=None):
    "(s/step, peak GiB or None) of `steps` training steps of `name` at `micro` clips after one warm-up step."
    from har_colab.models import create_model, get_spec
    spec = get_spec(name)
    torch.manual_seed(0)
    model = create_model(name, 10, pretrained=False).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    shape = (micro, 3, frames or spec.frames, size or spec.crop, size or spec.crop)
    x, y = torch.randn(shape, device=dev), torch.randint(0, 10, (micro,), device=dev)
    def one():
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
    one()
    if dev.type == "cuda": torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps): one()
    if dev.type == "cuda": torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    del model, opt, x, y
    if dev.type == "cuda": torch.cuda.empty_cache()
    return (time.perf_counter() - t0) / steps, peak


def dtypes(dev):
    from har_colab.core import native_bf16
    if dev.type != "cuda": return [("fp32", None)]
    return [("fp16", torch.float16)] + ([("bf16", torch.bfloat16)] if native_bf16(dev) else []) + [("fp32", None)]


def steps_section(dev, models, micro, steps, small):
    out = ["| model | dtype | micro-batch | s/step | clips/s | peak GiB |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in models:
        for label, dt in dtypes(dev):
            s, peak = step_time(name, dev, dt, micro, steps, *(small.get(name, (None, None))))
            out.append(f"| {name} | {label} | {micro} | {s:.3f} | {micro / s:.1f} | {'n/a' if peak is None else f'{peak:.2f}'} |")
    return out


def memory_section(dev, models, small):
    from har_colab.core import amp_dtype, dtype_name
    if dev.type != "cuda": return ["peak memory: n/a on the CPU (it is `torch.cuda.max_memory_allocated` on a GPU)"]
    dt = amp_dtype(dev, "auto")
    out = [f"| model ({dtype_name(dt)}) | micro 1 GiB | micro 4 GiB | micro 8 GiB |", "| --- | ---: | ---: | ---: |"]
    for name in models:
        cells = []
        for m in (1, 4, 8):
            try: cells.append(f"{step_time(name, dev, dt, m, 1, *(small.get(name, (None, None))))[1]:.2f}")
            except torch.OutOfMemoryError: cells.append("OOM"); torch.cuda.empty_cache()
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def train_args(run, data, model, dev, *extra):
    return ["train", "--run-dir", run, "--data", data, "--model", model, "--no-pretrained", "--no-hflip", "--device", dev,
            "--eval-clips", "1", "--workers", "2", "--no-progress", "--no-plot", "--no-tensorboard", "--save-every-minutes", "0",
            *extra]


def oom_section(dev, data, tmp, model, batch):
    """A run whose batch does not fit: on a GPU for real, on the CPU injected above micro-batch 2; its validation and final
    evaluation run out of memory above 1 clip (injected on both: HAR_COLAB_OOM_EVAL_ABOVE=1) and go on in pieces."""
    env = {"HAR_COLAB_OOM_EVAL_ABOVE": "1"} if dev.type == "cuda" else {"HAR_COLAB_OOM_ABOVE": "2", "HAR_COLAB_OOM_EVAL_ABOVE": "1"}
    run = tmp / "oom"
    r = har(*train_args(run, data, model, dev, "--epochs", "1", "--batch-size", batch, "--max-steps-per-epoch", "1"), env=env)
    lines = [l.split(" ", 1)[1] for l in (run / "events.log").read_text().splitlines() if "out of memory" in l or "checkpointing on" in l] \
        if (run / "events.log").exists() else []
    how = "real" if dev.type == "cuda" else "injected (HAR_COLAB_OOM_ABOVE=2)"
    train = [l for l in lines if "evaluation of best.pt" not in l and "validation of" not in l]
    final = [l for l in lines if "in the evaluation of best.pt: continuing at batch" in l]
    ok = r.returncode == 0 and train
    out = [f"- {model}, batch {batch}, out-of-memory {how}: exit {r.returncode}, {'completed' if ok else 'FAILED'}"]
    out += [f"  - {l}" for l in train] or [f"  - {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'no out-of-memory happened'}"]
    done = r.returncode == 0 and bool(final) and (run / "eval.json").exists()
    out += [f"- the final evaluation out of memory above 1 clip (injected, HAR_COLAB_OOM_EVAL_ABOVE=1): "
            f"{'eval.json written' if done else 'FAILED'}"] + [f"  - {l}" for l in final]
    return out, (bool(ok) or (dev.type == "cuda" and r.returncode == 0)) and done


def step_oom_section(dev, data, tmp, model):
    """Out-of-memory inside AdamW's step after it changed weights and moments (injected on any device:
    HAR_COLAB_OOM_WHERE=step), against one in the forward of the same step (the first of epoch 2): both runs retry at half
    the micro-batch and end with the same weights; in a step that had fitted before at its micro-batch the run stops with
    one line (exit 2) instead of applying a second update on top of a half one. fp16 on a GPU: its GradScaler too."""
    amp = ["--amp", "fp16"] if dev.type == "cuda" else []
    a = lambda run, *x: train_args(run, data, model, dev, "--optimizer", "adamw", "--batch-size", "8", *amp,
                                   *(["--deterministic"] if dev.type == "cuda" else []), *x)
    res = {}
    for where in ("forward", "step"):
        res[where] = har(*a(tmp / f"oom_{where}", "--epochs", "2", "--max-steps-per-epoch", "2"),
                         env={"HAR_COLAB_OOM_AT_STEP": "3", "HAR_COLAB_OOM_WHERE": where})
    if any(r.returncode for r in res.values()):
        return [f"- out-of-memory at step 3 in the {w}: FAILED: {(r.stderr.strip().splitlines() or [''])[-1]}"
                for w, r in res.items() if r.returncode], False
    load = lambda w: torch.load(tmp / f"oom_{w}" / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    wa, wb = load("forward"), load("step")
    diff = max(float((wa["model"][n].float() - wb["model"][n].float()).abs().max()) for n in wa["model"])
    moments = max(float((x.float() - y.float()).abs().max()) for s, t in zip(wa["optimizer"]["state"].values(),
                  wb["optimizer"]["state"].values()) for k in ("exp_avg", "exp_avg_sq") for x, y in [(s[k], t[k])])
    exact = diff == 0 and moments == 0
    r = har(*a(tmp / "oom_refused", "--epochs", "1", "--max-steps-per-epoch", "3"),
            env={"HAR_COLAB_OOM_AT_STEP": "2", "HAR_COLAB_OOM_WHERE": "step"})
    err = r.stderr.strip().splitlines()
    refused = r.returncode == 2 and len(err) == 1 and "inside optimizer step 2" in err[0]
    scaler = f", GradScaler scale {wa['scaler'].get('scale')} vs {wb['scaler'].get('scale')}" if wa["scaler"] else ""
    lines = [f"- {model}, AdamW{' fp16' if amp else ''}, out-of-memory injected at step 3 (first try) in the forward and inside "
             f"the optimizer step: both completed at micro-batch {wa['micro_batch']} x {wa['accumulate']}; largest weight "
             f"difference {diff:.3g}, moments {moments:.3g}{scaler} "
             f"({'bit-exact' if exact else 'NOT the same' if dev.type != 'cuda' else 'not bit-exact'})",
             f"- inside the optimizer step of step 2 (step 1 fitted): exit {r.returncode}, "
             f"{'one line' if len(err) == 1 else f'{len(err)} lines'}: {err[-1] if err else ''}"]
    return lines, refused and (exact or dev.type == "cuda")


def resume_section(dev, data, tmp, model, epochs, batch):
    "An uninterrupted run, and the same run killed with SIGKILL at step k and resumed: same samples, weights compared."
    ref, got = tmp / "ref", tmp / "killed"
    a = train_args(ref, data, model, dev, "--epochs", epochs, "--batch-size", batch)
    r = har(*a)
    if r.returncode: return [f"- reference run failed: {r.stderr.strip().splitlines()[-1]}"], False
    total = torch.load(ref / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["global_step"]
    k = max(1, total // 2)
    r = har(*train_args(got, data, model, dev, "--epochs", epochs, "--batch-size", batch), env={"HAR_COLAB_KILL_AT_STEP": str(k)})
    killed = r.returncode == -signal.SIGKILL
    r = har(*train_args(got, data, model, dev, "--epochs", epochs, "--batch-size", batch))
    wa = torch.load(ref / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    wb = torch.load(got / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    diff = max(float((wa["model"][n].float() - wb["model"][n].float()).abs().max()) for n in wa["model"])
    exact = diff == 0
    same = torch.equal(wa["epoch_order"], wb["epoch_order"]) and wa["global_step"] == wb["global_step"]
    rows = lambda p: ", ".join(f"{100 * float(r['val_acc']):.1f}%" for r in csv.DictReader(open(p / "metrics.csv")))
    ok = killed and r.returncode == 0 and same and (exact or dev.type == "cuda")
    return [f"- {model}, {epochs} epochs x {total // int(epochs)} steps, SIGKILL at step {k}: "
            f"{'killed' if killed else 'NOT killed'}, resumed exit {r.returncode}; same sample order and steps: {same}; "
            f"largest weight difference {diff:.3g} ({'bit-exact' if exact else 'not bit-exact: expected on CUDA'}); "
            f"val_acc per epoch {rows(ref)} vs {rows(got)}"], ok


def input_rate(model, data, seconds_cap, cores=(0, 1)):
    "Clips/s of the training DataLoader (2 workers) with this process and its workers pinned to 2 CPU cores."
    code = f"""
import os, time, torch
os.sched_setaffinity(0, {set(cores)!r} & os.sched_getaffinity(0) or os.sched_getaffinity(0))
from har_colab.train import TrainConfig
from har_colab.config import resolve_config
from har_colab.build import build_samples, clip_dataset
cfg = resolve_config(TrainConfig(data={str(data)!r}, model={model!r}, pretrained=False, workers=2))
tr, _ = build_samples(cfg)
ds = clip_dataset(cfg, tr, train=True)
dl = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, drop_last=True)
n, t0 = 0, None
for i, (x, y) in enumerate(dl):
    if i == 1: t0 = time.perf_counter()
    elif i > 1: n += len(x)
    if t0 and time.perf_counter() - t0 > {seconds_cap}: break
print(n / (time.perf_counter() - t0))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    return float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None


def decode_rate(data, device, seconds_cap, cores=(0, 1)):
    "(clips/s, mean |diff| of its pixels vs CPU decoding or None, videos torchcodec sent to the CPU) of a training ClipDataset read in one process pinned to 2 cores."
    code = f"""
import os, time, torch, warnings
os.sched_setaffinity(0, {set(cores)!r} & os.sched_getaffinity(0) or os.sched_getaffinity(0))
warnings.simplefilter("ignore")
from har_colab.clips import ClipDataset
from har_colab.datasets import load_samples
from har_colab.models import get_spec
s, spec = load_samples("folder", {str(data)!r}), get_spec("r3d_18")
ds = ClipDataset(s, spec, train=True, backend="torchcodec", normalize=False, decode_device={device!r})
ref = ClipDataset(s, spec, train=False, backend="torchcodec", normalize=False)
ev = ClipDataset(s, spec, train=False, backend="torchcodec", normalize=False, decode_device={device!r})
diff = sum(float((ev[i][0].cpu().int() - ref[i][0].int()).abs().float().mean()) for i in range(4)) / 4
n, t0 = 0, time.perf_counter()
for i in range(10**6):
    x, _ = ds[i % len(ds), i // len(ds)]
    n += 1
    if time.perf_counter() - t0 > {seconds_cap}: break
if x.is_cuda: torch.cuda.synchronize()
print(n / (time.perf_counter() - t0), diff, len(ds.cpu_decoded))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if r.returncode: return None, (r.stderr.strip().splitlines() or ["no output"])[-1], None
    rate, diff, fell = r.stdout.strip().splitlines()[-1].split()
    return float(rate), float(diff), int(fell)


def decode_section(dev, data, tmp, seconds_cap):
    "--decode-device cuda: clips/s of GPU against CPU decoding (torchcodec, one process, 2 cores) and their pixels; on the CPU, its refusal."
    if dev.type != "cuda":
        r = har(*train_args(tmp / "nvdec", data, "tiny3d", dev, "--epochs", "1", "--decode-device", "cuda"))
        line = (r.stderr.strip().splitlines() or [""])[-1]
        ok = r.returncode == 2 and "--decode-device" in line and not (tmp / "nvdec" / "config.json").exists()
        return [f"- no GPU: `--decode-device cuda` {'refused as it should' if ok else 'NOT REFUSED AS IT SHOULD'} "
                f"(exit {r.returncode}): {line}"], ok
    cpu, _, _ = decode_rate(data, None, seconds_cap)
    gpu, diff, fell = decode_rate(data, str(dev), seconds_cap)
    if gpu is None: return [f"- torchcodec on {dev}: FAILED: {diff}"], False
    lines = [f"- torchcodec, 320x240 H.264 -> r3d_18 training clips (16 x 112 x 112), one process on 2 cores: CPU "
             f"{cpu:.1f} clips/s, {dev} (NVDEC) {gpu:.1f} clips/s ({gpu / cpu:.2f}x)" if cpu else f"- GPU decoding {gpu:.1f} clips/s",
             f"- pixels: mean |diff| {diff:.2f} levels between GPU- and CPU-decoded evaluation clips; "
             f"{'some videos fell back to the CPU' if fell else 'no CPU fallback'}"]
    r = har(*train_args(tmp / "nvdec", data, "r3d_18", dev, "--epochs", "1", "--decode-device", "cuda", "--batch-size", "8"))
    wait = ""
    if r.returncode == 0:
        row = list(csv.DictReader(open(tmp / "nvdec" / "metrics.csv")))[-1]
        wait = f", input-bound {100 * float(row['data_wait_seconds']) / float(row['epoch_seconds']):.0f}%"
    lines.append(f"- `train --decode-device cuda` (r3d_18, 1 epoch): exit {r.returncode}{wait}"
                 + ("" if r.returncode == 0 else f": {(r.stderr.strip().splitlines() or [''])[-1]}"))
    return lines, r.returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small models and data (CI on the CPU)")
    ap.add_argument("--out", help="also write the markdown here")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available(): sys.exit("gpu_check: no CUDA GPU visible; use --device cpu --quick")
    from har_colab.synthetic import make_synthetic_dataset
    t0 = time.time()
    quick = a.quick
    models = ["tiny3d", "r3d_18"] if quick else ["r3d_18", "x3d_s", "mvit_v2_s"]
    small = {"r3d_18": (8, 32)} if quick else {}           # (frames, crop) for a CPU-sized step
    md, ok = [f"## GPU check ({'quick, ' if quick else ''}{a.device})", "", f"`python benchmarks/gpu_check.py --device {a.device}"
              f"{' --quick' if quick else ''}`", ""], True
    md += device_section(dev) + ["", "### One training step", ""]
    md += steps_section(dev, models, 2 if quick else 8, 1 if quick else 5, small)
    md += ["", "### Peak memory", ""] + memory_section(dev, models, small)
    with tempfile.TemporaryDirectory(prefix="har_gpu_check_") as tmp:
        tmp = Path(tmp)
        data = make_synthetic_dataset(tmp / "motion", classes=4, videos_per_class=12 if quick else 40, frames=20)
        lines, good = oom_section(dev, data, tmp, "tiny3d" if quick else "mvit_v2_s", 8 if quick else 128)
        md += ["", "### Out-of-memory fallback", ""] + lines; ok &= good
        lines, good = step_oom_section(dev, data, tmp, "tiny3d" if quick else "r3d_18")
        md += ["", "### Out-of-memory inside the optimizer step", ""] + lines; ok &= good
        lines, good = resume_section(dev, data, tmp, "tiny3d" if quick else "r3d_18", "2", "8")
        md += ["", "### Killed with SIGKILL and resumed", ""] + lines; ok &= good
        big = data if quick else make_synthetic_dataset(tmp / "big", classes=4, videos_per_class=20, frames=48, size=(320, 240))
        rate = input_rate("tiny3d" if quick else "r3d_18", big, 5 if quick else 30)   # HMDB51-sized videos on a GPU
        gpu_rate = None
        if dev.type == "cuda":
            from har_colab.core import amp_dtype
            s, _ = step_time("r3d_18", dev, amp_dtype(dev, "auto"), 8, 5)
            gpu_rate = 8 / s
        md += ["", "### Input pipeline on 2 CPU cores vs the GPU", ""]
        md.append(f"- DataLoader (2 workers, pinned to 2 cores): {rate:.1f} clips/s" if rate else "- DataLoader: FAILED")
        if gpu_rate: md.append(f"- r3d_18 training at micro-batch 8 on the GPU: {gpu_rate:.1f} clips/s: an epoch is "
                               f"{'input-bound' if rate and rate < gpu_rate else 'GPU-bound'} on 2 cores")
        ok &= rate is not None
        lines, good = decode_section(dev, big, tmp, 5 if quick else 20)
        md += ["", "### Decoding on the GPU (`--decode-device cuda`)", ""] + lines; ok &= good
    md += ["", f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {time.time() - t0:.0f} s"]
    text = "\n".join(md) + "\n"
    print(text)
    if a.out: Path(a.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
