"The doctor on a healthy synthetic setup, on classic mistakes planted one at a time, and through the CLI."
import shutil

import pytest
import torch

from conftest import run_cli
from har_colab.datasets import Samples
from har_colab.doctor import DoctorCallback, doctor, check_input_stats, check_layout
from har_colab.train import TrainConfig, build_samples, resolve_config



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from har_colab.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(tmp_path_factory.mktemp("doc") / "motion", classes=8, videos_per_class=12, frames=16)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(data, run, **kw):
    return TrainConfig(data=str(data), run_dir=str(run), model="tiny3d", pretrained=False, hflip=False, workers=0, **kw)


def bad(report):
    return {f.name: f.status for f in report.findings if f.status != "pass"}


def test_healthy_passes_every_check(data, tmp_path):
    r = doctor(config(data, tmp_path / "run"))
    print(r)
    assert r.exit_code == 0, str(r)
    assert bad(r) == {}, str(r)
    names = {f.name for f in r.findings}
    assert {"class counts", "leakage", "labels", "decoding", "label consistency", "layout", "input statistics",
            "frames change in time", "trainable parameters", "initial loss", "gradients", "learning rate",
            "overfit one batch"} <= names
    for f in ("clips.png", "lr_range.png", "report.txt"):
        assert (tmp_path / "run" / "doctor" / f).stat().st_size > 0
    assert "<table>" in r._repr_html_()


def test_normalisation_off_by_255(data, tmp_path):
    r = doctor(config(data, tmp_path), checks=("input", "model"), transform_override=lambda x: x * 255)
    f = r["input statistics"]
    assert f.status == "fail" and "255" in f.evidence and r.exit_code == 1


def test_layout_TCHW(data, tmp_path):
    r = doctor(config(data, tmp_path), checks=("input", "model"), transform_override=lambda x: x.permute(0, 2, 1, 3, 4))
    assert r["layout"].status == "fail" and "permute(0, 2, 1, 3, 4)" in r["layout"].advice
    assert "model" in r.skipped and r.exit_code == 1


def test_lr_100x_too_high(data, tmp_path):
    r = doctor(config(data, tmp_path, lr=0.3), checks=("optimisation",))
    assert r["learning rate"].status == "warn", str(r)
    assert r["overfit one batch"].status in ("pass", "fail")
    if r["overfit one batch"].status == "fail": assert "learning rate" in r["overfit one batch"].advice


def test_everything_frozen(data, tmp_path):
    r = doctor(config(data, tmp_path, freeze="all"), checks=("model", "optimisation"))
    assert r["trainable parameters"].status == "fail" and r["gradients"].status == "fail"
    assert r["overfit one batch"].status == "fail" and "trainable parameters" in r["overfit one batch"].advice


