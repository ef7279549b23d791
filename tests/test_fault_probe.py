"""Issue 26 items 8 and 9: failures that meet each other, and a fault probe tried as a user would. A Drive that fails
until the end of a run (the final evaluation, curves, eval.json follow the checkpoints to the fallback folder, and go
back on the next start, trained or not); a best.pt that does not load; an eval.json that must say what it evaluated;
and the rough edges of every command (one line, exit 2, nothing good replaced)."""
import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import cli_in_process as cli, one_line, run_cli

pytestmark = pytest.mark.timeout(600)
FAULT_ENV = {"HAR_COLAB_RETRY_WAIT": "0"}


def train_args(run, data, *extra, epochs=2):
    return ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--no-hflip", "--epochs",
            str(epochs), "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "1", "--workers", "0", "--no-progress",
            "--max-steps-per-epoch", "2", *extra]


def ok(r):
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r


def best_epoch_of(run) -> int:
    "The epoch best.pt holds, from metrics.csv: the first with the highest val_acc."
    rows = list(csv.DictReader(open(Path(run) / "metrics.csv")))
    return int(max(rows, key=lambda r: float(r["val_acc"]))["epoch"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_data):
    "A finished 2-epoch tiny3d run (copy it before changing it)."
    run = tmp_path_factory.mktemp("trained") / "run"
    ok(run_cli(*train_args(run, small_data, "--no-plot")))
    return run


def copy_run(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("train.lock"))
    return dst


# --- 8. the Drive fallback and the end of the run -------------------------------------------------------------------

def test_drive_fails_to_the_end_then_every_step_follows_the_checkpoints_and_they_come_back(small_data, tmp_path):
    run, local = tmp_path / "run", tmp_path / "local"
    # every checkpoint save fails on the run folder: the whole run trains on in the fallback folder
    r = ok(run_cli(*train_args(run, small_data, "--fallback-dir", local, "--plot", "--tensorboard"),
                   env={**FAULT_ENV, "HAR_COLAB_FAIL_SAVE": "1-:EIO"}))
    fb = next(local.iterdir())
    assert "final evaluation: best.pt" in r.stdout and "no checkpoint" not in r.stderr + r.stdout
    where = [l for l in r.stdout.splitlines() if "does not answer" in l and str(fb) in l and "copies them back" in l]
    assert len(where) == 1, r.stdout
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "eval.json", "confusion.png", "curves.png", "metrics.csv"):
        assert (fb / name).is_file(), name                                  # the end of the run went where the checkpoints are
    assert not (run / "eval.json").exists() and not (run / "checkpoints" / "best.pt").exists()
    assert (run / "tensorboard").is_dir() and list((fb / "tensorboard").glob("events.out.tfevents.*"))   # TensorBoard too
    ev = json.loads((fb / "eval.json").read_text())
    assert ev["checkpoint"] == "best.pt" and ev["best_epoch"] == best_epoch_of(fb) and ev["clips"] == 1
    # the commands a user tries meanwhile follow the files too
    r = ok(run_cli("eval", "--run-dir", run, "--workers", "0", "--checkpoint", "last"))
    assert r.stdout.startswith("last.pt:") and (run / "eval_last.json").is_file()
    r = ok(cli("plot", "--run-dir", run))
    assert str(fb / "curves.png") in r.stdout
    r = ok(cli("compare", tmp_path, "--out", tmp_path / "cmp.png"))         # the fallback folder is no run of its own
    assert [row["run"] for row in csv.DictReader(open(tmp_path / "cmp.csv"))] == ["run"], r.stdout   # one row: the run
    assert "is the fallback folder of" in r.stderr and "running" not in r.stdout
    # the next start while the Drive still fails: nothing to train, nothing to evaluate again, and it says where the files are
    r = ok(run_cli(*train_args(run, small_data, "--fallback-dir", local, "--plot", "--tensorboard"),
                   env={**FAULT_ENV, "HAR_COLAB_FAIL_SAVE": "1-:EIO"}))
    assert "already trained 2/2" in r.stdout and "final evaluation:" not in r.stdout
    assert [l for l in r.stdout.splitlines() if str(fb) in l and "copies them back" in l], r.stdout
    # the Drive has room again: the next start copies everything back, though there is nothing left to train
    r = ok(run_cli(*train_args(run, small_data, "--fallback-dir", local, "--plot", "--tensorboard"), env=FAULT_ENV))
    assert "the run folder answers again: copied checkpoints/" in r.stdout and "already trained 2/2" in r.stdout
    assert "final evaluation:" not in r.stdout                                # eval.json came back and says it is best.pt's
    for name in ("checkpoints/best.pt", "eval.json", "confusion.png", "curves.png"):
        assert (run / name).is_file(), name
    assert not list(local.rglob("*.pt")) and not fb.exists()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 2          # the fallback's events came back
    assert json.loads((run / "eval.json").read_text()) == ev
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    log = (run / "events.log").read_text()
    assert "WARNING: cannot write to the run folder" in log and "final evaluation: best.pt" in log   # the whole story


