"""Issue 25, items 3 and 4: what a Colab session meets at its start.

A lock left on the run folder by a session whose VM is gone (after a disconnect Colab gives a new VM, so the holder's
process cannot be checked): `fit` in a notebook waits with a countdown until the heartbeat is stale and then resumes
from that session's checkpoint; the CLI refuses with one line saying how long to wait. The waiting's clock is injected
(`RunLock.clock` / `RunLock.sleep`): five minutes of waiting take milliseconds.

A Colab runtime without a GPU ("Open in Colab" lands on a CPU): `fit` stops before anything with one line, the menu path
to a GPU and `device="cpu"` with the cost of an epoch on this CPU; tiny3d, an explicit CPU and other machines go on."""
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from conftest import one_line, run_cli

pytestmark = pytest.mark.timeout(600)

VM_A = {"host": "colab-vm-gone", "boot_id": "another-boot", "pid": 4242, "token": "vm-a", "pid_start": "77",
        "command": "/usr/bin/python3 -m colab_kernel_launcher"}


def config(run, data, **kw):
    from har_colab.train import TrainConfig
    base = dict(run_dir=str(run), data=str(data), model="tiny3d", pretrained=False, hflip=False, epochs=2, batch_size=8,
                lr=5e-4, eval_clips=1, workers=0, progress=False, plot=False, max_steps_per_epoch=2)
    return TrainConfig(**{**base, **kw})


def train_args(run, data, *extra, epochs=1):
    return ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--no-hflip", "--epochs",
            str(epochs), "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "1", "--workers", "0", "--no-progress",
            "--no-plot", "--max-steps-per-epoch", "2", *extra]


