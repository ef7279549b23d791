"""Training activation memory per clip of every registered model, measured on the CPU: the numbers behind the
"T4 micro-batch" column of `har-colab models` (`models.ACT_MB`).

    PYTHONPATH=. python benchmarks/memory_table.py [--only NAME ...]

For each model (random init, train mode, one clip at its own input) the forward pass runs under
`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps for the backward pass; their
distinct storages, parameters excluded, are the activation memory of one clip in float32. Writes results_memory.md and
prints the `ACT_MB` dict to paste into nbs/20_models.ipynb. On a GPU, `benchmarks/gpu_check.py` measures the real
peak (`torch.cuda.max_memory_allocated`) instead.
"""
import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def activation_mib(name:str) -> float:
    from har_colab.models import create_model, get_spec
    spec = get_spec(name)
    torch.manual_seed(0)
    model = create_model(name, 51, pretrained=False).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}
    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params: seen[s.data_ptr()] = s.nbytes()
        return t
    x = torch.zeros(spec.input_shape(1, spec.frames))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out, model; gc.collect()
    return sum(seen.values()) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one: print(activation_mib(a.one)); return
    from har_colab.models import MODELS, missing_extra, t4_micro_batch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows, act = [], {}
    for name, spec in MODELS.items():
        if a.only and name not in a.only: continue
        if missing_extra(spec): print(f"skip {name}: {missing_extra(spec)}", file=sys.stderr); continue
        t0 = time.time()                 # each model in a process of its own: nothing of the last one stays in memory
        r = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        act[name] = round(float(r.stdout.strip().splitlines()[-1]), 1)
        rows.append(f"| {name} | {spec.frames} x {spec.crop}^2 | {spec.params_m:g} | {act[name]:.0f} | "
                    f"{t4_micro_batch(spec, act[name])} |")
        print(f"{name}: {act[name]:.1f} MiB per clip ({time.time() - t0:.1f} s)", file=sys.stderr, flush=True)
    md = ["## Training memory per clip and the T4 micro-batch (estimate)", "",
          "`PYTHONPATH=. python benchmarks/memory_table.py`", "",
          "Activation memory autograd keeps per clip (float32, measured on the CPU with saved-tensor hooks), and the largest",
          "micro-batch `models.t4_micro_batch` estimates for a 15 GB T4 in fp16 autocast: 92% of 15 GiB, less 1 GiB for",
          "the CUDA context and cuDNN workspaces, less 16 bytes per parameter (fp32 weights, gradients, AdamW's two",
          "moments), divided by the float32 activations per clip (fp16 halves most of them; the backward pass's",
          "temporaries and the allocator take about as much again). Not measured on a T4: `har-colab models` marks it `est.`.", "",
          "| model | input | params (M) | activations per clip (MiB, fp32) | T4 micro-batch (est.) |",
          "| --- | --- | ---: | ---: | ---: |", *rows, ""]
    (HERE / "results_memory.md").write_text("\n".join(md))
    print("ACT_MB = {" + ", ".join(f'"{k}": {v}' for k, v in act.items()) + "}")


if __name__ == "__main__":
    main()