def test_final_evaluation_fails_over_only_its_own_files(small_data, tmp_path, trained):
    "A run folder that answers for checkpoints but not for the evaluation's files: they go to the fallback, and back."
    run, local = copy_run(trained, tmp_path / "run"), tmp_path / "local"
    (run / "eval.json").unlink()
    (run / "confusion.png").unlink(); (run / "confusion.png").mkdir()       # this one path cannot be written
    r = ok(run_cli(*train_args(run, small_data, "--fallback-dir", local), env=FAULT_ENV))
    fb = next(local.iterdir())
    assert "final evaluation:" in r.stdout and (fb / "eval.json").is_file() and str(fb) in r.stdout
    (run / "confusion.png").rmdir()
    r = ok(run_cli(*train_args(run, small_data, "--fallback-dir", local), env=FAULT_ENV))
    assert "copied confusion.png, eval.json back" in r.stdout and (run / "eval.json").is_file() and not fb.exists()


# --- 9. broken: best.pt that does not load, eval.json that must say what it evaluated -------------------------------

def truncate(path):
    b = Path(path).read_bytes(); Path(path).write_bytes(b[: len(b) // 2])


def test_a_corrupt_best_pt_is_stood_in_for_by_its_epoch_and_said_in_whole_sentences(small_data, tmp_path, trained):
    run = copy_run(trained, tmp_path / "run")
    truncate(run / "checkpoints" / "best.pt"); (run / "eval.json").unlink()
    n = best_epoch_of(run)
    r = ok(run_cli(*train_args(run, small_data), env=FAULT_ENV))
    out = r.stdout + r.stderr
    assert "best.pt cannot be read: it is incomplete or damaged (RuntimeError: PytorchStreamReader failed reading zip " \
           "archive: failed finding central directory)" in out, out
    assert f"stands in for it (the checkpoint of the same epoch {n})" in out and "If you are seeing" not in out
    ev = json.loads((run / "eval.json").read_text())
    assert ev["best_epoch"] == n and ev["epoch"] == n and ev["checkpoint"] != "best.pt"
    r = ok(run_cli(*train_args(run, small_data), env=FAULT_ENV))           # the next start: evaluated, nothing to do
    assert "final evaluation:" not in r.stdout and "already trained 2/2" in r.stdout
    r = ok(run_cli("eval", "--run-dir", run, "--workers", "0", "--clips", "2"))
    assert r.stdout.startswith("note: ") and "stands in for it" in r.stdout
    assert json.loads((run / "eval.json").read_text())["clips"] == 2        # best.pt's still, at 2 clips: it says so
    r = ok(run_cli(*train_args(run, small_data), env=FAULT_ENV))           # so the final evaluation (1 clip) is redone
    assert "final evaluation: epoch_" in r.stdout and json.loads((run / "eval.json").read_text())["clips"] == 1


def test_best_checkpoint_without_a_checkpoint_of_its_epoch(tmp_path):
    "Nothing left of best.pt's epoch: a refusal naming --checkpoint last, or (for the final evaluation) last.pt, said."
    from har_colab.build import best_checkpoint, best_epoch
    from har_colab.checkpoint import REQUIRED_KEYS, RunFolder, save_checkpoint
    from har_colab.core import CheckpointError
    run = RunFolder(tmp_path / "run").mkdir()
    hist = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.7}]
    st = lambda e: {**{k: 0 for k in REQUIRED_KEYS}, "format_version": 1, "epoch": e, "history": hist[:e], "model": {}}
    save_checkpoint(st(2), run.best); save_checkpoint(st(3), run.last); save_checkpoint(st(3), run.epoch_checkpoint(3))
    assert best_checkpoint(run) == (run.best, "")
    truncate(run.best)
    assert best_epoch(run) == 2                                           # the first of the equal val_accs: best.pt's
    with pytest.raises(CheckpointError) as e: best_checkpoint(run)
    assert "no other checkpoint holds its epoch 2; use --checkpoint last" in str(e.value)
    path, note = best_checkpoint(run, last_ok=True)
    assert path == run.last and "last.pt (epoch 3) stands in for it" in note
    save_checkpoint(st(2), run.epoch_checkpoint(2))
    assert best_checkpoint(run)[0] == run.epoch_checkpoint(2)


