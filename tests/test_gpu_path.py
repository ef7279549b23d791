"""Issue 14, on the CPU: the GPU path's decisions with CUDA's queries mocked (amp on a T4 vs an A100, `--device cuda:N`),
resume across mixed-precision modes, and out-of-memory handling with `torch.OutOfMemoryError` raised on purpose
(fault-injection variables: counts, never timing)."""
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli

from har_colab.plots import TIMING_COLUMNS

pytestmark = pytest.mark.timeout(600)


def gpu(monkeypatch, major, minor=0, name=None):
    "Pretend a CUDA GPU of compute capability `major.minor` is there (only its queries: nothing runs on it)."
    props = SimpleNamespace(name=name or f"Mock sm_{major}{minor}", major=major, minor=minor, total_memory=15 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or major >= 8)


def test_amp_auto_is_fp16_on_a_t4_and_bf16_from_sm80(monkeypatch):
    from har_colab.core import amp_dtype, amp_warning, native_bf16
    from har_colab.doctor import nan_advice
    from har_colab.env import env_report
    from har_colab.train import amp_setup
    gpu(monkeypatch, 7, 5, "Tesla T4")                     # is_bf16_supported() says True here (emulation): not our test
    assert torch.cuda.is_bf16_supported() and not native_bf16("cuda")
    assert amp_setup(torch.device("cuda"), "auto") == (torch.float16, True)
    assert amp_dtype("cuda", "bf16") == torch.bfloat16 and "emulated" in amp_warning("cuda", "bf16") and "T4" in amp_warning("cuda", "bf16")
    assert amp_warning("cuda", "auto") is None and amp_warning("cuda", "fp16") is None
    advice = nan_advice(torch.float16, "cuda")
    assert "--amp off" in advice and "--amp bf16" not in advice          # never "use bf16" to a T4 user
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    rep = env_report()
    assert rep["gpu"] == "Tesla T4" and rep["bf16"] is False and rep["amp_auto"] == "float16" and rep["compute_capability"] == "7.5"
    gpu(monkeypatch, 8, 0, "NVIDIA A100")
    assert amp_setup(torch.device("cuda"), "auto") == (torch.bfloat16, False) and amp_warning("cuda", "bf16") is None
    assert "--amp bf16" in nan_advice(torch.float16, "cuda") and env_report()["amp_auto"] == "bfloat16"


def test_device_settings_set_the_device_benchmark_and_determinism(monkeypatch):
    from har_colab.core import device_settings
    gpu(monkeypatch, 7, 5)
    picked = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: picked.append(torch.device(d).index))
    bench = torch.backends.cudnn.benchmark
    with device_settings("cuda:1"):
        assert picked == [1] and torch.backends.cudnn.benchmark
    with device_settings("cuda", deterministic=True):
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.benchmark == bench and not torch.are_deterministic_algorithms_enabled()
    assert picked == [1]                                   # plain "cuda" keeps the current device


def args(run, data, *extra):
    return ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--no-hflip", "--epochs", "2",
            "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "1", "--workers", "0", "--no-progress", "--no-plot",
            "--save-every-minutes", "0", *extra]


def weights(run):
    return torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=True)


def rows(run):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(open(Path(run) / "metrics.csv"))]


