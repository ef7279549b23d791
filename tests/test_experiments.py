"""Issue 16: a sweep spans sessions. Killed with SIGKILL in the middle of its second run and called again, it leaves the
finished run's files untouched, resumes the interrupted run and starts the next; `compare` tells finished, running,
stopped and broken folders apart; TensorBoard holds each epoch once after the kill and the resume."""
import csv
import hashlib
import json
import shutil
import signal
import statistics

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


def seed_rows(csv_path):
    return {r["model"]: r for r in csv.DictReader(open(csv_path))}


def spread(values):
    "How the seed table writes mean ± sample standard deviation of fractions."
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}%"


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
    assert "runs that differ only by seed" in r.stdout and "tiny3d-seed2 (missing)" in r.stdout   # the seed table, too
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
    # the seed table: the three seeds are one group, mean ± sample sd of what each eval.json reports (no test set here)
    from har_colab.train import read_eval
    vals = [read_eval(json.loads((run / "eval.json").read_text()), "folder")["val"]["video_acc"] for run in (run1, run2, run3)]
    table = r.stdout[r.stdout.index("runs that differ only by seed"):]
    assert "3/3" in table and spread(vals) in table and "no test set" in table, r.stdout
    group = seed_rows(root / "comparison_seeds.csv")["tiny3d"]
    assert (group["n"], group["seeds"], group["not_done"], group["test_n"]) == ("3", "0,1,2", "", "0")
    assert abs(float(group["val_mean"]) - statistics.mean(vals)) < 1e-9 and abs(float(group["val_sd"]) - statistics.stdev(vals)) < 1e-9
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


# --- compare on run folders written by hand: no training -------------------------------------------------------------

NAMES = ["down", "left", "right", "up"]


