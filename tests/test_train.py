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
            name = f"{cls}_clip{i}_u_nm_np1_fr_med_0.avi"            # four source movies per class
            write_video(root / cls / name, render_motion_video(np.random.default_rng(10 * k + i), 2 * k, 20, (80, 64)), codec="mpeg4")
            lines.append(f"{name} {2 if i == 3 else 1}")
        (root / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = run_cli("train", "--run-dir", run, "--data", root, "--format", "hmdb51", "--split", "1", "--model", "r3d_18",
                "--no-pretrained", "--epochs", "1", "--batch-size", "2", "--max-steps-per-epoch", "2", "--eval-clips", "1", "--val-videos", "1",
                "--workers", "0", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = __import__("json").loads((run / "config.json").read_text())
    assert cfg["frames"] == 16 and cfg["lr"] == 3e-3 and cfg["optimizer"] == "sgd"   # from r3d_18's spec
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["class_names"] == ["brush_hair", "cartwheel", "catch"] and ck["model"]["fc.weight"].shape == (3, 512)
    assert [len(ck["samples"][k]["paths"]) for k in ("train", "val", "test")] == [6, 3, 3]   # val: one movie per class of the training list


# --- choose on validation, report on test (issue 27) -------------------------------------------------------------------

def hmdb51_tree(src, root, test_from=10):
    """An HMDB51-format tree over the motion videos of `src`: <class>/<class>_movie<r>_..._<n>.mp4, two clips per movie,
    and <class>_test_split1.txt putting the clips from `test_from` on in the test split."""
    import os
    from pathlib import Path
    root = Path(root)
    for c in sorted(p for p in Path(src).iterdir() if p.is_dir()):
        (root / c.name).mkdir(parents=True); lines = []
        for i, f in enumerate(sorted(c.glob("*.mp4"))):
            name = f"{c.name}_movie{i // 2}_u_cm_np1_fr_med_{i % 2}.mp4"
            os.symlink(f, root / c.name / name)
            lines.append(f"{name} {2 if i >= test_from else 1}")
        (root / f"{c.name}_test_split1.txt").write_text("\n".join(lines) + "\n")
    return root


def _sets(run):
    import json
    from har_colab.datasets import Samples
    d = json.loads((run / "samples.json").read_text())
    return d, {k: (None if v is None else Samples.from_dict(v)) for k, v in d.items()}


def test_hmdb51_chooses_on_validation_from_the_training_list_reports_on_the_test_split_and_an_old_run_says_so(small_data, tmp_path):
    import csv, json
    from har_colab.datasets import load_samples
    from har_colab.train import EvalResult, read_eval
    root = hmdb51_tree(small_data, tmp_path / "hmdb51")
    run = tmp_path / "run"
    args = ("train", "--run-dir", run, "--data", root, "--format", "hmdb51", "--model", "tiny3d", "--no-pretrained",
            "--batch-size", "8", "--max-steps-per-epoch", "2", "--workers", "0", "--no-progress", "--eval-clips", "2", "--lr", "0.02", "--val-videos", "4")
    r = run_cli(*args, "--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    _, s = _sets(run)
    official_train, official_test = load_samples("hmdb51", root), load_samples("hmdb51", root, fold="test")
    # three disjoint sets: validation whole movies of the training list, the test split untouched
    assert s["test"].paths == official_test.paths
    assert set(s["val"].paths) <= set(official_train.paths) and set(s["train"].paths) <= set(official_train.paths)
    assert not set(s["train"].paths) & set(s["val"].paths) and not set(s["val"].groups) & set(s["train"].groups)
    # about 4 validation videos per class: 2 movies of the 5 (config.json keeps the number)
    assert s["val"].counts() == [4] * 4 and s["train"].counts() == [6] * 4
    assert json.loads((run / "config.json").read_text())["val_videos"] == 4
    assert "24 train / 16 val / 16 test videos" in r.stdout
    # best.pt is the best validation epoch (the first of equals), and eval.json reports it on the test split
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    best = max(rows, key=lambda h: float(h["val_acc"]))["epoch"]
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == int(best)
    ev = json.loads((run / "eval.json").read_text())
    assert (ev["best_epoch"], ev["chosen_on"], ev["reported_on"], ev["protocol"]) == (int(best), "val", "test", "best-val")
    assert (ev["test"]["videos"], ev["val"]["videos"], ev["test"]["clips"]) == (16, 16, 2) and "val_video_acc" not in ev
    assert "test accuracy of the checkpoint chosen on validation: video accuracy" in r.stdout
    assert f"{100 * ev['test']['video_acc']:.2f}%" in r.stdout.split("test accuracy of the checkpoint chosen on validation")[1]

    # a run from before: its validation set was the official test split, samples.json and checkpoints without "test"
    import shutil
    old = tmp_path / "old"
    shutil.copytree(run, old)
    legacy = {"train": official_train.to_dict(), "val": official_test.to_dict()}
    (old / "samples.json").write_text(json.dumps(legacy))
    for p in (old / "checkpoints").glob("*.pt"):
        st = torch.load(p, weights_only=True)
        st["samples"] = legacy
        st["config"] = {k: v for k, v in st["config"].items() if k not in ("protocol", "val_videos", "test_fraction")}
        torch.save(st, p)
    (old / "eval.json").unlink()
    r = run_cli(*[old if a == run else a for a in args[:-2]], "--epochs", "3")  # resumes: no refusal over the new fields
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "chosen on test" in r.stdout and "chosen on validation" not in r.stdout
    assert json.loads((old / "samples.json").read_text()) == legacy                # its own sets
    ev = json.loads((old / "eval.json").read_text())
    assert (ev["chosen_on"], ev["reported_on"], ev["val"], ev["test"]["videos"]) == ("test", "test", None, 16)
    assert "chosen on test" in EvalResult.load(old).summary()
    assert read_eval(ev, "hmdb51")["chosen_on"] == "test"


def test_last_epoch_protocol_and_a_folder_test_set(small_data, tmp_path):
    import csv, json
    run = tmp_path / "run"
    r = run_cli("train", "--run-dir", run, "--data", small_data, "--model", "tiny3d", "--no-pretrained", "--batch-size", "8",
                "--max-steps-per-epoch", "2", "--workers", "0", "--no-progress", "--eval-clips", "1", "--epochs", "2",
                "--protocol", "last-epoch", "--test-fraction", "0.25")
    assert r.returncode == 0, r.stderr[-3000:]
    d, s = _sets(run)
    assert d["val"] is None and s["test"].counts() == [4, 4, 4, 4] and len(s["train"]) == 40     # 25% of 14, all the rest trains
    assert not set(s["train"].groups) & set(s["test"].groups)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(not r_.get("val_acc") for r_ in rows)                 # no per-epoch validation
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 2     # best.pt follows the newest epoch
    ev = json.loads((run / "eval.json").read_text())
    assert (ev["chosen_on"], ev["reported_on"], ev["protocol"], ev["val"], ev["test"]["videos"]) == \
        ("last-epoch", "test", "last-epoch", None, 16)
    assert "last epoch's checkpoint (protocol last-epoch, no selection)" in r.stdout
    (run / "curves.png").unlink()
    assert run_cli("plot", "--run-dir", run).returncode == 0 and (run / "curves.png").exists()
    r = run_cli("eval", "--run-dir", run, "--clips", "1")                               # the same format, from the CLI
    assert r.returncode == 0 and "protocol last-epoch" in r.stdout, r.stderr[-2000:]
    assert json.loads((run / "eval.json").read_text())["test"] == ev["test"]


def test_a_broken_test_video_is_known_at_the_start(small_data, tmp_path):
    "The probing pass covers the test set too: with --strict a test video that does not decode refuses the start, one line."
    import os
    from conftest import cli_in_process, one_line
    from har_colab.build import build_sets
    from har_colab.config import TrainConfig, resolve_config
    data = tmp_path / "data"
    for c in sorted(p for p in small_data.iterdir() if p.is_dir()):
        (data / c.name).mkdir(parents=True)
        for f in sorted(c.glob("*.mp4")): os.symlink(f, data / c.name / f.name)
    flags = ("--test-fraction", "0.25")
    _, _, test = build_sets(resolve_config(TrainConfig(data=str(data), model="tiny3d", pretrained=False, test_fraction=0.25)))
    broken = test.paths[0]
    os.unlink(broken); open(broken, "wb").write(b"not a video")
    r = cli_in_process("train", "--run-dir", tmp_path / "run", "--data", data, "--model", "tiny3d", "--no-pretrained",
                       "--workers", "0", "--no-progress", "--strict", *flags)
    one_line(r, "do not decode", os.path.basename(broken))
    assert not (tmp_path / "run").exists()