def test_label_noise(data, tmp_path):
    "Half the videos get their labels permuted among themselves: overfitting a batch still works; label consistency warns."
    cfg = resolve_config(config(data, tmp_path))
    train, val = build_samples(cfg)
    g = torch.Generator().manual_seed(0)
    def noisy(s):
        labels = torch.tensor(s.labels); idx = torch.randperm(len(labels), generator=g)[:len(labels) // 2]
        labels[idx] = labels[idx][torch.randperm(len(idx), generator=g)]
        return Samples(s.paths, labels.tolist(), s.class_names, s.groups, s.root)
    r = doctor(cfg, checks=("data",), samples_override=(noisy(train), noisy(val)))
    assert r["label consistency"].status == "warn", str(r)


def test_class_missing_from_training(data, tmp_path):
    cfg = resolve_config(config(data, tmp_path))
    train, val = build_samples(cfg)
    train = train.select([i for i, l in enumerate(train.labels) if l != 3])
    r = doctor(cfg, checks=("data",), samples_override=(train, val))
    assert r["class counts"].status == "fail" and train.class_names[3] in r["class counts"].evidence


def test_video_in_both_splits(data, tmp_path):
    cfg = resolve_config(config(data, tmp_path))
    train, val = build_samples(cfg)
    copy = tmp_path / "renamed_copy.mp4"; shutil.copy(train.paths[0], copy)
    val = Samples(val.paths + [str(copy)], val.labels + [train.labels[0]], val.class_names)
    r = doctor(cfg, checks=("data",), samples_override=(train, val))
    assert r["leakage"].status == "fail" and "renamed_copy" in r["leakage"].evidence


def test_lower_level_checks_take_broken_pieces():
    x = torch.randn(2, 3, 8, 56, 56)
    assert check_input_stats(x).status == "pass" and check_input_stats(x * 255).status == "fail"
    assert check_layout(x.permute(0, 2, 1, 3, 4)).status == "fail"


def test_history_of_a_run_folder(data, tmp_path):
    run = tmp_path / "run"; run.mkdir()
    rows = ["epoch,train_loss,train_acc,val_loss,val_acc,val_video_acc,lr,epoch_seconds"]
    rows += [f"{e},{2.0 - 0.5*e},{0.1 + 0.25*e},2.1,0.12,0.12,0.003,1.0" for e in range(1, 5)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    r = doctor(config(data, run), run_dir=run, checks=("training",))
    assert r["train vs val"].status == "warn"


def test_callback_warns_to_events_log_and_stops_on_nan(tmp_path):
    from har_colab.checkpoint import RunFolder
    class T:
        history, num_classes, last_loss, stop = [], 8, 1.0, None
        run = RunFolder(tmp_path)
        said = []
        def echo(self, m): self.said.append(m)
        def request_stop(self, reason): self.stop = reason
    t, cb = T(), DoctorCallback(patience=3)
    for e in range(1, 4):
        t.history.append(dict(epoch=e, train_loss=2.08, train_acc=0.12, val_loss=2.08, val_acc=0.12)); cb.after_validate(t)
    assert {f.name for f in cb.warnings} == {"val accuracy vs chance", "train loss falls"}
    assert "val accuracy vs chance" in (tmp_path / "events.log").read_text() and len(t.said) == 2
    t.last_loss = float("nan"); cb.after_step(t)
    assert t.stop == "loss became NaN" and "loss finite" in (tmp_path / "events.log").read_text()


def cli(*args, **env):
    return run_cli("doctor", *args, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}, timeout=600)


def test_cli_exit_codes(data, tmp_path):
    base = ["--model", "tiny3d", "--no-pretrained", "--no-hflip", "--workers", "0"]
    ok = cli("--data", data, *base, "--run-dir", tmp_path / "ok")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "doctor: 0 fail" in ok.stdout and "overfit one batch" in ok.stdout
    frozen = cli("--data", data, *base, "--freeze", "all", "--run-dir", tmp_path / "frozen")
    assert frozen.returncode == 1, frozen.stdout + frozen.stderr
    assert "FAIL" in frozen.stdout
    missing = cli("--data", tmp_path / "nowhere", *base, "--run-dir", tmp_path / "m")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr


def test_out_of_memory_in_the_doctor_halves_its_batch_and_says_so(data, tmp_path, monkeypatch):
    "Issue 26: the doctor's model checks, LR range test and overfit check run in pieces that fit; the report names the batch."
    monkeypatch.setenv("HAR_COLAB_OOM_ABOVE", "2")                  # every pass of more than 2 clips runs out of memory
    said = []
    r = doctor(config(data, tmp_path / "run"), checks=("model", "optimisation"), lr_steps=12, overfit_steps=30, echo=said.append)
    assert "model forward" not in r, str(r)                          # not a shape problem
    for name in ("initial loss", "gradients", "learning rate", "overfit one batch"):
        assert "in pieces of 2 clips (batch 8 ran out of GPU memory)" in r[name].evidence, (name, str(r))
    assert "out of memory at batch 8 in the doctor's model checks: continuing at batch 4" in said, said


def test_out_of_memory_at_batch_1_in_the_doctor_is_one_line(data, tmp_path):
    base = ["--model", "tiny3d", "--no-pretrained", "--no-hflip", "--workers", "0"]
    r = cli("--data", data, *base, "--run-dir", tmp_path / "run", HAR_COLAB_OOM_ABOVE="0")
    ours = [l for l in r.stderr.splitlines() if l.startswith("har-colab")]
    assert r.returncode == 2 and len(ours) == 1 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert "out of GPU memory in the doctor's model checks even at batch 1" in ours[0] and "--frames" in ours[0], ours[0]
    assert "model forward" not in r.stdout
