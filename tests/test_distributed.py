"""Issue 8: the same run under torchrun with DDP (2 CPU processes, gloo): trains like 1 process, survives a killed
process and resumes bit-exact with the same world size (and from/to 1 process), stops all processes on one SIGTERM,
and validates every video exactly once."""
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import python_command
from har_colab.plots import TIMING_COLUMNS
from har_colab.train import read_eval

def env(**faults):
    # a collective gives up after 300 s (the library's default: 60 minutes), so a process left waiting ends within the test
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HAR_COLAB_DIST_TIMEOUT="300", **faults)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(run, data, *extra):
    return ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--no-hflip", "--epochs", "3",
            "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "2", "--workers", "0", "--no-progress", "--no-plot", *extra]


def command(nproc, args, script=None, fresh=False):
    """`har-colab ARGS` in 1 process, or under torchrun with `nproc` processes (`script`: a file standing in for the CLI).
    Each such process is forked from the test process's parent of CLI processes (`conftest.python_command`), unless
    `fresh`: one torchrun test (test_run_folder's lock) keeps fresh interpreters, and HAR_COLAB_TEST_FRESH_CLI=1 all."""
    main = [str(script)] if script else ["-m", "har_colab.cli"]
    py = python_command(env(), fresh)
    if nproc == 1: return [*py, *main, *map(str, args)]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port", str(free_port()),
            *py[1:], *main, *map(str, args)]           # torchrun starts `python -u [client SOCKET] MAIN ARGS`


def run(nproc, args, timeout=400):
    return subprocess.run(command(nproc, args), capture_output=True, text=True, env=env(), timeout=timeout)


def start(nproc, args, **faults):
    "Start `har-colab ARGS`; `faults`: fault-injection variables (see `core.fault_injected`)."
    return subprocess.Popen(command(nproc, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(**faults))


def rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(open(Path(run_dir) / "metrics.csv"))]


def weights(run_dir):
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and not any(k.startswith("module.") for k in wa)
    for k in wa: assert torch.equal(wa[k], wb[k]), k


def events(run_dir):
    p = Path(run_dir) / "events.log"
    return p.read_text() if p.exists() else ""


