"""Issue 5: a run killed with SIGKILL at random moments and resumed each time ends bit-for-bit where an uninterrupted
run ends; clean stops (SIGTERM, Ctrl-C, time budget) exit with code 3 and resume; broken checkpoints fall back."""
import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, run_cli

pytestmark = pytest.mark.timeout(900)


def train_args(run, data, *extra):
    return ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--no-hflip", "--epochs", "6",
            "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "2", "--no-progress", "--no-plot", *extra]


def start(args, env=None):
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([str(BIN / "har-colab"), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=e)


def rows(run):
    "metrics.csv rows without the timing column."
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(open(Path(run) / "metrics.csv"))]


def final_weights(run):
    return torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(*train_args(run, small_data))
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def saves(run):
    log = Path(run) / "events.log"
    return log.read_text().count(" saved ") if log.exists() else 0


def test_sigkill_at_random_moments_resumes_bit_exact(small_data, reference, tmp_path):
    run, rng = tmp_path / "run", random.Random(1234)
    extra = ("--save-every-minutes", "0.001")          # a mid-epoch checkpoint after (almost) every step
    kills = 0
    # kill 1: halfway through writing a checkpoint, kill 2: in the middle of a validation pass (fault injection);
    # the rest at random moments soon after a save (0-0.4 s: the next step or save) or later (0-1.5 s)
    for fault in ({"HAR_COLAB_KILL_DURING_SAVE": "3"}, {"HAR_COLAB_KILL_DURING_EVAL": "1"}):
        p = start(train_args(run, small_data, *extra), env=fault)
        p.wait(timeout=300); assert p.returncode == -signal.SIGKILL, p.stderr.read()[-2000:]; kills += 1
        assert not (run / "checkpoints" / "last.pt").exists() or torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    while kills < 7:
        before = saves(run)
        p = start(train_args(run, small_data, *extra))
        deadline = time.time() + 300
        while saves(run) <= before and p.poll() is None and time.time() < deadline: time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.4 if kills % 2 else 1.5))
        if p.poll() is not None:
            break                                        # it finished before we could kill it
        p.send_signal(signal.SIGKILL); p.wait(); kills += 1
    assert kills >= 5
    r = run_cli(*train_args(run, small_data, *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = final_weights(reference), final_weights(run)
    assert ref.keys() == got.keys()
    for k in ref: assert torch.equal(ref[k], got[k]), f"{k} differs after {kills} kills"
    assert rows(run) == rows(reference)
    assert (run / "events.log").read_text().count("resumed from") >= 4


@pytest.mark.parametrize("how", ["sigterm", "sigint", "budget"])
def test_clean_stop_exits_3_with_a_resumable_checkpoint(how, small_data, reference, tmp_path):
    run = tmp_path / "run"
    if how == "budget":
        r = run_cli(*train_args(run, small_data, "--time-budget-minutes", "0.0001"))
        code, err = r.returncode, r.stderr
    else:
        p = start(train_args(run, small_data))
        deadline = time.time() + 300
        while "started" not in ((run / "events.log").read_text() if (run / "events.log").exists() else "") and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        out, err = p.communicate(timeout=120); code = p.returncode
    assert code == 3, err[-2000:]
    log = (run / "events.log").read_text()
    assert "stopped because" in log and (run / "checkpoints" / "last.pt").exists()
    r = run_cli(*train_args(run, small_data))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in (run / "events.log").read_text()
    ref, got = final_weights(reference), final_weights(run)
    for k in ref: assert torch.equal(ref[k], got[k]), k


def test_broken_last_checkpoint_falls_back_and_changed_config_is_refused(small_data, reference, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    last = run / "checkpoints" / "last.pt"
    last.unlink(); last.write_bytes(b"garbage, as from a lost Drive sync")
    r = run_cli(*train_args(run, small_data, "--epochs", "7"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped checkpoint last.pt" in (run / "events.log").read_text()
    assert len(rows(run)) == 7
    r = run_cli(*train_args(run, small_data, "--epochs", "8", "--lr", "0.1"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "lr" in r.stderr and "--run-dir" in r.stderr and "Traceback" not in r.stderr
    assert len(rows(run)) == 7                            # nothing saved was lost