def test_eval_json_describes_best_pt_whatever_other_evaluations_ran(small_data, tmp_path, trained):
    run = copy_run(trained, tmp_path / "run")
    ev = json.loads((run / "eval.json").read_text())
    assert ev["checkpoint"] == "best.pt" and ev["best_epoch"] == best_epoch_of(run)
    ok(run_cli("eval", "--run-dir", run, "--checkpoint", "last", "--clips", "2", "--workers", "0"))
    assert json.loads((run / "eval.json").read_text()) == ev                # untouched: it goes to eval_last.json
    last = json.loads((run / "eval_last.json").read_text())
    assert last["checkpoint"] == "last.pt" and last["clips"] == 2 and (run / "confusion_last.png").is_file()
    # an eval.json that no longer describes best.pt (newer than it, but of another epoch) is redone, not trusted by its time
    (run / "eval.json").write_text(json.dumps({**ev, "best_epoch": 7}))
    r = ok(run_cli(*train_args(run, small_data), env=FAULT_ENV))
    assert "final evaluation: best.pt" in r.stdout
    assert json.loads((run / "eval.json").read_text())["best_epoch"] == best_epoch_of(run)
    r = ok(run_cli(*train_args(run, small_data, epochs=3), env=FAULT_ENV))    # more epochs: evaluated for the best one
    ev3 = json.loads((run / "eval.json").read_text())
    assert ev3["best_epoch"] == best_epoch_of(run) and ev3["clips"] == 1
    assert ("final evaluation: best.pt" in r.stdout) == (best_epoch_of(run) == 3)   # redone only when best.pt changed


# --- 9. rough edges: one line, exit 2 -------------------------------------------------------------------------------

def test_every_subcommand_has_help():
    from har_colab.cli import COMMANDS, build_parser
    for name in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e: build_parser().parse_args([name, "--help"])
        assert e.value.code == 0 and "usage: har-colab " + name in out.getvalue(), name
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "~30% more compute" in " ".join(r.stdout.split()), r.stderr[-2000:]


def test_counts_below_their_minimum_are_one_line(trained, tmp_path):
    for args, word in ((["eval", "--clips", "-2"], "--clips"), (["eval", "--clips", "0"], "--clips"),
                       (["eval", "--workers", "-1"], "--workers"), (["predict", "x.mp4", "--clips", "0"], "--clips"),
                       (["predict", "x.mp4", "--workers", "-1"], "--workers")):
        one_line(cli(*args, "--run-dir", trained), word, "or more")
    from har_colab.core import ConfigError
    from har_colab.train import evaluate_run
    with pytest.raises(ConfigError, match="clips=0; use 1 or more"): evaluate_run(trained, clips=0)


