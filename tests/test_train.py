"The training loop's mechanics (accumulation, schedule) and the train / eval / plot commands on small data."
import copy

import pytest
import torch
from torch import nn

from conftest import run_cli


def _loop(data, run, accumulate, model):
    from har_colab.checkpoint import RunFolder
    from har_colab.clips import ClipDataset
    from har_colab.datasets import load_samples, train_val_split
    from har_colab.models import get_spec
    from har_colab.train import Trainer, TrainConfig, resolve_config
    cfg = resolve_config(TrainConfig(run_dir=str(run), data=str(data), model="tiny3d", pretrained=False, batch_size=8,
                                     accumulate=accumulate, workers=0, hflip=False, clip_grad=0, epochs=1, max_steps_per_epoch=2))
    tr, va = train_val_split(load_samples("folder", data), 0.2, 0)
    spec = get_spec("tiny3d")
    return Trainer(cfg, model, ClipDataset(tr, spec, True, hflip=False), ClipDataset(va, spec, False), RunFolder(run).mkdir(),
                   callbacks=[], echo=lambda m: None)


def test_gradient_accumulation_keeps_the_effective_batch(small_data, tmp_path):
    "batch 8 in one step == batch 8 as 2 micro-batches of 4 (for a model without batch statistics)."
    torch.manual_seed(0)
    base = nn.Sequential(nn.AdaptiveAvgPool3d((2, 4, 4)), nn.Flatten(), nn.Linear(3 * 2 * 16, 4))
    a = _loop(small_data, tmp_path / "a", 1, copy.deepcopy(base))
    b = _loop(small_data, tmp_path / "b", 2, copy.deepcopy(base))
    assert a.micro == 8 and b.micro == 4
    a.run_epoch(); b.run_epoch()
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    assert a.global_step == b.global_step == 2


def test_lr_warms_up_then_decays_per_step(small_data, tmp_path):
    from har_colab.train import lr_factor
    t = _loop(small_data, tmp_path / "s", 1, nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 4)))
    lrs = []
    t.callbacks = [type("Rec", (), {"order": 0, "__getattr__": lambda s, n: (lambda tr: lrs.append(tr.lr)) if n == "after_step" else (lambda tr: None)})()]
    t.run_epoch()
    peak = t.cfg.lr
    assert lrs == pytest.approx([peak * lr_factor(s, t.warmup_steps, t.total_steps) for s in range(1, 3)])


def test_eval_and_plot_commands_on_a_trained_run(small_data, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "--run-dir", run, "--data", small_data, "--model", "tiny3d", "--no-pretrained", "--no-hflip",
                "--epochs", "1", "--batch-size", "8", "--max-steps-per-epoch", "4", "--no-progress", "--eval-clips", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("eval", "--run-dir", run, "--clips", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "video accuracy" in r.stdout and "3 clips per video" in r.stdout
    assert (run / "confusion.png").exists() and (run / "eval.json").exists()
    (run / "curves.png").unlink()
    r = run_cli("plot", "--run-dir", run)
    assert r.returncode == 0 and (run / "curves.png").exists()
    r = run_cli("eval", "--run-dir", tmp_path / "nothing")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_train_r3d18_on_an_hmdb51_format_tree(tmp_path):
    "har-colab train --model r3d_18 on a generated HMDB51-format tree (official split files), on the CPU."
    import numpy as np
    from har_colab.synthetic import render_motion_video, write_video
    root = tmp_path / "hmdb51"
    for k, cls in enumerate(["brush_hair", "cartwheel", "catch"]):
        lines = []
        for i in range(4):
            name = f"{cls}_clip_u_nm_np1_fr_med_{i}.avi"
            write_video(root / cls / name, render_motion_video(np.random.default_rng(10 * k + i), 2 * k, 20, (80, 64)), codec="mpeg4")
            lines.append(f"{name} {2 if i == 3 else 1}")
        (root / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = run_cli("train", "--run-dir", run, "--data", root, "--format", "hmdb51", "--split", "1", "--model", "r3d_18",
                "--no-pretrained", "--epochs", "1", "--batch-size", "2", "--max-steps-per-epoch", "2", "--eval-clips", "1",
                "--workers", "0", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = __import__("json").loads((run / "config.json").read_text())
    assert cfg["frames"] == 16 and cfg["lr"] == 3e-3 and cfg["optimizer"] == "sgd"   # from r3d_18's spec
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["class_names"] == ["brush_hair", "cartwheel", "catch"] and ck["model"]["fc.weight"].shape == (3, 512)
    assert len(ck["samples"]["train"]["paths"]) == 9 and len(ck["samples"]["val"]["paths"]) == 3