def same_weights(a, b):
    wa, wb = weights(a)["model"], weights(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_out_of_memory_halves_the_micro_batch_and_trains_as_accumulate_would(small_data, tmp_path):
    """Out-of-memory above micro-batch 2 (from the memory check before step 1): the batch-8 run goes on with micro-batch 2
    x accumulate 4 and ends bit for bit where a run asked for --accumulate 4 ends (same samples, order, schedule)."""
    ref, got = tmp_path / "ref", tmp_path / "oom"
    r = run_cli(*args(ref, small_data, "--accumulate", "4"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(*args(got, small_data), env={"HAR_COLAB_OOM_ABOVE": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    log = (got / "events.log").read_text()
    assert "out of memory at micro-batch 8 in the memory check before the first step" in log
    assert "continuing with micro-batch 2 x accumulate 4 (the same batch 8" in log, log
    assert same_weights(ref, got) and rows(ref) == rows(got)
    ck = weights(got)
    assert (ck["micro_batch"], ck["accumulate"], ck["amp_dtype"]) == (2, 4, "float32")
    # resumed, the run keeps the smaller micro-batch without running out again
    r = run_cli(*args(got, small_data, "--epochs", "3"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "micro-batch 2 x accumulate 4 as the checkpoint left it" in (got / "events.log").read_text()


def test_out_of_memory_mid_run_retries_the_step_and_validation_follows(small_data, tmp_path):
    "An out-of-memory in step 3 (the first try): the step runs again at micro-batch 4 x 2; the run completes."
    run = tmp_path / "run"
    r = run_cli(*args(run, small_data), env={"HAR_COLAB_OOM_AT_STEP": "3"})
    assert r.returncode == 0, r.stderr[-2000:]
    log = (run / "events.log").read_text()
    assert "out of memory at micro-batch 8 in step 3" in log and "micro-batch 4 x accumulate 2" in log
    ck = weights(run)
    assert (ck["micro_batch"], ck["accumulate"], ck["epoch"], ck["step_in_epoch"]) == (4, 2, 2, 0)
    assert len(rows(run)) == 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_out_of_memory_at_micro_batch_1_is_one_line_and_writes_nothing(small_data, tmp_path):
    run = tmp_path / "run"
    r = run_cli(*args(run, small_data), env={"HAR_COLAB_OOM_ABOVE": "0"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "even at micro-batch 1" in r.stderr and "--grad-checkpoint on" in r.stderr
    assert not (run / "checkpoints").exists() and not (run / "config.json").exists()


def test_grad_checkpoint_on_trains_bit_exact(small_data, tmp_path):
    "Activation checkpointing recomputes the same numbers: the run ends where one without it ends."
    a, b = tmp_path / "a", tmp_path / "b"
    for run, flag in ((a, "off"), (b, "on")):
        r = run_cli(*args(run, small_data, "--epochs", "1", "--grad-checkpoint", flag))
        assert r.returncode == 0, r.stderr[-2000:]
    assert "activation checkpointing on for 4 blocks" in (b / "events.log").read_text()
    assert same_weights(a, b) and rows(a) == rows(b)


def test_resume_across_mixed_precision_modes(small_data, tmp_path, monkeypatch):
    """A checkpoint saved without a GradScaler (CPU, bf16, amp off) resumes in a run with one (fp16), and the reverse;
    the change is logged. (The GradScaler runs on the CPU here; only the autocast type is mocked away.)"""
    import har_colab.train as T
    from har_colab.train import TrainConfig, fit
    cfg = lambda run, epochs: TrainConfig(run_dir=str(run), data=str(small_data), model="tiny3d", pretrained=False, epochs=epochs,
                                          batch_size=8, workers=0, progress=False, plot=False, tensorboard=False, eval_clips=1,
                                          max_steps_per_epoch=2)
    run = tmp_path / "run"
    assert fit(cfg(run, 1), echo=lambda *a: None).status == "completed"
    assert weights(run)["scaler"] == {} and weights(run)["amp_dtype"] == "float32"
    monkeypatch.setattr(T, "amp_setup", lambda device, amp="auto", bf16_supported=None: (None, True))   # fp16's scaler
    monkeypatch.setattr(T, "dtype_name", lambda dt: "float16")
    assert fit(cfg(run, 2), echo=lambda *a: None).status == "completed"
    log = (run / "events.log").read_text()
    assert "no GradScaler state" in log and "resumed with autocast float16; the checkpoint was trained with float32" in log
    saved = weights(run)
    assert saved["scaler"]["scale"] > 0 and saved["amp_dtype"] == "float16"
    monkeypatch.undo()                                     # back to no scaler: the saved scaler state is left aside
    assert fit(cfg(run, 3), echo=lambda *a: None).status == "completed"
    assert "resumed with autocast float32; the checkpoint was trained with float16" in (run / "events.log").read_text()
    assert weights(run)["epoch"] == 3 and weights(run)["scaler"] == {}
    assert all(v.device.type == "cpu" for s in weights(run)["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v))
    assert weights(run)["scaler_fp16"] == saved["scaler"]   # carried through the session without fp16 ...
    monkeypatch.setattr(T, "amp_setup", lambda device, amp="auto", bf16_supported=None: (None, True))
    monkeypatch.setattr(T, "dtype_name", lambda dt: "float16")
    assert fit(cfg(run, 4), echo=lambda *a: None).status == "completed"
    assert f"the loss scale {saved['scaler']['scale']:g} of the last fp16 session goes on" in (run / "events.log").read_text()
    back = weights(run)["scaler"]                          # ... and goes on counting where fp16 left it (2 + 2 steps)
    assert back["scale"] == saved["scaler"]["scale"] and back["_growth_tracker"] == saved["scaler"]["_growth_tracker"] + 2 == 4


def test_checkpointing_mvit_blocks_keeps_gradients():
    "Torchvision's MViT: its blocks take and return (x, thw) and still checkpoint (the transformers --grad-checkpoint is for)."
    from har_colab.models import enable_grad_checkpointing, get_spec
    spec = get_spec("mvit_v2_s")
    a = spec.builder(4); b = spec.builder(4); b.load_state_dict(a.state_dict())
    assert enable_grad_checkpointing(b, spec) == 16
    thw = (2, 8, 8)                                        # one block on a few tokens: what the wrapper must pass through
    x = torch.randn(2, 1 + 2 * 8 * 8, 96, requires_grad=True)
    outs = []
    for m in (a, b):
        m.train(); y, t = m.blocks[0](x, thw); y.square().sum().backward(); outs.append((y, t))
    assert outs[0][1] == outs[1][1] and torch.equal(outs[0][0], outs[1][0])
    for (n, p), q in zip(a.blocks[0].named_parameters(), b.blocks[0].parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), n


def test_every_model_has_a_t4_batch_estimate():
    "`har-colab models` shows the T4 micro-batch for every registered model, marked as an estimate."
    from har_colab.models import ACT_MB, MODELS
    assert set(ACT_MB) == set(MODELS)
    r = run_cli("models")
    assert r.returncode == 0 and "T4 batch" in r.stdout.splitlines()[0]
    assert sum(" est. " in l for l in r.stdout.splitlines()[2:]) == len(MODELS)