def test_writes_that_cannot_happen_are_one_line(trained, tmp_path, small_data):
    run = copy_run(trained, tmp_path / "run")
    blocker = tmp_path / "a_file"; blocker.write_text("not a folder")
    (run / "curves.png").unlink(missing_ok=True); (run / "curves.png").mkdir()     # a path that cannot be written
    one_line(cli("plot", "--run-dir", run), "curves.png", "make it writable")
    (run / "curves.png").rmdir()
    (run / "confusion.png").unlink(); (run / "confusion.png").mkdir()
    one_line(run_cli("eval", "--run-dir", run, "--workers", "0"), "confusion.png", "Is a directory", "make it writable")
    one_line(cli("export", "--run-dir", run, "--format", "torchscript", "--out", blocker / "m.pt"), "a_file is a file")
    one_line(cli("compare", run, "--out", blocker / "cmp.png"), "a_file is a file")
    one_line(cli("predict", "--run-dir", run, small_data, "--csv", blocker / "p.csv"), "--csv", "a_file is a file")
    one_line(cli("sweep", "--root", blocker, "--models", "tiny3d", "--data", small_data, "--no-pretrained"), "a_file")
    ok(cli("export", "--run-dir", run, "--format", "torchscript", "--out", tmp_path))       # an existing folder: into it
    assert (tmp_path / "tiny3d.pt").is_file() and (tmp_path / "tiny3d.pt.json").is_file()


def test_init_from_another_architecture_is_refused(small_data, tmp_path):
    from har_colab.models import create_model
    model = create_model("tiny3d", 4, pretrained=False)
    buffers = {n: b for n, b in model.named_buffers()}                       # BatchNorm counters and statistics match...
    other = {**buffers, "blocks.0.conv.weight": torch.zeros(8, 3, 3, 3, 3), "fc.weight": torch.zeros(4, 8)}
    torch.save(other, tmp_path / "other.pt")                                 # ...no backbone weight does
    run = tmp_path / "run"
    one_line(cli(*train_args(run, small_data, "--init", tmp_path / "other.pt")), "backbone weights of tiny3d", "another model")
    assert not (run / "checkpoints").exists()
    torch.save(model.state_dict(), tmp_path / "same.pt")                     # the same architecture is taken
    from har_colab.build import init_from
    from har_colab.config import TrainConfig
    rep = init_from(create_model("tiny3d", 4, pretrained=False), TrainConfig(model="tiny3d"), tmp_path / "same.pt")
    assert rep.loaded == len(model.state_dict())


def test_eval_after_the_data_moved_names_data(trained, tmp_path):
    line = one_line(cli("eval", "--run-dir", trained, "--data", tmp_path / "moved", "--workers", "0"), "--data")
    assert "--force-resume" not in line


def test_data_pointing_at_a_video_file(small_data, tmp_path):
    video = next(Path(small_data).rglob("*.mp4"))
    line = one_line(cli(*train_args(tmp_path / "run", video)), "is a file", "dataset's folder")
    assert "not found" not in line and not (tmp_path / "run").exists()


def test_plot_without_validation_columns_keeps_the_curves(tmp_path):
    run = tmp_path / "run"; run.mkdir()
    (run / "curves.png").write_bytes(b"good curves")
    (run / "metrics.csv").write_text("epoch,train_loss,train_acc,lr\n1,1.3,0.3,0.001\n2,1.1,0.4,0.0005\n")
    r = ok(cli("plot", "--run-dir", run))
    assert "curves_train.png" in r.stdout and "left as it is" in r.stdout
    assert (run / "curves.png").read_bytes() == b"good curves" and (run / "curves_train.png").stat().st_size > 1000