def hand_run(folder, *, seed=0, epochs_done=2, evaluation=None, old_sets=False, stopped=False, **config):
    "A run folder as `fit` leaves it: config.json, samples.json, metrics.csv, a checkpoint (no weights), eval.json."
    from har_colab.checkpoint import RunFolder, save_checkpoint
    from har_colab.train import TrainConfig
    run = RunFolder(folder).mkdir()
    cfg = {**TrainConfig(run_dir=str(folder), data="/data/hmdb51", format="hmdb51", model="tiny3d", epochs=2,
                         pretrained=False, seed=seed).to_dict(), **config}
    run.config.write_text(json.dumps(cfg))
    sets = {"class_names": NAMES, "paths": [], "labels": []}
    run.samples.write_text(json.dumps({"train": sets, "val": sets} | ({} if old_sets else {"test": sets})))
    history = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.3 + 0.01 * seed + 0.1 * e,
                "val_video_acc": 0.3, "lr": 1e-3, "epoch_seconds": 10.0} for e in range(1, epochs_done + 1)]
    with open(run.metrics, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader(); w.writerows(history)
    save_checkpoint({"format_version": 1, "model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": epochs_done,
                     "step_in_epoch": 0, "global_step": 0, "rng": {}, "history": history, "config": cfg,
                     "class_names": NAMES, "model_name": cfg["model"]}, run.last)
    run.log(f"started {cfg['model']}")
    if stopped: run.log("stopped because the time budget of 1 minutes ran out; re-run the same command to resume")
    if evaluation is not None:
        shutil.copy(run.last, run.best)
        (run.root / "eval.json").write_text(json.dumps(evaluation))
    return run.root


def new_eval(val, test, clips=3):
    "eval.json as this version writes it: best.pt chosen on validation, reported on test (None: no test set)."
    def metrics(acc): return {"acc": acc - 0.05, "video_acc": acc, "loss": 1.0, "clips": clips, "videos": 40}
    return {"checkpoint": "best.pt", "epoch": 2, "step_in_epoch": 0, "best_epoch": 2, "clips": clips, "protocol": "best-val",
            "chosen_on": "val", "reported_on": "test" if test is not None else "val", "val": metrics(val),
            "test": None if test is None else metrics(test), "class_names": NAMES}


def test_compare_ranks_by_validation_labels_old_runs_and_aggregates_seeds(tmp_path):
    "`har-colab compare` on hand-written run folders: the ranking follows validation, test sits beside it, an old "
    "hmdb51 run says 'chosen on test' and comes last, a folder run without a test set says so, seeds are aggregated."
    runs = tmp_path / "runs"
    vals, tests = [0.50, 0.56, 0.53], [0.41, 0.47, 0.40]
    for seed, (v, t) in enumerate(zip(vals, tests)):
        hand_run(runs / f"tiny3d-seed{seed}", seed=seed, evaluation=new_eval(v, t))
    hand_run(runs / "tiny3d-seed3", seed=3, epochs_done=1, stopped=True)                 # a fourth seed, not done
    hand_run(runs / "mc3", model="mc3_18", evaluation=new_eval(0.51, 0.65))             # best on test, not on validation
    hand_run(runs / "old", old_sets=True, evaluation={"checkpoint": "best.pt", "clips": 3, "val_acc": 0.8,
                                                      "val_video_acc": 0.9, "val_loss": 0.5})    # validated on the test split
    own = hand_run(tmp_path / "own", format="folder", data="/data/mine", evaluation=new_eval(0.7, None))
    r = run_cli("compare", runs, own, "--out", tmp_path / "cmp.png")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "cmp.csv")))
    assert [x["run"] for x in rows] == ["own", "tiny3d-seed1", "tiny3d-seed2", "mc3", "tiny3d-seed0", "tiny3d-seed3", "old"]
    by = {x["run"]: x for x in rows}
    assert (by["mc3"]["val_acc"], by["mc3"]["test_acc"], by["mc3"]["chosen_on"]) == ("0.51", "0.65", "val")   # unformatted
    assert (by["old"]["chosen_on"], by["old"]["test_acc"], by["old"]["val_acc"]) == ("test", "0.9", "")
    assert (by["own"]["reported_on"], by["own"]["test_acc"]) == ("val", "")
    assert by["tiny3d-seed3"]["val_from"] == "best epoch" and by["tiny3d-seed3"]["status"] == "stopped"
    lines = r.stdout.splitlines()
    assert lines[1].startswith("own") and "no test set" in lines[1]
    assert "41.0% (3 clips)" in next(x for x in lines if x.startswith("tiny3d-seed0 "))          # test beside validation
    assert "chosen on test (old run)" in next(x for x in lines if x.startswith("old "))
    assert "optimistic" in r.stdout and "comparison" not in r.stderr
    # the seed group: three done runs out of four, mean and sample standard deviation as statistics computes them
    table = r.stdout[r.stdout.index("runs that differ only by seed"):]
    row = next(x for x in table.splitlines() if x.startswith("tiny3d"))
    assert "3/4" in row and spread(tests) in row and spread(vals) in row and "tiny3d-seed3 (stopped)" in row, table
    group = {g["members"]: g for g in csv.DictReader(open(tmp_path / "cmp_seeds.csv"))}
    g = group["tiny3d-seed1;tiny3d-seed2;tiny3d-seed0;tiny3d-seed3"]
    assert (g["n"], g["runs"], g["seeds"], g["chosen_on"]) == ("3", "4", "0,1,2,3", "val")
    for key, values in (("test", tests), ("val", vals)):
        assert abs(float(g[f"{key}_mean"]) - statistics.mean(values)) < 1e-12
        assert abs(float(g[f"{key}_sd"]) - statistics.stdev(values)) < 1e-12
    assert len(group) == 4 and {x["chosen_on"] for x in group.values()} == {"val", "test"}   # old and mc3 and own: groups of one
    assert "wrote" in lines[-1] and "cmp_seeds.csv" in lines[-1]
