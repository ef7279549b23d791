"""Issue 16: `predict` on new videos (a file, a folder, an unreadable file, a long video in windows) gives the same video
accuracy as `eval` on the run's own validation videos; `export` writes TorchScript and ONNX with a parity check, and
refuses in one line what cannot be exported."""
import csv
import importlib
import importlib.util
import json
import re
import sys

import numpy as np
import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def run(small_data, tmp_path_factory):
    "A trained tiny3d run (one epoch), without TensorBoard."
    run = tmp_path_factory.mktemp("predict") / "run"
    r = run_cli("train", "--run-dir", run, "--data", small_data, "--model", "tiny3d", "--no-pretrained", "--no-hflip",
                "--epochs", "1", "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "2", "--no-progress", "--no-plot",
                "--no-tensorboard")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (run / "tensorboard").exists()                      # --no-tensorboard
    return run


def test_predict_a_video_a_folder_and_an_unreadable_file(run, small_data, tmp_path):
    junk = tmp_path / "junk.mp4"; junk.write_bytes(b"not a video")
    out = tmp_path / "p.csv"
    r = run_cli("predict", "--run-dir", run, small_data / "left" / "left_000.mp4", small_data / "up", junk, "--topk", "3",
                "--csv", out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 1 + 14 + 1 and [r_["error"] == "" for r_ in rows].count(False) == 1
    assert rows[-1]["path"] == str(junk) and "cannot decode" in rows[-1]["error"]
    good = rows[0]
    assert good["label"] in ("down", "left", "right", "up") and len(good["topk"].split(";")) == 3
    assert abs(float(good["prob"]) - float(good["topk"].split(";")[0].split(":")[1])) < 1e-4
    assert "error: cannot decode" in r.stdout and "left_000.mp4" in r.stdout
    # nothing predictable: exit 2, one line, no traceback
    r = run_cli("predict", "--run-dir", run, junk, tmp_path / "missing.mp4", tmp_path)
    ours = [l for l in r.stderr.splitlines() if l.startswith("har-colab")]    # (FFmpeg also writes to stderr)
    assert r.returncode == 2 and len(ours) == 1 and "could be predicted" in ours[0] and "Traceback" not in r.stderr


def test_predict_a_long_video_in_windows(run, tmp_path):
    from har_colab.synthetic import render_motion_video, write_video
    rng = np.random.default_rng(1)
    frames = np.concatenate([render_motion_video(rng, d, 50, (64, 64), 4) for d in (0, 1, 2)])   # 6 s at 25 fps
    write_video(tmp_path / "long.mp4", frames, fps=25)
    r = run_cli("predict", "--run-dir", run, tmp_path / "long.mp4", "--window", "2", "--csv", tmp_path / "w.csv")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "w.csv")))
    assert [(float(x["start_s"]), float(x["end_s"])) for x in rows] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert (tmp_path / "w_timeline.png").stat().st_size > 1000 and "wrote" in r.stdout


