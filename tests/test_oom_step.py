"""Issue 26, on the CPU: an out-of-memory where it really happens (inside the optimizer step, in the backward after
BatchNorm statistics moved), the memory check that includes the optimizer step, a resumed run on another GPU, frozen
BatchNorm layers, the GradScaler across precisions, and the host syncs of a step. GPU behaviour without a GPU: an enabled
`torch.amp.GradScaler("cpu")` and `torch.OutOfMemoryError` raised on purpose (HAR_COLAB_OOM_AT_STEP / _WHERE / _ABOVE)."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.timeout(600)


def cfg(run, data, **kw):
    from har_colab.train import TrainConfig
    base = dict(run_dir=str(run), data=str(data), model="tiny3d", pretrained=False, epochs=2, batch_size=8, workers=0,
                hflip=False, progress=False, plot=False, tensorboard=False, eval_clips=1, max_steps_per_epoch=2,
                save_every_minutes=0, optimizer="adamw")
    return TrainConfig(**{**base, **kw})


def fp16_scaler(monkeypatch):
    "The run gets an enabled GradScaler (fp16's), on the CPU; only the autocast type is mocked away."
    import har_colab.train as T
    monkeypatch.setattr(T, "amp_setup", lambda device, amp="auto", bf16_supported=None: (None, True))


def fit_with(monkeypatch, config, **env):
    "`fit(config)` in this process with the fault-injection variables `env` (each injected out-of-memory fires once)."
    import har_colab.core as core
    from har_colab.train import fit
    for k in ("HAR_COLAB_OOM_AT_STEP", "HAR_COLAB_OOM_WHERE", "HAR_COLAB_OOM_ABOVE"): monkeypatch.delenv(k, raising=False)
    for k, v in env.items(): monkeypatch.setenv(k, str(v))
    core._OOM_STEPS_DONE.clear()
    try: return fit(config, echo=lambda *a: None)
    finally:
        for k in env: monkeypatch.delenv(k)


def last(run):
    return torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=True)


def same(a, b, path="") -> list:
    "Paths where two checkpoint values differ (tensors bit for bit)."
    if torch.is_tensor(a): return [] if torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b) else [path]
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys(): return [path]
        return [d for k in a for d in same(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b): return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{path}/{i}")]
    return [] if a == b else [path]


@pytest.mark.parametrize("clip_grad", [1.0, 0.0])
def test_out_of_memory_in_the_step_or_backward_ends_where_one_in_the_forward_ends(small_data, tmp_path, monkeypatch, clip_grad):
    """Step 3 (the first of epoch 2) runs out of memory on its first try in the forward, in the backward (BatchNorm has
    moved), or inside AdamW's step after it updated weights and moments with an enabled GradScaler; each retries at
    micro-batch 4 x 2 and the three runs end with the same weights, BatchNorm statistics, moments and loss scale.
    (Without the copy: 'unscale_() has already been called' with clip_grad, a second update with scaled gradients without.)"""
    import har_colab.core as core
    fp16_scaler(monkeypatch)
    states = {}
    for where in ("forward", "backward", "step"):
        monkeypatch.setenv("HAR_COLAB_OOM_AT_STEP", "3"); monkeypatch.setenv("HAR_COLAB_OOM_WHERE", where)
        core._OOM_STEPS_DONE.clear()
        t = trainer(small_data, tmp_path / where, clip_grad=clip_grad)
        assert t.scaler.is_enabled()
        t.flush_notes()
        while not t.done: t.run_epoch()
        assert "out of memory at micro-batch 8 in step 3" in (tmp_path / where / "events.log").read_text()
        states[where] = t.state_dict()
    ref = states["forward"]
    assert (ref["micro_batch"], ref["accumulate"], ref["global_step"]) == (4, 2, 4) and ref["scaler"]["scale"] > 0
    for where in ("backward", "step"):
        diff = [d for k in ("model", "optimizer", "scaler", "history") for d in same(ref[k], states[where][k], k) if "seconds" not in d]
        assert not diff, (where, diff[:5])


def test_out_of_memory_in_a_step_that_fitted_before_stops_with_one_line_and_resumes(small_data, tmp_path):
    """Step 2 ran out of memory inside the optimizer step, after step 1 had fitted at the same micro-batch: no copy of the
    weights was kept, so the run stops with one line instead of updating twice; run again, it resumes from the checkpoint of
    step 1 and ends bit for bit where a run without the fault ends."""
    args = lambda run: ["train", "--run-dir", run, "--data", small_data, "--model", "tiny3d", "--no-pretrained", "--no-hflip",
                        "--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "3", "--eval-clips", "1", "--workers", "0",
                        "--no-progress", "--no-plot", "--save-every-minutes", "0"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = run_cli(*args(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(*args(run), env={"HAR_COLAB_OOM_AT_STEP": "2", "HAR_COLAB_OOM_WHERE": "step"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "inside optimizer step 2" in r.stderr and "resumes from the last checkpoint" in r.stderr
    assert last(run)["global_step"] == 1
    r = run_cli(*args(run))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = last(ref), last(run)
    assert not same(a["model"], b["model"]) and not same(a["optimizer"], b["optimizer"])


def test_the_memory_check_runs_the_optimizer_step_and_puts_everything_back(small_data, tmp_path, monkeypatch):
    "The check allocates AdamW's moments (an out-of-memory there shows before step 1) and leaves no trace of its step."
    from har_colab.checkpoint import RunFolder
    from har_colab.clips import ClipDataset
    from har_colab.datasets import load_samples, train_val_split
    from har_colab.models import create_model, get_spec
    from har_colab.train import Trainer, resolve_config
    c = resolve_config(cfg(tmp_path / "run", small_data))
    tr, va = train_val_split(load_samples("folder", small_data), 0.2, 0)
    spec = get_spec("tiny3d")
    t = Trainer(c, create_model("tiny3d", 4, pretrained=False), ClipDataset(tr, spec, True, hflip=False), ClipDataset(va, spec, False),
                RunFolder(tmp_path / "run").mkdir(), callbacks=[], echo=lambda m: None)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    sizes = []
    t.opt.register_step_post_hook(lambda opt, a, k: sizes.append(sum(s["exp_avg"].numel() for s in opt.state.values())))
    t.memory_check()
    assert sizes == [sum(p.numel() for p in t.model.parameters())]          # both moments existed during the check
    assert len(t.opt.state) == 0 and not same(before, t.model.state_dict())
    assert all(p.grad is None for p in t.model.parameters())


def test_a_resumed_run_on_another_gpu_tries_the_configured_micro_batch(small_data, tmp_path, monkeypatch):
    "Halved on a 'T4' (out of memory above 2 clips), resumed on an 'A100': micro-batch 8 again, and events.log says why."
    import har_colab.train as T
    run = tmp_path / "run"
    monkeypatch.setattr(T, "device_name", lambda d: "Tesla T4")
    assert fit_with(monkeypatch, cfg(run, small_data, epochs=1), HAR_COLAB_OOM_ABOVE=2).status == "completed"
    ck = last(run)
    assert (ck["micro_batch"], ck["accumulate"], ck["device_name"]) == (2, 4, "Tesla T4")
    monkeypatch.setattr(T, "device_name", lambda d: "NVIDIA A100-SXM4-40GB")   # (the same GPU keeps 2: test_gpu_path)
    assert fit_with(monkeypatch, cfg(run, small_data, epochs=2)).status == "completed"
    ck = last(run)
    assert (ck["micro_batch"], ck["accumulate"], ck["device_name"]) == (8, 1, "NVIDIA A100-SXM4-40GB")
    assert ("the checkpoint left micro-batch 2 x accumulate 4 after an out-of-memory on Tesla T4; this is NVIDIA "
            "A100-SXM4-40GB: trying the configured micro-batch 8 first") in (run / "events.log").read_text()


def trainer(data, run, model=None, **kw):
    from har_colab.checkpoint import RunFolder
    from har_colab.clips import ClipDataset
    from har_colab.core import seed_everything
    from har_colab.datasets import load_samples, train_val_split
    from har_colab.models import create_model, get_spec
    from har_colab.train import Trainer, resolve_config
    c = resolve_config(cfg(run, data, **kw))
    tr, va = train_val_split(load_samples("folder", data), 0.2, 0)
    spec = get_spec("tiny3d")
    seed_everything(c.seed)                                # the same initial weights in every run, as fit has them
    model = model or create_model("tiny3d", 4, pretrained=False, freeze=c.freeze, k=c.freeze_k)
    return Trainer(c, model, ClipDataset(tr, spec, True, hflip=False), ClipDataset(va, spec, False), RunFolder(run).mkdir(),
                   callbacks=[], echo=lambda m: None)


def test_frozen_batchnorm_keeps_its_statistics(small_data, tmp_path):
    "freeze=all_but_last_k: the frozen stages' BatchNorm statistics stay put through training steps; layer3's move."
    t = trainer(small_data, tmp_path / "run", freeze="all_but_last_k", freeze_k=1, epochs=1)
    bn = {n: m.running_mean.clone() for n, m in t.model.named_modules() if isinstance(m, torch.nn.BatchNorm3d)}
    t._train_steps()
    assert t.global_step == 2
    moved = {n for n, m in t.model.named_modules() if n in bn and not torch.equal(m.running_mean, bn[n])}
    assert moved == {"layer3.1"}, moved


def test_a_first_step_the_scaler_skips_does_not_warn(small_data, tmp_path):
    "An fp16 GradScaler that skips the first steps (inf gradients): LambdaLR keeps the schedule without a warning."
    t = trainer(small_data, tmp_path / "run", epochs=1)
    t.scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))          # every scaled gradient overflows: steps skipped
    before = [p.detach().clone() for p in t.model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t._train_steps()
    assert t.global_step == 2 and t.sched.last_epoch == 2
    assert all(torch.equal(a, p) for a, p in zip(before, t.model.parameters()))


def test_one_host_sync_per_step_under_ddp_with_mixup(small_data, tmp_path, monkeypatch):
    """A step of 2 micro-batches with mixup and cutmix in a (mocked) 2-process job reads the device once: the step's numbers
    and the stop flags travel in one all-reduced tensor."""
    import torch.distributed as dist
    t = trainer(small_data, tmp_path / "run", epochs=1, accumulate=2, mixup=0.8, cutmix=1.0, batch_size=16)
    batches = [next(iter(t.train_loader)) for _ in range(2)]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: t.mul_(2))   # the other process did the same
    reads = []                    # reads of a tensor's value by our code (torch's own reads of AdamW's CPU step counts are no syncs)
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        def read(self, *a, _o=getattr(torch.Tensor, name), _n=name, **k):
            if "har_colab" in sys._getframe(1).f_code.co_filename: reads.append(_n)
            return _o(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, read)
    t.train_step(batches)
    monkeypatch.undo()
    assert reads == ["tolist"], reads
    assert t.running["count"] == 32 and t._asked == [0.0, 0.0]
