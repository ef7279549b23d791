"The `har-colab` command as a user runs it: subprocesses, run folders on disk, exit codes."
import csv
import json

import torch

from conftest import run_cli


def test_synth_writes_a_readable_dataset(tmp_path):
    r = run_cli("synth", tmp_path / "d", "--classes", "4", "--videos-per-class", "3", "--frames", "12", "--size", "48x32")
    assert r.returncode == 0, r.stderr
    classes = sorted(p.name for p in (tmp_path / "d").iterdir() if p.is_dir())
    assert classes == ["down", "left", "right", "up"]
    from har_colab.video import probe
    info = probe(tmp_path / "d" / "left" / "left_002.mp4")
    assert (info.frames, info.width, info.height) == (12, 48, 32)


def test_synth_bad_size_is_one_line_exit_2(tmp_path):
    r = run_cli("synth", tmp_path / "d", "--size", "64")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "WxH" in r.stderr and "Traceback" not in r.stderr


def test_demo_learns_motion_and_resumes(tmp_path, motion_data):
    run = tmp_path / "run"
    r = run_cli("demo", "--run-dir", run, "--data", motion_data, "--videos-per-class", "100", "--epochs", "10", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("epoch ")]
    assert len(lines) == 10 and "summary:" in r.stdout and "chance 12.5%" in r.stdout
    for f in ("config.json", "metrics.csv", "samples.json", "curves.png", "events.log", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / f).exists(), f
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert list(rows[0])[:8] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_video_acc", "lr", "epoch_seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    best = max(float(r["val_acc"]) for r in rows)
    assert best >= 0.4, f"val accuracy {best:.2f} does not clearly beat chance (0.125)"
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["epoch"] == 10 and ck["model_name"] == "tiny3d" and len(ck["class_names"]) == 8
    assert json.loads((run / "config.json").read_text())["hflip"] is False
    # running it again continues from the checkpoint instead of starting over
    r2 = run_cli("demo", "--run-dir", run, "--data", motion_data, "--videos-per-class", "100", "--epochs", "11", "--no-progress")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert [l for l in r2.stdout.splitlines() if l.startswith("epoch ")] == [l for l in r2.stdout.splitlines() if l.startswith("epoch 11/11")]
    assert "resumed from" in (run / "events.log").read_text()
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 11
    # a third time: nothing to train, and the hint names the flag
    r3 = run_cli("demo", "--run-dir", run, "--data", motion_data, "--videos-per-class", "100", "--epochs", "11", "--no-progress")
    assert r3.returncode == 0 and "already trained 11/11 epochs; to train more, run again with --epochs 12" in r3.stdout, r3.stdout


def test_an_error_line_is_one_write(tmp_path, monkeypatch):
    """Under torchrun every process prints its error line into one pipe, unbuffered (`python -u`): a line written in two
    parts (print()'s text, then its newline) could run into another process's line. Each line is one write."""
    import io, sys
    from har_colab.cli import main
    writes = []
    class Recorder(io.StringIO):
        def write(self, s): writes.append(s); return len(s)
    monkeypatch.setattr(sys, "stderr", Recorder())
    assert main(["eval", "--run-dir", str(tmp_path / "none")]) == 2
    assert main(["plot", "--run-dir", str(tmp_path / "none")]) == 2
    assert len(writes) == 2 and all(w.startswith("har-colab ") and w.endswith("\n") and w.count("\n") == 1 for w in writes), writes


def test_train_bad_flag_value_is_one_line_exit_2(tmp_path):
    r = run_cli("train", "--run-dir", tmp_path, "--data", tmp_path, "--model", "tiny3d", "--freeze", "half")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--freeze" in r.stderr and "backbone" in r.stderr


def test_pyav_run_without_fallback_and_run_files_readable_by_others(tmp_path, small_data):
    """`--backend pyav` trains with the installed PyAV (18 in the dev venv, 19 in the Colab twin) without one fallback to
    another decoder; under umask 022 every file of the run folder is 0644, as a plain open() makes it."""
    run = tmp_path / "run"
    r = run_cli("train", "--run-dir", run, "--data", small_data, "--model", "tiny3d", "--no-pretrained", "--epochs", "1",
                "--max-steps-per-epoch", "2", "--save-every-minutes", "0", "--batch-size", "8", "--no-progress",
                "--backend", "pyav", umask=0o022)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (run / "events.log").read_text()
    assert "fallback" not in log and "skipped bad video" not in log and "fallback" not in r.stderr, log + r.stderr[-2000:]
    files = [p for p in run.rglob("*") if p.is_file()]
    for name in ("config.json", "samples.json", "metrics.csv", "curves.png", "events.log", "checkpoints/last.pt",
                 "checkpoints/best.pt", "checkpoints/epoch_001.pt"):
        assert run / name in files, name
    assert {p.relative_to(run).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == \
           {p.relative_to(run).as_posix(): "0o644" for p in files}
