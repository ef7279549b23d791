"""The tutorial notebooks run end to end in SMOKE mode (synthetic data, tiny3d, CPU) in a kernel that believes it is in
Colab: a stand-in `google.colab` package, Drive "mounted" under a temp folder. Re-running the notebook resumes."""
import csv
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"
pytestmark = pytest.mark.timeout(900)


def run_notebook(name, tmp_path, **env):
    nb = nbformat.read(ROOT / "nbs" / "tutorials" / name, as_version=4)
    saved = dict(os.environ)
    os.environ.update(HAR_COLAB_SMOKE="1", COLAB_RELEASE_TAG="test", HAR_COLAB_DRIVE_MOUNT=str(tmp_path / "drive"),
                      HAR_COLAB_LOCAL_ROOT=str(tmp_path / "content"), MPLBACKEND="Agg",
                      PYTHONPATH=os.pathsep.join([str(FAKE_COLAB), str(ROOT)] + ([saved["PYTHONPATH"]] if saved.get("PYTHONPATH") else [])),
                      **env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear(); os.environ.update(saved)
    return nb


def outputs(nb):
    text = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            text.append(o.get("text", "") or "".join(str(v) for v in o.get("data", {}).values()))
    return "\n".join(text)


def test_hmdb51_tutorial_runs_and_resumes_after_a_killed_session(tmp_path):
    run = tmp_path / "drive" / "MyDrive" / "har_colab" / "runs" / "smoke_hmdb51_tutorial"
    # first session: the time budget stands in for Colab killing the runtime mid-training
    nb = run_notebook("colab_hmdb51.ipynb", tmp_path, HAR_COLAB_SMOKE_BUDGET="0.0001")
    assert (tmp_path / "drive" / ".mounts").exists()                 # Drive was mounted through google.colab
    assert "stopped because the time budget" in (run / "events.log").read_text()
    assert (run / "doctor").is_dir()                                  # the doctor ran before training
    # second session: Run all again, no edits: it resumes from Drive and finishes
    nb = run_notebook("colab_hmdb51.ipynb", tmp_path)
    log = (run / "events.log").read_text()
    assert "resumed from" in log
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert (run / "curves.png").exists() and (run / "confusion.png").exists()
    assert "video accuracy" in outputs(nb)
    fit_cell = next(c for c in nb.cells if c.cell_type == "code" and "result = fit(config)" in c.source)
    shown = [o for o in fit_cell.outputs if o.output_type in ("display_data", "update_display_data")]
    assert any("image/png" in o.get("data", {}) for o in shown)     # live curves, drawn once per epoch in place
    assert len([o for o in shown if o.output_type == "display_data" and "image/png" in o.get("data", {})]) == 1


def fit_outputs(nb):
    cell = next(c for c in nb.cells if c.cell_type == "code" and "result = fit(config)" in c.source)
    return cell.outputs


def test_own_dataset_tutorial_runs(tmp_path):
    nb = run_notebook("own_dataset.ipynb", tmp_path)
    run = tmp_path / "drive" / "MyDrive" / "har_colab" / "runs" / "smoke_own_dataset"
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 2
    assert "video accuracy" in outputs(nb)
    # Run all again on the finished run: nothing trains, the final curves show, the hint speaks Python
    nb = run_notebook("own_dataset.ipynb", tmp_path)
    shown = fit_outputs(nb)
    text = "".join(o.get("text", "") for o in shown if o.output_type == "stream")
    assert "already trained 2/2 epochs" in text and "epochs=3 or more" in text and "--epochs" not in text, text
    assert any("image/png" in o.get("data", {}) for o in shown if o.output_type == "display_data")
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 2


def test_compare_models_tutorial_runs_a_sweep_over_two_sessions(tmp_path):
    root = tmp_path / "drive" / "MyDrive" / "har_colab" / "runs" / "smoke_compare_models"
    # first session: the time budget ends it inside the first run
    nb = run_notebook("compare_models.ipynb", tmp_path, HAR_COLAB_SMOKE_BUDGET="0.0001")
    assert "stopped because the time budget" in (root / "tiny3d-seed0" / "events.log").read_text()
    assert not (root / "tiny3d-seed1").exists() and "sweep stopped" in outputs(nb)
    # second session: Run all again: the sweep resumes run 1, then trains runs 2 and 3
    nb = run_notebook("compare_models.ipynb", tmp_path)
    assert "resumed from" in (root / "tiny3d-seed0" / "events.log").read_text()
    rows = list(csv.DictReader(open(root / "comparison.csv")))
    assert sorted(r["run"] for r in rows) == ["tiny3d-seed0", "tiny3d-seed1", "tiny3d-seed2"]
    assert {r["status"] for r in rows} == {"done"} and all(r["final_video_acc"] for r in rows)
    text = outputs(nb)
    assert "final video acc" in text and "top-1" in text and "parity: max |difference|" in text
    compare_cell = next(c for c in nb.cells if c.cell_type == "code" and "compare_runs(ws.run_dir)" in c.source)
    assert any("image/png" in o.get("data", {}) for o in compare_cell.outputs)       # the figure, inline
    best = rows[0]["path"]
    assert (Path(best) / "export" / "tiny3d.onnx").exists() and (root / "timeline.png").exists()
    assert all((root / r["run"] / "tensorboard").is_dir() for r in rows)
