"""Issue 5: a run killed with SIGKILL at random moments and resumed each time ends bit-for-bit where an uninterrupted
run ends; clean stops (SIGTERM, Ctrl-C, time budget) exit with code 3 and resume; broken checkpoints fall back."""
import csv
import random
import signal
from pathlib import Path

import pytest
import torch

from conftest import run_cli

from har_colab.plots import TIMING_COLUMNS

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    "This module's runs keep 2 compute threads (conftest sets 1): resuming must be bit-exact with multi-threaded CPU math too."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "2"); mp.setenv("MKL_NUM_THREADS", "2")
        yield


def train_args(run, data, *extra):
    return ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--no-hflip", "--epochs", "6",
            "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "2", "--no-progress", "--no-plot", *extra]


def rows(run):
    "metrics.csv rows without the timing column."
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(open(Path(run) / "metrics.csv"))]


def final_weights(run):
    return torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(*train_args(run, small_data))
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def launch(run, data, env):
    "Train until the fault in `env` kills the process; it must die of it, on any machine."
    p = run_cli(*train_args(run, data, "--save-every-minutes", "0"), env=env, timeout=300)   # a checkpoint after every step
    assert p.returncode == -signal.SIGKILL, f"{env}: exit {p.returncode}\n{p.stderr[-2000:]}"
    last = Path(run) / "checkpoints" / "last.pt"
    assert not last.exists() or torch.load(last, weights_only=True)        # whatever is there loads


def kill_plan(seed, total, steps_per_epoch):
    """Faults for one launch each, in order: SIGKILLs at optimizer steps drawn from a seeded RNG over the run's `total`
    steps, strictly increasing, between them kills halfway through a save, right after a save, in a validation pass.
    Each fault lies past where the previous one can have left the run, so every launch dies once, later each time."""
    rng = random.Random(seed)
    events = [None, {"HAR_COLAB_KILL_DURING_SAVE": "1"}, None, {"HAR_COLAB_KILL_AFTER_SAVE": "2"}, None,
              {"HAR_COLAB_KILL_DURING_EVAL": "1"}, None, {"HAR_COLAB_KILL_AFTER_SAVE": "1"}]
    def reach(env, at):        # the furthest step a launch resuming at or before step `at` gets to before `env` kills it
        if "HAR_COLAB_KILL_DURING_SAVE" in env: return at + 1                       # its first save: after its first step
        if "HAR_COLAB_KILL_AFTER_SAVE" in env: return at + int(env["HAR_COLAB_KILL_AFTER_SAVE"]) + 1  # + the step in flight
        return -(-(at + 1) // steps_per_epoch) * steps_per_epoch                    # the validation pass ending its epoch
    plan, at = [], 0
    for i, env in enumerate(events):
        if env is None:                                   # a step kill: past `at`, leaving room for what follows
            room = total - at - sum(reach(e, 0) if e else 1 for e in events[i + 1:])
            lo = 1 if plan else 3                        # the first kill after two saves: every later launch resumes
            assert room >= lo, "the run is too short for this plan"
            step = at + rng.randint(lo, min(room, 2 * steps_per_epoch))
            env = {"HAR_COLAB_KILL_AT_STEP": str(step)}; at = step
        else: at = reach(env, at)
        plan.append(env)
    assert at <= total
    return plan


def test_sigkill_at_random_moments_resumes_bit_exact(small_data, reference, tmp_path):
    run = tmp_path / "run"
    total = torch.load(Path(reference) / "checkpoints" / "last.pt", weights_only=True)["global_step"]
    plan = kill_plan(1234, total, total // 6)
    assert len(plan) >= 7 and sum("HAR_COLAB_KILL_AT_STEP" in e for e in plan) >= 4
    for env in plan: launch(run, small_data, env)
    r = run_cli(*train_args(run, small_data, "--save-every-minutes", "0"))
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = final_weights(reference), final_weights(run)
    assert ref.keys() == got.keys()
    for k in ref: assert torch.equal(ref[k], got[k]), f"{k} differs after {len(plan)} kills"
    assert rows(run) == rows(reference)
    log = (run / "events.log").read_text()
    assert log.count("resumed from") == len(plan) and log.count("started ") == 1, log   # every launch found a checkpoint


@pytest.mark.parametrize("how", ["sigterm", "sigint", "budget"])
def test_clean_stop_exits_3_with_a_resumable_checkpoint(how, small_data, reference, tmp_path):
    run = tmp_path / "run"
    if how == "budget":
        r = run_cli(*train_args(run, small_data, "--time-budget-minutes", "0.0001"))   # runs out during the first step
    else:                                                   # the signal arrives at the end of step 7 (mid-epoch 2)
        r = run_cli(*train_args(run, small_data), env={"HAR_COLAB_KILL_AT_STEP": "7", "HAR_COLAB_KILL_SIGNAL": how.upper()})
    assert r.returncode == 3, r.stderr[-2000:]
    log = (run / "events.log").read_text()
    assert "stopped because" in log and (run / "checkpoints" / "last.pt").exists()
    if how != "budget":
        assert f"stopped because {how.upper()} was received" in log and "(stopped at epoch 2 step 2/" in log, log
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
