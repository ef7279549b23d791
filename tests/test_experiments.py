"""Issue 16: a sweep spans sessions. Killed with SIGKILL in the middle of its second run and called again, it leaves the
finished run's files untouched, resumes the interrupted run and starts the next; `compare` tells finished, running,
stopped and broken folders apart; TensorBoard holds each epoch once after the kill and the resume."""
import csv
import hashlib
import json
import shutil
import signal

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.timeout(900)

FLAGS = ["--no-pretrained", "--no-hflip", "--epochs", "2", "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "2",
         "--no-progress", "--no-plot"]


def snapshot(folder):
    "path -> (sha256, mtime_ns) of every file under `folder`."
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def statuses(csv_path):
    return {r["run"]: r["status"] for r in csv.DictReader(open(csv_path))}


def epochs_in_tensorboard(run, tag="loss/train"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_sweep_killed_mid_run_continues_and_compare_tells_runs_apart(small_data, tmp_path):
    root = tmp_path / "sweep"
    run1, run2, run3 = (root / f"tiny3d-seed{s}" for s in (0, 1, 2))
    args = ["sweep", "--root", root, "--models", "tiny3d", "--seeds", "0,1,2", "--data", small_data, *FLAGS]
    # session 1: checkpoint saves 1-2 are run 1's epochs, save 3 is run 2's first epoch; save 4 (run 2's last epoch,
    # after its metrics went to TensorBoard) dies halfway through the write
    r = run_cli(*args, env={"HAR_COLAB_KILL_DURING_SAVE": "4"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "sweep 1/3 tiny3d-seed0: starting" in r.stdout and "sweep 2/3 tiny3d-seed1: starting" in r.stdout
    assert json.loads((run1 / "eval.json").read_text())["clips"] == 2        # a finished run is evaluated at once
    assert torch.load(run2 / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1 and not run3.exists()
    first, plan = snapshot(run1), (root / "sweep.json").read_bytes()

    # compare: the killed run looks like it is running (it wrote a moment ago); a broken copy; a folder that is no run
    broken = tmp_path / "broken"
    shutil.copytree(run1, broken)
    for p in (broken / "checkpoints").glob("*.pt"): p.write_bytes(b"lost in a Drive sync")
    (tmp_path / "notes").mkdir()
    r = run_cli("compare", root, broken, tmp_path / "notes", "--out", tmp_path / "cmp.png")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "notes" in r.stderr and "Traceback" not in r.stderr
    assert statuses(tmp_path / "cmp.csv") == {"tiny3d-seed0": "done", "tiny3d-seed1": "running",
                                              "broken": "broken (no checkpoint loads)"}
    assert r.stdout.splitlines()[1].startswith("tiny3d-seed0") and (tmp_path / "cmp.png").exists()   # evaluated run first

    # other settings or fewer runs are refused in one line; nothing is touched
    for bad in (["--lr", "0.1"], ["--seeds", "0,1"]):
        r = run_cli("sweep", "--root", root, *bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "sweep.json" in r.stderr, r.stderr
    # the whole call's time budget: it stops (exit 3) before or inside run 2, never reaches run 3
    r = run_cli("sweep", "--root", root, "--time-budget-minutes", "0.0001")
    assert r.returncode == 3 and "time budget" in r.stdout, r.stderr[-2000:]
    assert not run3.exists()
    # run 2 stopped cleanly by its own budget: compare says stopped
    r = run_cli("train", "--run-dir", run2, "--data", small_data, "--model", "tiny3d", "--seed", "1", *FLAGS,
                "--time-budget-minutes", "0.0001")
    assert r.returncode == 3, r.stderr[-2000:]
    r = run_cli("compare", root)
    assert r.returncode == 0 and statuses(root / "comparison.csv")["tiny3d-seed1"] == "stopped"

    # session 2: the same command without the fault; run 1 is skipped, run 2 resumes, run 3 starts
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sweep 1/3 tiny3d-seed0: done, skipped" in r.stdout and "sweep 2/3 tiny3d-seed1: resuming" in r.stdout
    assert "sweep 3/3 tiny3d-seed2: starting" in r.stdout
    assert snapshot(run1) == first and (root / "sweep.json").read_bytes() == plan
    assert "resumed from" in (run2 / "events.log").read_text() and "started tiny3d" in (run3 / "events.log").read_text()
    for run in (run2, run3):
        assert [int(row["epoch"]) for row in csv.DictReader(open(run / "metrics.csv"))] == [1, 2]
        assert (run / "eval.json").exists()
    assert statuses(root / "comparison.csv") == {f"tiny3d-seed{s}": "done" for s in (0, 1, 2)}
    # TensorBoard: run 2's epoch 2 was written before the kill and again after the resume; it appears once
    assert epochs_in_tensorboard(run2) == [1, 2] and epochs_in_tensorboard(run3, "accuracy/val_video") == [1, 2]
    # a later call has nothing left to do
    r = run_cli("sweep", "--root", root)
    assert r.returncode == 0 and r.stdout.count("done, skipped") == 3


def test_sweep_runs_are_ordinary_run_folders(small_data, tmp_path):
    "`har-colab eval` and `train` work on a sweep's run folder, which holds exactly what `train` would write."
    from har_colab.experiments import read_run, sweep
    root = tmp_path / "sweep"
    res = sweep(root, "tiny3d", [3], data=str(small_data), pretrained=False, epochs=1, batch_size=8,
                max_steps_per_epoch=2, eval_clips=1, workers=0, progress=False, plot=False, tensorboard=False,
                echo=lambda m: None)
    assert res.status == "completed" and res.runs == {"tiny3d-seed3": "done"}
    run = root / "tiny3d-seed3"
    assert json.loads((run / "config.json").read_text())["seed"] == 3 and not (run / "tensorboard").exists()
    r = run_cli("eval", "--run-dir", run, "--clips", "1")
    assert r.returncode == 0 and "video accuracy" in r.stdout
    info = read_run(run)
    assert (info.status, info.epochs_done, info.evaluation["clips"]) == ("done", 1, 1)
