"""Issue 19: the run folder under real faults. One writer at a time (a lock with a heartbeat; a killed or silent holder
is taken over), fallbacks that fall back (best.pt, newest loadable first, pruning by loadability, independent files),
no start over on top of a history, nothing written before the start checks pass, the rough edges (one line, exit 2),
and a Drive that fills up or disconnects during a run: on a real tmpfs that fills up, and by injected OSErrors."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, cli_in_process as cli, one_line, run_cli

pytestmark = pytest.mark.timeout(600)


def train_args(run, data, *extra, epochs=3):
    return ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--no-hflip", "--epochs",
            str(epochs), "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "1", "--workers", "0", "--no-progress",
            "--no-plot", "--max-steps-per-epoch", "2", *extra]


def start(args, env=None):
    e = dict(os.environ, PYTHONUNBUFFERED="1", HAR_COLAB_RETRY_WAIT="0", **(env or {}))
    return subprocess.Popen([str(BIN / "har-colab"), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=e)


def paused(pause_dir, at, proc, timeout=300):
    "Wait until `proc` reports it is held before epoch `at` (core.fault_pause); fail if it ends first."
    deadline = time.time() + timeout
    while not (Path(pause_dir) / f"paused-{at}").exists():
        if proc.poll() is not None:
            pytest.fail(f"ended with {proc.returncode} before the pause: {(proc.stderr or proc.stdout).read()[-2000:]}")
        assert time.time() < deadline, "never reached the pause"
        time.sleep(0.05)


def let_go(pause_dir, at): (Path(pause_dir) / f"go-{at}").touch()


def pause_env(pause_dir, *epochs):
    return {"HAR_COLAB_PAUSE_BEFORE_EPOCH": ",".join(map(str, epochs)), "HAR_COLAB_PAUSE_DIR": str(pause_dir)}


def events(run):
    p = Path(run) / "events.log"
    return p.read_text() if p.exists() else ""


def snapshot(run):
    "Every file of a run folder but the lock, with its bytes."
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(Path(run).rglob("*"))
            if p.is_file() and not p.name.startswith(("train.lock", ".train.lock"))}


def epoch_of(path):
    return torch.load(path, weights_only=True)["epoch"]


def rows(run):
    return [l for l in (Path(run) / "metrics.csv").read_text().splitlines()[1:] if l.strip()]


def same_weights(a, b):
    wa, wb = (torch.load(Path(r) / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    "A finished 3-epoch run (also the reference of the exact resumes below)."
    run = tmp_path_factory.mktemp("trained") / "run"
    r = run_cli(*train_args(run, small_data))
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def copy_run(trained, dest):
    shutil.copytree(trained, dest)     # copies hard links as separate files: re-link last.pt like the writer does
    ck = dest / "checkpoints"
    (ck / "last.pt").unlink(); os.link(ck / "epoch_003.pt", ck / "last.pt")
    return dest


def damage(path):
    "A broken sync: the file is cut in place (every hard link to it is cut too)."
    os.truncate(path, os.path.getsize(path) // 2)


# --- one writer at a time ---------------------------------------------------------------------------------------------

def test_a_second_train_refuses_while_the_first_holds_the_lock_and_takes_over_after_a_kill(small_data, tmp_path):
    run, pause = tmp_path / "run", tmp_path / "pause"
    pause.mkdir()
    a = start(train_args(run, small_data), pause_env(pause, 2))
    try:
        paused(pause, 2, a)                              # epoch 1 saved, lock held, process alive
        lock = json.loads((run / "train.lock").read_text())
        assert lock["pid"] == a.pid and lock["host"] == socket.gethostname()
        before = snapshot(run)
        for extra in (("--lr", "1e-3"), ()):             # other settings (the story), then the same ones
            one_line(cli(*train_args(run, small_data, *extra)), f"is in use by process {a.pid} on host {socket.gethostname()}",
                     "--run-dir")
        assert snapshot(run) == before                   # the second one wrote nothing
    finally:
        a.kill(); a.wait()
    assert (run / "train.lock").exists()                 # a SIGKILL leaves the lock behind...
    r = run_cli(*train_args(run, small_data))            # ...and the next run takes it over
    assert r.returncode == 0, r.stderr[-3000:]
    log = events(run)
    assert f"took over the run folder from process {a.pid} on host {socket.gethostname()}" in log
    assert f"process {a.pid} is gone" in log and "resumed from last.pt at epoch 2" in log
    assert not (run / "train.lock").exists() and len(rows(run)) == 3


def test_a_lock_whose_heartbeat_stopped_is_taken_over_and_a_live_one_refuses(small_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = {"host": "colab-vm-gone", "boot_id": "x", "pid": 4242, "token": "t", "command": "har-colab train ..."}
    (run / "train.lock").write_text(json.dumps({**other, "heartbeat": time.time()}))      # alive on another VM
    one_line(cli(*train_args(run, small_data)), "is in use by process 4242 on host colab-vm-gone")
    assert sorted(os.listdir(run)) == ["train.lock"]
    (run / "train.lock").write_text(json.dumps({**other, "heartbeat": time.time() - 3600}))   # that VM died an hour ago
    r = run_cli(*train_args(run, small_data, epochs=1))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "took over the run folder from process 4242 on host colab-vm-gone" in events(run)
    assert "no heartbeat for 60 minutes" in events(run) and not (run / "train.lock").exists()


def rank_pid(torchrun_pid, rank, timeout=120):
    "The pid of the worker process with RANK=`rank` started by torchrun `torchrun_pid`."
    deadline = time.time() + timeout
    while time.time() < deadline:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit(): continue
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == torchrun_pid and f"\0RANK={rank}\0".encode() in b"\0" + (d / "environ").read_bytes():
                    return int(d.name)
            except (OSError, IndexError, ValueError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank}")


def test_under_torchrun_process_0_holds_the_lock(small_data, tmp_path):
    from test_distributed import command, env
    run, pause = tmp_path / "run", tmp_path / "pause"
    pause.mkdir()
    # fresh interpreters: rank_pid finds the worker among torchrun's own children
    p = subprocess.Popen(command(2, train_args(run, small_data, epochs=2), fresh=True), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env={**env(), **pause_env(pause, 2)})
    try:
        paused(pause, 2, p)                              # process 0 holds before epoch 2, process 1 waits for it
        holder = json.loads((run / "train.lock").read_text())["pid"]
        assert holder == rank_pid(p.pid, 0)
        one_line(cli(*train_args(run, small_data, epochs=2)), f"is in use by process {holder}")
        let_go(pause, 2)
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert p.returncode == 0, out[-3000:]
    assert not (run / "train.lock").exists() and len(rows(run)) == 2


# --- fallbacks that fall back -----------------------------------------------------------------------------------------

def test_fallbacks_are_independent_files_and_only_best_pt_is_enough_to_resume(trained, small_data, tmp_path):
    from har_colab.checkpoint import RunFolder, find_checkpoint
    run = copy_run(trained, tmp_path / "run")
    ck = run / "checkpoints"
    inodes = {os.stat(p).st_ino for p in ck.glob("*.pt")}
    assert len(inodes) >= 3                              # last.pt = epoch_003.pt; best.pt and epoch_002.pt files of their own
    assert not os.path.samefile(ck / "best.pt", ck / "last.pt")
    damage(ck / "last.pt")                               # one inode broken in place: last.pt and epoch_003.pt
    state, path = find_checkpoint(RunFolder(run))
    assert state is not None and path.name in ("best.pt", "epoch_002.pt")
    damage(ck / "epoch_002.pt")                          # now only best.pt is whole
    (ck / "epoch_009.pt").write_bytes(b"garbage with a higher number")
    best = epoch_of(ck / "best.pt")
    r = run_cli(*train_args(run, small_data, epochs=4))
    assert r.returncode == 0, r.stderr[-3000:]
    log = events(run)
    assert "skipped checkpoint last.pt" in log and f"resumed from best.pt at epoch {best + 1}" in log
    assert "started" not in log.split("resumed from best.pt")[1]
    assert len(rows(run)) == 4 and epoch_of(ck / "last.pt") == 4
    assert not (ck / "epoch_009.pt").exists()            # pruning kept the newest loadable ones, not the garbage
    assert (ck / "epoch_004.pt").exists() and len(list(ck.glob("epoch_*.pt"))) <= 2
    for p in ck.glob("*.pt"): torch.load(p, weights_only=True)


def test_a_history_without_a_checkpoint_refuses_and_restart_keeps_the_old_files(trained, small_data, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    one_line(cli(*train_args(run, small_data)), "training history (metrics.csv, 3 epochs)", "--run-dir", "--restart")
    assert snapshot(run) == before
    r = run_cli(*train_args(run, small_data, "--restart", epochs=1))
    assert r.returncode == 0, r.stderr[-3000:]
    old = [p for p in tmp_path.iterdir() if p.name.startswith("run-old-")]
    assert len(old) == 1 and len(rows(old[0])) == 3 and "started" in events(old[0])
    assert len(rows(run)) == 1 and "restarted: the previous run's files moved to" in events(run)


def test_a_refused_start_writes_nothing_and_the_corrected_run_describes_its_own_split(small_data, tmp_path):
    run = tmp_path / "run"
    one_line(cli(*train_args(run, small_data, "--batch-size", "64", "--val-fraction", "0.5")), "batch_size=64 is larger than the")
    assert not run.exists()                              # not even the folder
    run.mkdir(); (run / "notes.txt").write_text("mine")
    one_line(cli(*train_args(run, small_data, "--batch-size", "64", "--val-fraction", "0.5")), "batch_size=64")
    assert sorted(os.listdir(run)) == ["notes.txt"]
    r = run_cli(*train_args(run, small_data, "--val-fraction", "0.3", epochs=1))
    assert r.returncode == 0, r.stderr[-3000:]
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert json.loads((run / "samples.json").read_text()) == saved["samples"]
    assert json.loads((run / "config.json").read_text())["val_fraction"] == 0.3 == saved["config"]["val_fraction"]


# --- rough edges ------------------------------------------------------------------------------------------------------

def test_rough_edges_are_one_line(trained, small_data, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line(cli(*train_args(tmp_path / "file", small_data)), "is a file, not a folder")
    one_line(cli("train", "--data", small_data, "--model", "tiny3", "--run-dir", tmp_path / "r"), "did you mean tiny3d?")
    one_line(cli("train", "--data", small_data, "--format", "hmdb51", "--model", "tiny3d", "--no-pretrained",
                 "--run-dir", tmp_path / "r"), "use --format folder")
    # the three sets: settings that do not fit together (issue 27)
    for flags, says in ((("--test-fraction", "0.5", "--val-fraction", "0.5"), "leave no training videos"),
                        (("--protocol", "last-epoch"), "add --test-fraction 0.2"),
                        (("--val-videos", "3"), "--format folder holds out validation with --val-fraction"),
                        (("--format", "hmdb51", "--val-videos", "0"), "val_videos=0; it must be >= 1"),
                        (("--format", "ucf101", "--test-fraction", "0.2"), "official test split"),
                        (("--format", "hmdb51", "--protocol", "last-epoch", "--val-videos", "5"), "drop --val-videos")):
        one_line(cli(*train_args(tmp_path / "r", small_data, *flags)), says)
    lone = tmp_path / "lone"                              # HMDB51 whose training lists are one movie per class
    for c in ("run", "walk"):
        (lone / c).mkdir(parents=True)
        for n in ("a_movie_1.avi", "a_movie_2.avi", "b_movie_1.avi"): (lone / c / n).write_bytes(b"")
        (lone / f"{c}_test_split1.txt").write_text("a_movie_1.avi 1\na_movie_2.avi 1\nb_movie_1.avi 2\n")
    one_line(cli(*train_args(tmp_path / "r", lone, "--format", "hmdb51")), "no validation set can be carved", "--protocol last-epoch")
    run = tmp_path / "plot"
    run.mkdir(); (run / "curves.png").write_bytes(b"good curves")
    for text in (b"", b"epoch,train_loss,train_acc,val_loss,val_acc\n", bytes(range(256)) * 16):
        (run / "metrics.csv").write_bytes(text)
        one_line(cli("plot", "--run-dir", run))
    assert (run / "curves.png").read_bytes() == b"good curves"
    assert not (tmp_path / "r").exists()


def test_ctrl_c_during_the_start_up_imports_is_one_line(small_data, tmp_path):
    if not Path("/proc/self/maps").exists(): pytest.skip("needs /proc to see the imports under way")
    run = tmp_path / "run"
    p = start(train_args(run, small_data))
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:   # torch's library is being loaded: the imports are under way
        try: maps = Path(f"/proc/{p.pid}/maps").read_text()
        except OSError: maps = ""
        if "libtorch" in maps: break
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, (p.returncode, err[-2000:])
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err
    assert "interrupted" in err or "stopped because" in out   # (on a machine that imports faster than we look: training)
    assert not (run / "train.lock").exists()


def test_force_resume_without_deleted_videos_and_a_new_class_is_said_once(small_data, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(small_data, data)
    r = run_cli(*train_args(run, data, epochs=1))
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((run / "samples.json").read_text())
    for rel in saved["train"]["paths"][:2]: (data / rel).unlink()
    shutil.copytree(data / sorted(p.name for p in data.iterdir() if p.is_dir())[0], data / "zz_new_class")
    one_line(cli(*train_args(run, data, epochs=2)), "2 videos of this run are missing", "--force-resume")
    r = run_cli(*train_args(run, data, "--force-resume", epochs=2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming without 2 videos deleted since the run started" in events(run)
    assert r.stdout.count("zz_new_class") == 1 and "not used" in r.stdout
    r = run_cli(*train_args(run, data, "--force-resume", epochs=3))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "zz_new_class" not in r.stdout and events(run).count("zz_new_class") == 1     # said once
    assert len(rows(run)) == 3


def test_the_doctor_does_not_pass_what_train_refuses(small_data, tmp_path):
    from har_colab.core import DataError
    from har_colab.doctor import doctor
    from har_colab.train import TrainConfig
    one = tmp_path / "one"
    for c in sorted(p for p in small_data.iterdir() if p.is_dir()):
        (one / c.name).mkdir(parents=True); shutil.copy(sorted(c.glob("*.mp4"))[0], one / c.name)
    cfg = dict(run_dir=str(tmp_path / "doc"), model="tiny3d", pretrained=False, workers=0)
    with pytest.raises(DataError, match="--val-fraction cannot help; add videos"):
        doctor(TrainConfig(data=str(one), **cfg), checks=("data",))
    one_line(cli(*train_args(tmp_path / "t", one)), "--val-fraction cannot help")          # the same line as train's
    report = doctor(TrainConfig(data=str(small_data), batch_size=64, **cfg), checks=("data",))
    f = report["training setup"]
    assert f.status == "fail" and "larger than the" in f.evidence and "--batch-size" in f.advice and report.exit_code == 1
    assert not any("--val-fraction" in x.advice for x in report.findings)


# --- read-only run folders and a Drive that fills up: a real tmpfs ----------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    "A 32 MB tmpfs (root only; skipped where mounting is not permitted: the injected-fault tests cover the same code)."
    mnt = tmp_path / "drive"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"): pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def read_only(folder):
    "Make `folder` read-only for this process: remount its tmpfs, or chmod when not root."
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    else:
        for p in [folder, *folder.rglob("*")]: p.chmod(p.stat().st_mode & ~0o222)


def test_a_read_only_run_folder(trained, small_data, tmpfs):
    run = copy_run(trained, tmpfs / "run")
    read_only(tmpfs)
    r = cli(*train_args(run, small_data))
    assert r.returncode == 0 and "already trained 3/3 epochs" in r.stdout, r.stderr
    one_line(cli(*train_args(run, small_data, epochs=4)), "cannot write to the run folder", "Read-only file system")
    one_line(cli(*train_args(tmpfs / "new", small_data)), "cannot create the run folder")


def fill(mnt):
    "Fill the file system of `mnt` to the last byte."
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True: os.write(fd, b"\0" * 65536)
    except OSError: pass
    finally: os.close(fd)


def test_drive_fills_up_during_a_run_and_comes_back(trained, small_data, tmpfs, tmp_path):
    run, local, pause = tmpfs / "run", tmp_path / "local", tmp_path / "pause"
    pause.mkdir()
    p = start(train_args(run, small_data, "--fallback-dir", local), pause_env(pause, 2, 3))
    paused(pause, 2, p)
    fill(tmpfs); let_go(pause, 2)                        # Drive is full during epoch 2
    paused(pause, 3, p)
    (tmpfs / "filler").unlink(); let_go(pause, 3)        # and has room again for epoch 3
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert out.count("WARNING: cannot write to the run folder") == 1 and "No space left on device" in out
    assert "the run folder answers again: copied checkpoints/" in out
    log = events(run)
    assert "WARNING: cannot write to the run folder" in log and "saved checkpoints/epoch_002.pt (end of epoch 2) in the fallback folder" in log
    assert epoch_of(run / "checkpoints" / "last.pt") == 3 and len(rows(run)) == 3
    assert not list(local.rglob("*.pt"))                 # everything came back
    assert same_weights(run, trained)                    # and training went on exactly


def test_drive_stays_full_the_session_dies_and_the_next_one_resumes_from_the_fallback(trained, small_data, tmpfs, tmp_path):
    run, local, pause = tmpfs / "run", tmp_path / "local", tmp_path / "pause"
    pause.mkdir()
    p = start(train_args(run, small_data, "--fallback-dir", local), pause_env(pause, 2, 3))
    paused(pause, 2, p)
    fill(tmpfs); let_go(pause, 2)
    paused(pause, 3, p)                                  # epoch 2 is only on the local disk...
    p.kill(); p.wait()                                   # ...when the session dies
    assert epoch_of(run / "checkpoints" / "last.pt") == 1 and list(local.rglob("epoch_002.pt"))
    (tmpfs / "filler").unlink()
    r = run_cli(*train_args(run, small_data, "--fallback-dir", local), env={"HAR_COLAB_RETRY_WAIT": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from " + str(local) in r.stdout and "at epoch 3, step 0" in r.stdout
    assert epoch_of(run / "checkpoints" / "last.pt") == 3 and len(rows(run)) == 3
    assert not list(local.rglob("*.pt"))
    assert same_weights(run, trained)                    # bit for bit the run that never failed


def test_drive_full_without_a_fallback_folder_stops_with_one_line(small_data, tmpfs, tmp_path):
    run, pause = tmpfs / "run", tmp_path / "pause"
    pause.mkdir()
    p = start(train_args(run, small_data, "--fallback-dir", "none"), pause_env(pause, 2))
    paused(pause, 2, p)
    fill(tmpfs); let_go(pause, 2)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err[-3000:]
    assert "No space left on device" in err and "previous checkpoint is intact" in err
    assert epoch_of(run / "checkpoints" / "last.pt") == 1 and not (run / "train.lock").exists()


# --- a Drive that fails, by injected OSErrors (runs everywhere) -------------------------------------------------------

def test_transient_write_errors_are_retried(small_data, tmp_path):
    run = tmp_path / "run"
    r = run_cli(*train_args(run, small_data, "--fallback-dir", tmp_path / "local"),
                env={"HAR_COLAB_FAIL_SAVE": "2-3:ENOTCONN", "HAR_COLAB_RETRY_WAIT": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" not in r.stdout and epoch_of(run / "checkpoints" / "last.pt") == 3
    assert not (tmp_path / "local").exists()


def test_injected_drive_failures_fall_back_and_copy_back(trained, small_data, tmp_path):
    run, local = tmp_path / "run", tmp_path / "local"
    # save 1 (epoch 1) works; save 2 fails 4 times (3 retries), save 3 fails its one try, save 4 finds Drive back
    r = run_cli(*train_args(run, small_data, "--fallback-dir", local, epochs=4),
                env={"HAR_COLAB_FAIL_SAVE": "2-6:EIO", "HAR_COLAB_RETRY_WAIT": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("WARNING: cannot write to the run folder") == 1 and "(EIO)" in r.stdout
    log = events(run)
    assert "in the fallback folder" in log and "the run folder answers again: copied checkpoints/" in log
    assert epoch_of(run / "checkpoints" / "last.pt") == 4 and len(rows(run)) == 4
    assert not list(local.rglob("*.pt"))
    r = run_cli(*train_args(tmp_path / "run2", small_data, "--fallback-dir", "none"),
                env={"HAR_COLAB_FAIL_SAVE": "2-:ESTALE", "HAR_COLAB_RETRY_WAIT": "0"})
    line = one_line(r, "after 4 tries", "ESTALE", "previous checkpoint is intact")
    assert epoch_of(tmp_path / "run2" / "checkpoints" / "last.pt") == 1