def test_predicting_the_validation_videos_gives_evals_video_accuracy(run):
    from har_colab.build import load_run
    from har_colab.predict import predict
    r = run_cli("eval", "--run-dir", run, "--clips", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    from har_colab.train import read_eval
    ev = read_eval(json.loads((run / "eval.json").read_text()), "folder")
    assert (ev["reported_on"], ev["chosen_on"], ev["test"]) == ("val", "val", None)   # no test set: validation is reported
    ev = ev["val"]
    saved = load_run(run)
    pred = predict(run, saved.val.paths, clips=3, workers=0)   # in this process (the CLI tests predict with workers)
    hits = [row["label"] == saved.class_names[y] for row, y in zip(pred.rows, saved.val.labels)]
    assert len(hits) == len(saved.val) and not pred.errors
    assert np.mean(hits) == ev["video_acc"]
    for c, acc in ev["per_class"].items():
        mine = [h for h, y in zip(hits, saved.val.labels) if saved.class_names[y] == c]
        assert np.mean(mine) == acc, c


def parity(stdout):
    return float(re.search(r"max \|difference\| ([0-9.e+-]+)", stdout).group(1))


def check_exports(run, batch_shape, classes):
    "Both formats from the CLI: parity under 1e-4, the files load and take any batch size, the spec JSON beside them."
    # the Colab twin installs the wheel without the [export] extra: TorchScript is checked there, ONNX only here
    onnxruntime = importlib.util.find_spec("onnxruntime") and importlib.import_module("onnxruntime")
    for fmt, ext in (("torchscript", ".pt"), ("onnx", ".onnx"))[: 2 if onnxruntime else 1]:
        r = run_cli("export", "--run-dir", run, "--format", fmt)
        assert r.returncode == 0, r.stderr[-3000:]
        assert parity(r.stdout) < 1e-4 and "2 clips of" in r.stdout
        model_name = json.loads((run / "config.json").read_text())["model"]
        path = run / "export" / (model_name + ext)
        spec = json.loads(path.with_name(path.name + ".json").read_text())
        assert spec["format"] == fmt and spec["input"]["shape"][1:] == list(batch_shape[1:]) and spec["class_names"] == classes
        assert spec["parity"]["max_abs_diff"] < 1e-4
        x = torch.randn(batch_shape)
        if fmt == "torchscript": out = torch.jit.load(str(path))(x)
        else: out = torch.from_numpy(onnxruntime.InferenceSession(str(path)).run(None, {"clips": x.numpy()})[0])
        assert tuple(out.shape) == (batch_shape[0], len(classes))
    if not onnxruntime: pytest.skip("ONNX half: onnxruntime is not installed (pip install 'har_colab[export]')")


def test_export_tiny3d_both_formats(run):
    check_exports(run, (3, 3, 8, 56, 56), ["down", "left", "right", "up"])


def test_export_r3d18_both_formats_and_x3d_refuses_torchscript(small_data, tmp_path):
    def quick_run(model, *extra):
        r = run_cli("train", "--run-dir", tmp_path / model, "--data", small_data, "--model", model, "--no-pretrained",
                    "--epochs", "1", "--batch-size", "2", "--max-steps-per-epoch", "1", "--eval-clips", "1",
                    "--val-fraction", "0.1", "--workers", "0", "--no-progress", "--no-plot", "--no-tensorboard", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        return tmp_path / model
    check_exports(quick_run("r3d_18", "--frames", "4"), (1, 3, 4, 112, 112), ["down", "left", "right", "up"])   # (4: less CPU)
    # an X3D run's checkpoint (its weights as created: training it on the CPU would only cost time)
    from har_colab.checkpoint import RunFolder, save_checkpoint
    from har_colab.config import TrainConfig
    from har_colab.models import create_model
    x3d = tmp_path / "x3d_xs"
    cfg = TrainConfig(run_dir=str(x3d), data=str(small_data), model="x3d_xs", pretrained=False, epochs=1)
    save_checkpoint({"format_version": 1, "model": create_model("x3d_xs", 4, pretrained=False).state_dict(), "optimizer": {},
                     "scheduler": {}, "scaler": {}, "epoch": 1, "step_in_epoch": 0, "global_step": 1, "rng": {}, "history": [],
                     "config": cfg.to_dict(), "class_names": ["down", "left", "right", "up"], "model_name": "x3d_xs"},
                    RunFolder(x3d).mkdir().best)
    r = run_cli("export", "--run-dir", x3d, "--format", "torchscript")
    ours = [l for l in r.stderr.splitlines() if l.startswith("har-colab")]    # (importing pytorchvideo warns on stderr)
    assert r.returncode == 2 and len(ours) == 1 and "Traceback" not in r.stderr
    assert "pytorchvideo issue #210" in ours[0] and "--format onnx" in ours[0]
    assert not (x3d / "export" / "x3d_xs.pt").exists()


def test_onnx_export_without_the_extra_names_it(run, monkeypatch):
    from har_colab.core import HarError
    from har_colab.predict import export
    monkeypatch.setitem(sys.modules, "onnxruntime", None)           # as if it were not installed
    with pytest.raises(HarError, match=r"onnxruntime: pip install 'har_colab\[export\]'"):
        export(run, "onnx")


# --- out of memory (issue 26): eval, predict and export's parity check halve their batch, with the same results ---

def test_eval_predict_and_export_halve_their_batch_on_out_of_memory_with_the_same_results(run, tmp_path, monkeypatch):
    from har_colab.build import load_run
    from har_colab.predict import export, predict
    from har_colab.train import evaluate_run
    ref = evaluate_run(run, workers=0, device="cpu", batch_size=8, echo=None)
    said = []
    monkeypatch.setenv("HAR_COLAB_OOM_EVAL_ABOVE", "2")             # every evaluation pass of more than 2 clips
    got = evaluate_run(run, workers=0, device="cpu", batch_size=8, echo=said.append)
    assert said == ["out of memory at batch 8 in the evaluation of best.pt: continuing at batch 4",
                    "out of memory at batch 4 in the evaluation of best.pt: continuing at batch 2"]
    for k in ("acc", "video_acc"): assert got.metrics[k] == ref.metrics[k], k
    assert abs(got.metrics["loss"] - ref.metrics["loss"]) <= 1e-6 * ref.metrics["loss"]
    assert got.confusion == ref.confusion
    paths = load_run(run).val.paths[:3]
    monkeypatch.delenv("HAR_COLAB_OOM_EVAL_ABOVE")
    a = predict(run, paths, clips=3, workers=0, device="cpu")
    monkeypatch.setenv("HAR_COLAB_OOM_EVAL_ABOVE", "1")             # a video's 3 clips: one at a time
    said.clear()
    b = predict(run, paths, clips=3, workers=0, device="cpu", echo=said.append)
    assert said == ["out of memory at batch 3 in the prediction: continuing at batch 1"]
    assert [r["label"] for r in a.rows] == [r["label"] for r in b.rows]
    assert all(torch.allclose(x["probs"], y["probs"], atol=1e-6) for x, y in zip(a.rows, b.rows))
    res = export(run, "torchscript", out=tmp_path / "m.pt")          # the parity check of 2 clips, one at a time
    assert res.max_diff < 1e-4 and (tmp_path / "m.pt").exists()


def one_line(r, *words):
    ours = [l for l in r.stderr.splitlines() if l.startswith("har-colab")]
    assert r.returncode == 2 and len(ours) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert all(w in ours[0] for w in words), ours[0]


def test_out_of_memory_at_batch_1_is_one_line_in_eval_predict_and_export(run, small_data, tmp_path):
    oom = {"HAR_COLAB_OOM_EVAL_ABOVE": "0"}                          # not even one clip fits
    before = (run / "eval.json").read_bytes()
    r = run_cli("eval", "--run-dir", run, "--workers", "0", env=oom)
    one_line(r, "out of GPU memory in the evaluation of best.pt even at batch 1", "--device cpu")
    assert (run / "eval.json").read_bytes() == before                 # nothing written
    r = run_cli("predict", "--run-dir", run, small_data / "left" / "left_000.mp4", env=oom)
    one_line(r, "out of GPU memory in the prediction even at batch 1", "--device cpu")
    r = run_cli("export", "--run-dir", run, "--format", "torchscript", "--out", tmp_path / "m.pt", env=oom)
    one_line(r, "out of GPU memory in the parity check of the export even at batch 1")
    assert not (tmp_path / "m.pt").exists()


def test_validation_and_final_evaluation_halve_on_out_of_memory_with_the_same_numbers(run, small_data, tmp_path):
    "The run of the `run` fixture again, its evaluation passes out of memory above 2 clips: the same numbers, a line each."
    got = tmp_path / "run"
    r = run_cli("train", "--run-dir", got, "--data", small_data, "--model", "tiny3d", "--no-pretrained", "--no-hflip",
                "--epochs", "1", "--batch-size", "8", "--lr", "5e-4", "--eval-clips", "2", "--no-progress", "--no-plot",
                "--no-tensorboard", env={"HAR_COLAB_OOM_EVAL_ABOVE": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    log = (got / "events.log").read_text()
    assert "out of memory at batch 8 in the validation of epoch 1: continuing at batch 4" in log, log
    assert "out of memory at batch 8 in the evaluation of best.pt: continuing at batch 4" in log, log
    a, b = (list(csv.DictReader(open(d / "metrics.csv")))[-1] for d in (run, got))
    for k in ("train_loss", "val_acc", "val_video_acc"): assert a[k] == b[k], k     # training untouched
    assert abs(float(a["val_loss"]) - float(b["val_loss"])) <= 1e-6 * float(a["val_loss"])
    from har_colab.train import evaluate_run, read_eval
    ea = evaluate_run(run, clips=2, workers=0, device="cpu", echo=None).metrics   # the fixture's final evaluation, again
    eb = read_eval(json.loads((got / "eval.json").read_text()), "folder")["reported"]
    assert eb["clips"] == 2 and (ea["acc"], ea["video_acc"]) == (eb["acc"], eb["video_acc"])
    assert abs(ea["loss"] - eb["loss"]) <= 1e-6 * ea["loss"]
