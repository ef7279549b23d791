"""Issue 15: cheap per-epoch validation (val_clips, --val-every), the final evaluation of best.pt with eval_clips when
training completes (also after a kill during it), and the timing columns of metrics.csv."""
import csv
import json
from pathlib import Path

from conftest import run_cli

TRAIN = ("--model", "tiny3d", "--no-pretrained", "--no-hflip", "--batch-size", "8", "--max-steps-per-epoch", "2",
         "--no-progress", "--workers", "0")


def _rows(run):
    return list(csv.DictReader(open(Path(run) / "metrics.csv")))


def test_val_every_val_clips_and_the_final_evaluation_survive_a_kill(small_data, tmp_path):
    run = tmp_path / "run"
    args = ("train", "--run-dir", run, "--data", small_data, *TRAIN, "--epochs", "3", "--val-every", "2", "--eval-clips", "3")
    # validation passes: epoch 2 (every 2nd), epoch 3 (the last always validates), then the final evaluation: killed there
    r = run_cli(*args, env={"HAR_COLAB_KILL_DURING_EVAL": "3"})
    assert r.returncode == -9, r.stdout[-2000:] + r.stderr[-2000:]
    assert (run / "checkpoints" / "best.pt").exists() and not (run / "eval.json").exists()
    r = run_cli(*args)                                   # re-running the notebook cell: the evaluation is done now
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already trained 3/3 epochs" in r.stdout and "final evaluation: best.pt" in r.stdout
    ev = json.loads((run / "eval.json").read_text())
    assert ev["clips"] == 3 and ev["checkpoint"] == "best.pt" and (run / "confusion.png").exists()
    rows = _rows(run)
    assert [bool(r["val_acc"]) for r in rows] == [False, True, True]
    for r in rows[1:]:
        assert r["val_acc"] == r["val_video_acc"]       # one (centre) clip per video: clip and video accuracy agree
    for r in rows:
        t = {k: float(r[k]) for k in ("epoch_seconds", "train_seconds", "val_seconds", "data_wait_seconds")}
        assert min(t.values()) >= 0 and abs(t["train_seconds"] + t["val_seconds"] - t["epoch_seconds"]) < 1e-6
        assert t["data_wait_seconds"] <= t["epoch_seconds"]
    log = (run / "events.log").read_text()
    assert log.count("-> checkpoints/best.pt") in (1, 2) and log.count("final evaluation: best.pt") == 1
    mtime = (run / "eval.json").stat().st_mtime_ns
    r = run_cli(*args)                                   # evaluated already: not again; the summary shows the stored one
    assert r.returncode == 0 and "final evaluation: best.pt" not in r.stdout and (run / "eval.json").stat().st_mtime_ns == mtime
    assert "best.pt, validation accuracy of the checkpoint chosen on validation (no test set" in r.stdout   # the stored one


def test_bad_val_settings_are_one_line_exit_2(small_data, tmp_path):
    for flag, value in (("--val-every", "0"), ("--val-clips", "0")):
        r = run_cli("train", "--run-dir", tmp_path / "r", "--data", small_data, *TRAIN, flag, value)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert flag.lstrip("-").replace("-", "_") in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _dataset_with_broken_files(tmp_path):
    from har_colab.synthetic import make_synthetic_dataset
    data = make_synthetic_dataset(tmp_path / "data", classes=4, videos_per_class=6, frames=20)
    (data / "up" / "zero.mp4").write_bytes(b"")                                   # a download that never arrived
    (data / "left" / "cut.mp4").write_bytes((data / "left" / "left_000.mp4").read_bytes()[:400])   # a truncated copy
    return data