def snapshot(run):
    "Every file of the run folder with its bytes (the lock included)."
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(Path(run).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dead_session(small_data, tmp_path_factory):
    "A run folder a session trained 1 epoch in, before its VM went away."
    run = tmp_path_factory.mktemp("dead") / "run"
    r = run_cli(*train_args(run, small_data))
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def left_by_vm_a(dead_session, dest, heartbeat):
    "A copy of the dead session's run folder with the lock its VM left, last beat at `heartbeat`."
    shutil.copytree(dead_session, dest)
    (dest / "train.lock").write_text(json.dumps({**VM_A, "since": heartbeat - 600, "heartbeat": heartbeat}, indent=1))
    return dest


class FakeTime:
    "A clock that only `sleep` moves (from now); `then[n]()` runs at the n-th sleep."
    def __init__(self, then=None): self.t, self.sleeps, self.then = time.time(), [], then or {}
    def now(self): return self.t
    def sleep(self, s):
        self.sleeps.append(s); self.t += s
        if len(self.sleeps) in self.then: self.then[len(self.sleeps)]()


@pytest.fixture
def notebook(monkeypatch):
    "`fit` as in a Colab notebook: a kernel, the lock's clock injected, the countdown lines recorded."
    import har_colab.build, har_colab.checkpoint
    from har_colab.checkpoint import RunLock
    shown = []
    class Recorder:
        def __init__(self): self.closed = None
        def __call__(self, text): shown.append(text)
        def close(self, text=None):
            if text is not None: shown.append(text)
    monkeypatch.setattr(har_colab.build, "in_notebook", lambda: True)
    monkeypatch.setattr(har_colab.checkpoint, "LiveLine", Recorder)
    def use(ft):
        monkeypatch.setattr(RunLock, "clock", staticmethod(ft.now))
        monkeypatch.setattr(RunLock, "sleep", staticmethod(ft.sleep))
        return shown
    return use


# --- item 3: a lock left by a dead session on another VM --------------------------------------------------------------

def test_the_cli_refuses_with_how_long_to_wait_and_writes_nothing(dead_session, small_data, tmp_path):
    run = left_by_vm_a(dead_session, tmp_path / "run", time.time() - 40)
    before = snapshot(run)
    line = one_line(run_cli(*train_args(run, small_data, epochs=2)), f"{run} is in use by process 4242 on host colab-vm-gone",
                    "it counts as dead after 300 s: run again in ", "or use another --run-dir")
    m = re.search(r"its heartbeat is (\d+) s old and it counts as dead after 300 s: run again in (\d+) min (\d+) s", line)
    assert m, line
    age, left = int(m[1]), 60 * int(m[2]) + int(m[3])
    assert 40 <= age < 240 and abs(age + left - 300) <= 1, line
    assert snapshot(run) == before                   # nothing written, the lock left as it was


def test_a_notebook_fit_waits_for_the_dead_vms_lock_then_resumes_from_its_checkpoint(dead_session, small_data, tmp_path,
                                                                                    notebook):
    from har_colab.train import fit
    ft = FakeTime()
    shown = notebook(ft)
    run = left_by_vm_a(dead_session, tmp_path / "run", ft.now() - 40)
    before = snapshot(run)
    def nothing_written_yet():                       # at the 30th sleep (150 s into the wait)
        assert snapshot(run) == before
    ft.then[30] = nothing_written_yet
    res = fit(config(run, small_data))
    assert shown[0] == ("run folder locked by colab-vm-gone pid 4242, heartbeat 40 s ago; taking over in 4:20 unless it "
                        "beats again"), shown[:2]
    assert shown[1].endswith("taking over in 4:15 unless it beats again")
    assert shown[-1] == "the holder's heartbeat is 300 s old (waited 4 min 20 s)"
    assert sum(ft.sleeps) == pytest.approx(260) and len(ft.sleeps) == 52
    log = (run / "events.log").read_text()
    assert "took over the run folder from process 4242 on host colab-vm-gone" in log and "no heartbeat for 5 minutes" in log
    assert "resumed from last.pt at epoch 2" in log
    assert res.status == "completed" and [h["epoch"] for h in res.history] == [1, 2]
    assert not (run / "train.lock").exists()


def test_a_holder_that_beats_again_restarts_the_wait_and_one_that_lets_go_is_followed_at_once(dead_session, small_data,
                                                                                            tmp_path, notebook):
    from har_colab.train import fit
    ft = FakeTime()
    shown = notebook(ft)
    run = left_by_vm_a(dead_session, tmp_path / "run", ft.now() - 40)
    lock = run / "train.lock"
    beat = lambda: lock.write_text(json.dumps({**VM_A, "heartbeat": ft.now()}))
    ft.then.update({6: beat, 20: lock.unlink})       # alive after all (30 s in), then it finishes (100 s in)
    res = fit(config(run, small_data))
    assert shown[6].startswith("run folder locked by colab-vm-gone pid 4242, heartbeat 0 s ago; taking over in 5:00 "
                               "unless it beats again; it beat 1 time while we waited"), shown[5:7]
    assert shown[-1] == "the holder let go of the run folder (waited 1 min 40 s)"
    assert sum(ft.sleeps) == pytest.approx(100)
    log = (run / "events.log").read_text()
    assert "took over" not in log and "resumed from last.pt at epoch 2" in log
    assert [h["epoch"] for h in res.history] == [1, 2]


def test_ctrl_c_while_waiting_stops_with_nothing_written(dead_session, small_data, tmp_path, notebook):
    from har_colab.train import fit
    def ctrl_c(): raise KeyboardInterrupt
    ft = FakeTime({3: ctrl_c})
    shown = notebook(ft)
    run = left_by_vm_a(dead_session, tmp_path / "run", ft.now() - 40)
    before = snapshot(run)
    with pytest.raises(KeyboardInterrupt): fit(config(run, small_data))
    assert snapshot(run) == before and sorted(os.listdir(run)) == sorted(os.listdir(dead_session) + ["train.lock"])
    assert shown[-1].startswith("stopped waiting for") and shown[-1].endswith("(Ctrl-C); nothing was written")


def test_outside_a_notebook_fit_refuses_at_once(dead_session, small_data, tmp_path):
    from har_colab.core import RunFolderError
    from har_colab.train import fit
    run = left_by_vm_a(dead_session, tmp_path / "run", time.time() - 40)
    before = snapshot(run)
    with pytest.raises(RunFolderError, match="it counts as dead after 300 s: run again in 4 min"): fit(config(run, small_data))
    assert snapshot(run) == before


# --- item 4: a Colab runtime without a GPU ----------------------------------------------------------------------------

@pytest.fixture
def colab_cpu(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_fit_in_colab_without_a_gpu_stops_first_with_the_menu_path(small_data, tmp_path, colab_cpu):
    from har_colab.core import ConfigError
    from har_colab.train import fit
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as e: fit(config(run, small_data, model="mc3_18", frames=4))
    line = str(e.value)
    assert "\n" not in line and line.startswith("this Colab runtime has no GPU: Runtime > Change runtime type > T4 GPU, then "
                                                'Run all; or pass device="cpu" to train mc3_18 on the CPU anyway: '), line
    assert re.search(r"(about \d+(\.\d)? (min|h)|under a minute) per epoch on this CPU \(a forward pass of a .* clip took "
                     r"[\d.]+ s here, .*x3 for the backward, x 16 training clips\)$", line), line   # 2 steps x 8 clips
    assert not run.exists()                          # before the run folder, before probing
    res = fit(config(run, small_data, epochs=1, cache="none", fallback_dir="none"))   # tiny3d, the CPU demo model, trains
    assert res.status == "completed"


def test_the_cli_in_colab_without_a_gpu_refuses_in_one_line_and_writes_nothing(small_data, tmp_path):
    run = tmp_path / "run"
    env = {"COLAB_RELEASE_TAG": "test", "CUDA_VISIBLE_DEVICES": ""}
    r = run_cli(*train_args(run, small_data, "--model", "mc3_18", "--frames", "4"), env=env)
    one_line(r, "this Colab runtime has no GPU: Runtime > Change runtime type > T4 GPU, then Run all; or pass --device cpu "
                "to train mc3_18 on the CPU anyway: ", "per epoch on this CPU")
    assert not run.exists()


def test_an_explicit_cpu_or_another_machine_is_not_refused(small_data, monkeypatch):
    from har_colab.build import colab_without_gpu
    from har_colab.config import resolve_config
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = resolve_config(config("unused", small_data, model="mc3_18", frames=4))
    assert colab_without_gpu(cfg) is None            # not in Colab: the CPU is a normal choice
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    assert colab_without_gpu(resolve_config(config("unused", small_data, model="mc3_18", frames=4, device="cpu"))) is None
    assert colab_without_gpu(resolve_config(config("unused", small_data))) is None               # tiny3d
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert colab_without_gpu(cfg) is None            # a GPU runtime


def test_in_a_kernel_the_countdown_is_one_output_updated_in_place(tmp_path):
    "In a real Jupyter kernel (as in Colab) the waiting shows one display output, updated in place, not 52 lines."
    import nbformat
    from nbclient import NotebookClient
    code = f'''import json, time
from pathlib import Path
from har_colab.checkpoint import RunLock
from har_colab.env import in_notebook
t = [time.time()]
lock = RunLock({str(tmp_path)!r})
lock.clock, lock.sleep = (lambda: t[0]), (lambda s: t.__setitem__(0, t[0] + s))
Path({str(tmp_path / "train.lock")!r}).write_text(json.dumps({{**{VM_A!r}, "heartbeat": t[0] - 40}}))
print(in_notebook(), lock.acquire(wait=True).took_over is not None)
lock.release()'''
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outs = nb.cells[0].outputs
    assert [o.output_type for o in outs] == ["display_data", "stream"], outs     # the countdown, then the print
    assert outs[0]["data"]["text/plain"] == "the holder's heartbeat is 300 s old (waited 4 min 20 s)"
    assert outs[1]["text"] == "True True\n"
