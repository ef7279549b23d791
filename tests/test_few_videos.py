"""Issue 18: fine-tuning from a few videos per class: `--init` from a run folder or a file (across class counts), the
recipe's choices in config.json, several clips per video per epoch, mixup/cutmix, and exact resume with all of them."""
import json
import shutil

import torch

from conftest import run_cli

BASE = ("--model", "tiny3d", "--no-pretrained", "--no-hflip", "--batch-size", "4", "--no-progress", "--workers", "0")


def _two_classes(small_data, tmp_path):
    "Two of the four classes (other classes than the run we start from), 8 videos each."
    out = tmp_path / "two"
    for c in ("left", "up"):
        (out / c).mkdir(parents=True)
        for v in sorted((small_data / c).iterdir())[:8]: shutil.copy(v, out / c / v.name)
    return out


def _weights(run, name="last.pt"):
    return torch.load(run / "checkpoints" / name, weights_only=True)["model"]


def test_init_from_a_run_across_class_counts_with_the_recipe_and_exact_resume(small_data, tmp_path):
    src = tmp_path / "src"
    r = run_cli("train", "--run-dir", src, "--data", small_data, *BASE, "--epochs", "1", "--max-steps-per-epoch", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    data = _two_classes(small_data, tmp_path)
    args = lambda run: ("train", "--run-dir", run, "--data", data, *BASE, "--epochs", "2", "--init", src, "--mixup", "0.8",
                        "--save-every-minutes", "0")
    ref = tmp_path / "ref"
    r = run_cli(*args(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "init from" in r.stdout and "2 new: fc.weight, fc.bias" in r.stdout, r.stdout[-3000:]
    assert "recipe auto: 6 training videos per class (median), from --init: train_clips 4, head_dropout 0.5, freeze all_but_last_k" in r.stdout
    cfg = json.loads((ref / "config.json").read_text())
    assert (cfg["init"], cfg["train_clips"], cfg["freeze"], cfg["head_dropout"]) == (str(src), 4, "all_but_last_k", 0.5)
    ck = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)
    assert ck["global_step"] == 2 * (12 * 4 // 4)       # 12 training videos x 4 clips per epoch, batch 4
    # the frozen stages are exactly the source run's; the head is new (2 classes)
    src_w, w = _weights(src, "best.pt"), _weights(ref)
    assert torch.equal(src_w["stem.0.weight"], w["stem.0.weight"]) and w["fc.weight"].shape[0] == 2
    killed = tmp_path / "killed"
    r = run_cli(*args(killed), env={"HAR_COLAB_KILL_AT_STEP": "9"})
    assert r.returncode == -9, r.stderr[-2000:]
    r = run_cli(*args(killed))
    assert r.returncode == 0 and "resumed from" in r.stdout and "init from" not in r.stdout, r.stdout[-2000:]
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref).values(), _weights(killed).values()))
    r = run_cli("train", "--run-dir", tmp_path / "plain", "--data", data, *BASE, "--epochs", "1", "--init", src,
                "--recipe", "none", "--max-steps-per-epoch", "1")
    assert r.returncode == 0 and "recipe auto" not in r.stdout
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["train_clips"] == 1


def test_init_from_a_state_dict_file_and_bad_inits_are_one_line(small_data, tmp_path):
    from har_colab.models import create_model
    torch.manual_seed(1)
    model = create_model("tiny3d", 4, pretrained=False)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    run = tmp_path / "run"
    r = run_cli("train", "--run-dir", run, "--data", small_data, *BASE, "--epochs", "1", "--max-steps-per-epoch", "1",
                "--init", tmp_path / "weights.pt", "--recipe", "none", "--lr", "1e-12")
    assert r.returncode == 0, r.stderr[-2000:]
    n = len(model.state_dict())
    assert f"init from {tmp_path / 'weights.pt'}: all {n} tensors loaded" in r.stdout, r.stdout[-2000:]
    w = _weights(run)
    assert torch.allclose(w["fc.weight"], model.state_dict()["fc.weight"], atol=1e-6)   # same classes: the head too
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for init, says in ((tmp_path / "nowhere", "no such run folder or file"), (tmp_path / "junk.pt", "does not load"),
                       (tmp_path / "empty_run", "has no checkpoint")):
        if init.name == "empty_run": init.mkdir()
        r = run_cli("train", "--run-dir", tmp_path / "bad", "--data", small_data, *BASE, "--init", init)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    r = run_cli("train", "--run-dir", tmp_path / "bad", "--data", small_data, "--model", "r3d_18", "--no-progress",
                "--init", run)
    assert r.returncode == 2 and "is a tiny3d run and this run trains r3d_18" in r.stderr, r.stderr[-2000:]