def test_unreadable_videos_are_found_before_training(tmp_path):
    data = _dataset_with_broken_files(tmp_path)
    run = tmp_path / "run"
    args = ("train", "--run-dir", run, "--data", data, *TRAIN, "--batch-size", "4", "--epochs", "1")
    r = run_cli(*args, "--strict")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert "2 of 26 videos do not decode" in line and "zero.mp4 (empty file (0 bytes))" in line and "cut.mp4" in line
    assert not run.exists()                              # refused before anything was written
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "probed 26 videos" in r.stdout and "2 videos did not decode and were left out" in r.stdout
    probe = json.loads((run / "probe.json").read_text())
    assert probe["unreadable"] == 2 and "error" in probe["videos"]["up/zero.mp4"] and "error" in probe["videos"]["left/cut.mp4"]
    assert probe["videos"]["up/up_000.mp4"]["frames"] == 20
    log = (run / "events.log").read_text()
    assert log.count("left out unreadable video") == 2 and "skipped bad video" not in log   # no step spent on them
    samples = (run / "samples.json").read_text()
    assert "zero.mp4" not in samples and "cut.mp4" not in samples
    r = run_cli(*args[:-1], "2")                         # resumed (2 epochs now): no second probing pass
    assert r.returncode == 0 and "resumed" in r.stdout and "probed" not in r.stdout, r.stdout[-2000:]


def test_a_video_that_breaks_mid_run_under_strict_is_one_line(tmp_path):
    from har_colab.synthetic import make_synthetic_dataset
    data = make_synthetic_dataset(tmp_path / "data", classes=4, videos_per_class=6, frames=20)
    run, pause = tmp_path / "run", tmp_path / "pause"; pause.mkdir()
    env = {"HAR_COLAB_PAUSE_BEFORE_EPOCH": "2", "HAR_COLAB_PAUSE_DIR": str(pause)}
    args = ("train", "--run-dir", run, "--data", data, *TRAIN[:-1], "2", "--batch-size", "4", "--epochs", "2",
            "--max-steps-per-epoch", "4", "--strict")
    import subprocess
    from conftest import BIN
    p = subprocess.Popen([str(BIN / "har-colab"), *map(str, args)], env={**__import__("os").environ, **env},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(6000):                            # the run reaches epoch 2 and waits there (an event, not a delay)
            if (pause / "paused-2").exists() or p.poll() is not None: break
            __import__("time").sleep(0.05)
        assert (pause / "paused-2").exists(), p.communicate()[1][-2000:]
        for v in (data / "up").iterdir(): v.write_bytes(b"")    # every video of a class goes bad after the probing pass
        (pause / "go-2").write_text("")
        out, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 2, err[-2000:]
    assert "Traceback" not in err and "Caught" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert "empty file (0 bytes)" in err and "strict" in err
    assert (run / "checkpoints" / "epoch_001.pt").exists()       # what was saved stays


def test_resume_is_exact_when_the_decoder_resizes_at_the_probed_size(tmp_path):
    "320x240 videos for tiny3d (short side 64): decord decodes at the model's size with the probed sizes, also on resume."
    import torch
    from har_colab.build import run_video_sizes
    from har_colab.datasets import load_samples
    from har_colab.models import get_spec
    from har_colab.clips import ClipDataset
    from har_colab.synthetic import make_synthetic_dataset
    data = make_synthetic_dataset(tmp_path / "data", classes=4, videos_per_class=5, frames=24, size=(320, 240))
    args = lambda run: ("train", "--run-dir", run, "--data", data, *TRAIN, "--batch-size", "4", "--epochs", "2",
                        "--save-every-minutes", "0", "--backend", "decord")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert run_cli(*args(ref)).returncode == 0
    r = run_cli(*args(killed), env={"HAR_COLAB_KILL_AT_STEP": "3"})
    assert r.returncode == -9, r.stderr[-2000:]
    r = run_cli(*args(killed))
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
    w = lambda run: torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a, b) for a, b in zip(w(ref).values(), w(killed).values()))
    assert _rows(ref)[-1]["val_loss"] == _rows(killed)[-1]["val_loss"]
    samples = load_samples("folder", data)
    sizes = run_video_sizes(killed, data, samples)
    assert set(sizes.values()) == {(240, 320)} and len(sizes) == len(samples)
    ds = ClipDataset(samples, get_spec("tiny3d"), train=False, backend="decord", video_sizes=sizes)
    with ds._open(samples.paths[0]) as v: assert v.resized_by == "decoder"      # the run's path, not a full-size decode