@pytest.fixture(scope="module")
def one_ref(small_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("one") / "run"
    r = run(1, train_args(d, small_data))
    assert r.returncode == 0, r.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def two_ref(small_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("two") / "run"
    r = run(2, train_args(d, small_data))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return d


@pytest.mark.timeout(600)
def test_two_processes_train_like_one_and_checkpoints_move_between_them(small_data, one_ref, two_ref, tmp_path):
    one, two = rows(one_ref), rows(two_ref)
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for k in ("train_loss", "val_loss"):                   # same samples, steps and LR; BN over 4 instead of 8 clips
            assert abs(float(a[k]) - float(b[k])) <= 0.15 * float(a[k]), (k, a, b)
        for k in ("train_acc", "val_acc"): assert abs(float(a[k]) - float(b[k])) <= 0.25, (k, a, b)
        assert a["lr"] == b["lr"]
    log = events(two_ref)
    assert log.count("started ") == 1 and "2 processes (DDP)" in log     # process 0 alone writes events.log
    assert json.loads((two_ref / "config.json").read_text())["batch_size"] == 8
    # a 1-process checkpoint resumes under 2 processes, and back
    up = tmp_path / "up"; shutil.copytree(one_ref, up)
    r = run(2, train_args(up, small_data, "--epochs", "4"))
    assert r.returncode == 0, r.stderr[-3000:]
    down = tmp_path / "down"; shutil.copytree(up, down)
    r = run(1, train_args(down, small_data, "--epochs", "5"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [len(rows(up)), len(rows(down))] == [4, 5] and rows(down)[:3] == one
    # a batch that does not split over the processes: one line naming the fix
    r = run(2, train_args(tmp_path / "odd", small_data, "--batch-size", "7"))
    err = [l for l in r.stderr.splitlines() if l.startswith("har-colab train: error:")]
    assert r.returncode != 0 and err and "--batch-size 8" in err[0] and "exitcode  : 2" in r.stderr, r.stderr[-3000:]


@pytest.mark.timeout(600)
def test_killed_process_resumes_bit_exact(small_data, two_ref, tmp_path):
    d = tmp_path / "run"
    # a mid-epoch death of process 1 at step 7 (epoch 2, step 2), with a checkpoint after every step before it
    p = start(2, train_args(d, small_data, "--save-every-minutes", "0"), HAR_COLAB_KILL_AT_STEP="7", HAR_COLAB_FAULT_RANK="1")
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and len(rows(d)) < 3, out[-3000:]   # torchrun ended the job
    copy = tmp_path / "copy"; shutil.copytree(d, copy)
    r = run(2, train_args(d, small_data))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "resumed from" in events(d)
    assert_same_weights(two_ref, d)
    assert rows(d) == rows(two_ref)
    r = run(1, train_args(copy, small_data))                       # the same folder continues in a single process
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in events(copy) and len(rows(copy)) == 3 and rows(copy)[:1] == rows(two_ref)[:1]


@pytest.mark.timeout(600)
def test_sigterm_to_one_process_stops_all_with_one_checkpoint(small_data, two_ref, tmp_path):
    d = tmp_path / "run"
    p = start(2, train_args(d, small_data), HAR_COLAB_KILL_AT_STEP="7", HAR_COLAB_FAULT_RANK="1",   # a SIGTERM to process 1
              HAR_COLAB_KILL_SIGNAL="SIGTERM")                                                    # at step 7
    out, _ = p.communicate(timeout=300)
    assert "exitcode  : 3" in out or "exitcode: 3" in out, out[-3000:]   # the processes stopped on purpose
    log = events(d)
    # the stop request travels in the next step's all-reduce (no extra one per step): every process stops after step 8
    assert log.count("stopped because SIGTERM was received (process 1)") == 1 and log.count("(stopped at epoch 2 step 3/") == 1, log
    r = run(2, train_args(d, small_data))
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_weights(two_ref, d)


@pytest.mark.timeout(600)
def test_ddp_validation_equals_single_process(small_data, tmp_path):
    data = tmp_path / "odd"; shutil.copytree(small_data, data)
    cls = sorted(p for p in data.iterdir() if p.is_dir())
    for f in sorted(cls[0].iterdir())[:4]: f.unlink()              # 52 videos: 11 for validation, split 5 / 6
    d = tmp_path / "run"
    r = run(2, train_args(d, data, "--epochs", "1", "--val-clips", "3"))   # per-epoch validation at 3 clips, as eval's
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(json.loads((d / "samples.json").read_text())["val"]["paths"]) == 11
    row = rows(d)[-1]
    r = run(1, ["eval", "--run-dir", d, "--checkpoint", "last", "--workers", "0", "--clips", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    single = read_eval(json.loads((d / "eval_last.json").read_text()), "folder")["val"]   # eval.json stays best.pt's
    assert single["clips"] == 3
    for k in ("acc", "video_acc"): assert float(row["val_" + k]) == single[k], (k, row, single)
    assert abs(float(row["val_loss"]) - single["loss"]) <= 1e-5 * single["loss"], (row, single)


@pytest.mark.timeout(600)
def test_final_evaluation_is_split_over_the_processes_and_equals_one_process(two_ref, small_data):
    "Issue 26: every process evaluates its block of videos (no process waits alone in a collective); the numbers of one."
    log = events(two_ref)
    line = [l for l in log.splitlines() if "evaluation of best.pt split over 2 processes" in l]
    assert len(line) == 1, log
    counts = [int(n) for n in re.findall(r"process \d evaluated (\d+) clips", line[0])]
    val = len(json.loads((two_ref / "samples.json").read_text())["val"]["paths"])
    assert len(counts) == 2 and min(counts) > 0 and sum(counts) == 2 * val, line    # 2 eval clips per video, each once
    two = read_eval(json.loads((two_ref / "eval.json").read_text()), "folder")["val"]
    r = run(1, ["eval", "--run-dir", two_ref, "--workers", "0", "--clips", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    one = read_eval(json.loads((two_ref / "eval.json").read_text()), "folder")["val"]
    for k in ("clips", "acc", "video_acc", "per_class"): assert one[k] == two[k], (k, one, two)
    assert abs(one["loss"] - two["loss"]) <= 1e-6 * one["loss"]

    # a run with a test set too (issue 27): each set split over the processes, the numbers of one process
    d = two_ref.parent / "with_test"
    shutil.copytree(two_ref, d)
    (d / "eval.json").unlink()
    for p in (d / "checkpoints").glob("*.pt"):
        st = torch.load(p, weights_only=True)
        tr = st["samples"]["train"]
        st["samples"]["test"] = {**tr, **{k: tr[k][:9] for k in ("paths", "labels", "groups")}}   # 9 videos: split 4 / 5
        torch.save(st, p)
    r = run(2, train_args(d, small_data))                 # trained: the final evaluation runs again, on both sets
    assert r.returncode == 0, r.stderr[-3000:]
    log = events(d)
    assert "evaluation of best.pt split over 2 processes: process 0 evaluated 8 clips, process 1 evaluated 10 clips" in log \
        and "evaluation of best.pt on the validation set split over 2 processes" in log, log
    two = json.loads((d / "eval.json").read_text())
    assert (two["reported_on"], two["test"]["videos"]) == ("test", 9)
    r = run(1, ["eval", "--run-dir", d, "--workers", "0", "--clips", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((d / "eval.json").read_text())
    for on in ("val", "test"):
        for k in ("clips", "acc", "video_acc", "per_class", "confusion"): assert one[on][k] == two[on][k], (on, k, one, two)


TRANSFORMER = """import dataclasses, sys
from har_colab.models import get_spec, register
register(dataclasses.replace(get_spec("tiny3d"), name="tiny3d_tf", arch="transformer"))   # a transformer to the trainer
from har_colab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault,where", [("HAR_COLAB_OOM_ABOVE", "the memory check before the first step"),
                                         ("HAR_COLAB_OOM_AT_STEP", "step 2")])
def test_out_of_memory_in_one_process_of_a_transformer_run_is_one_line_in_every_process(small_data, tmp_path, fault, where):
    """Issue 26: out of memory in process 1 alone (its memory check; or mid-run, in step 2, while process 0 is in the
    step's all-reduce): no activation checkpointing in one process, no process left waiting in a collective; every
    process ends with the line naming --accumulate, exit code 2."""
    script = tmp_path / "tf.py"; script.write_text(TRANSFORMER)
    d = tmp_path / "run"
    args = train_args(d, small_data, "--epochs", "1")
    args[args.index("tiny3d")] = "tiny3d_tf"
    r = subprocess.run(command(2, args, script), capture_output=True, text=True, timeout=400,
                       env=env(**{fault: "2", "HAR_COLAB_FAULT_RANK": "1"}))
    out = r.stdout + r.stderr
    lines = [l for l in out.splitlines() if l.startswith("har-colab train: error:")]
    assert r.returncode != 0 and len(lines) == 2, out[-4000:]
    for l in lines:
        assert f"out of GPU memory in {where} at micro-batch 4" in l and "--accumulate 2" in l, l
    assert sum("(process 1)" in l for l in lines) == 1                  # process 0 says whose it was
    assert "activation checkpointing" not in out and "exitcode  : 2" in out, out[-4000:]
    if fault == "HAR_COLAB_OOM_ABOVE": assert not (d / "config.json").exists() and not (d / "checkpoints").exists()


def test_the_job_waits_60_minutes_for_a_slow_process_not_nccls_10(monkeypatch):
    "init_process_group gets a timeout of its own (a checkpoint on a slow disk outlasts NCCL's default 10 minutes)."
    import datetime
    import torch.distributed as dist
    from har_colab import distributed
    seen = []
    monkeypatch.setenv("RANK", "0"); monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.append((backend, kw)))
    assert distributed.init_distributed("cpu") == "cpu"
    monkeypatch.setenv("HAR_COLAB_DIST_TIMEOUT", "5")
    distributed.init_distributed("cpu")
    assert seen == [("gloo", {"timeout": datetime.timedelta(minutes=60)}), ("gloo", {"timeout": datetime.timedelta(seconds=5)})]
