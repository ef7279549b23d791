"""The tutorial notebooks run end to end in SMOKE mode (synthetic data, tiny3d, CPU) in a kernel that believes it is in
Colab: a stand-in `google.colab` package, Drive "mounted" under a temp folder. Colab killing the runtime is a real
SIGKILL of the kernel while `fit` trains (HAR_COLAB_KILL_AFTER_SAVE: right after the first checkpoint is on disk), then
Run all in a new kernel resumes and finishes; the HMDB51 tutorial ends bit for bit where an uninterrupted run ends, and
a third Run all trains, evaluates and checks nothing again. The install cell's decisions are tested with a fake pip."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from har_colab.plots import TIMING_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "nbs" / "tutorials"
FAKE_COLAB = Path(__file__).resolve().parent / "fake_colab"
NOTEBOOKS = ("colab_hmdb51.ipynb", "compare_models.ipynb", "own_dataset.ipynb")
pytestmark = pytest.mark.timeout(900)


def run_notebook(name, tmp_path, **env):
    "Run all of tutorial `name` in a new kernel; returns (the executed notebook, whether the kernel died)."
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    saved = dict(os.environ)
    os.environ.update(HAR_COLAB_SMOKE="1", COLAB_RELEASE_TAG="test", HAR_COLAB_DRIVE_MOUNT=str(tmp_path / "drive"),
                      HAR_COLAB_LOCAL_ROOT=str(tmp_path / "content"), MPLBACKEND="Agg",
                      PYTHONPATH=os.pathsep.join([str(FAKE_COLAB), str(ROOT)] + ([saved["PYTHONPATH"]] if saved.get("PYTHONPATH") else [])),
                      **env)
    died = False
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    except DeadKernelError:
        died = True
    finally:
        os.environ.clear(); os.environ.update(saved)
    return nb, died


def code_cell(nb, text):
    return next(c for c in nb.cells if c.cell_type == "code" and text in c.source)


def cell_text(cell):
    return "\n".join(o.get("text", "") or "".join(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
                     for o in cell.get("outputs", []))


def outputs(nb):
    return "\n".join(cell_text(c) for c in nb.cells)


def images(cell):
    return [o for o in cell.get("outputs", []) if o.output_type == "display_data" and "image/png" in o.get("data", {})]


def rows(run):
    "metrics.csv without its wall-clock columns."
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(open(Path(run) / "metrics.csv"))]


def killed_in_fit(nb, died, run):
    "The kernel died of the injected SIGKILL while the fit cell ran, right after the first checkpoint reached the run folder."
    assert died, "the kernel did not die: HAR_COLAB_KILL_AFTER_SAVE did not fire"
    fit_cell, after = code_cell(nb, "result = fit(config)"), nb.cells[-1]
    assert fit_cell.get("outputs") and not after.get("outputs"), "the kernel did not die in the fit cell"
    assert "saved checkpoints/" in (run / "events.log").read_text()
    assert not (run / "eval.json").exists()


def reference_run(run, out):
    "The same configuration (RUN/config.json) trained in one go, in a process of its own: the uninterrupted reference."
    code = ("import json, sys; from har_colab.config import config_from_dict; from har_colab.train import fit\n"
            "c = json.load(open(sys.argv[1])); c['run_dir'] = sys.argv[2]\n"
            "r = fit(config_from_dict(c), echo=lambda *a, **k: None); assert r.status == 'completed', r")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
               MPLBACKEND="Agg", HAR_COLAB_LOCAL_ROOT=str(Path(out).parent / "content"))
    r = subprocess.run([sys.executable, "-c", code, str(run / "config.json"), str(out)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(out)


def test_hmdb51_tutorial_killed_run_all_resumes_bit_exact_and_run_all_after_the_end_does_nothing(tmp_path):
    run = tmp_path / "drive" / "MyDrive" / "har_colab" / "runs" / "smoke_hmdb51_tutorial"
    # first session: the doctor checks, fit trains; the kernel is SIGKILLed right after the first checkpoint save
    nb, died = run_notebook("colab_hmdb51.ipynb", tmp_path, HAR_COLAB_KILL_AFTER_SAVE="1")
    killed_in_fit(nb, died, run)
    assert (tmp_path / "drive" / ".mounts").exists()                 # Drive was mounted through google.colab
    doctor_cell = code_cell(nb, "report = doctor(config)")
    assert len(images(doctor_cell)) == 2                             # clips and LR range, inline
    assert (run / "doctor" / "report.json").exists() and "has trained already" not in cell_text(doctor_cell)
    # second session: Run all again, no edits: the doctor shows its stored report, fit resumes from Drive and finishes
    nb, died = run_notebook("colab_hmdb51.ipynb", tmp_path)
    assert not died
    doctor_cell = code_cell(nb, "report = doctor(config)")
    assert "has trained already" in cell_text(doctor_cell) and len(images(doctor_cell)) == 2
    log = (run / "events.log").read_text()
    assert "resumed from" in log and log.count("final evaluation:") == 1
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2]
    assert (run / "curves.png").exists() and (run / "confusion.png").exists() and (run / "probe.json").exists()
    assert "video accuracy" in cell_text(code_cell(nb, "result.evaluation.summary()"))
    fit_cell = code_cell(nb, "result = fit(config)")
    shown = [o for o in fit_cell.outputs if o.output_type in ("display_data", "update_display_data")]
    assert any("image/png" in o.get("data", {}) for o in shown)     # live curves, drawn once per epoch in place
    assert len(images(fit_cell)) == 1
    # ... and ends where a run that was never killed ends: weights and metrics, bit for bit on the CPU
    ref = reference_run(run, tmp_path / "reference")
    assert rows(run) == rows(ref)
    mine, theirs = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (run, ref))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # third Run all on the finished run: nothing trains, nothing is evaluated or checked again; the stored results show
    stamps = {p: p.stat().st_mtime_ns for p in (run / "eval.json", run / "checkpoints" / "last.pt", run / "doctor" / "report.json")}
    nb, died = run_notebook("colab_hmdb51.ipynb", tmp_path)
    assert not died and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (run / "events.log").read_text().count("final evaluation:") == 1
    text = "".join(o.get("text", "") for o in code_cell(nb, "result = fit(config)").outputs if o.output_type == "stream")
    assert "already trained 2/2 epochs" in text and "epochs=3 or more" in text and "--epochs" not in text, text
    assert len(images(code_cell(nb, "result = fit(config)"))) == 1                     # the final curves
    assert "has trained already" in cell_text(code_cell(nb, "report = doctor(config)"))
    evaluation = cell_text(code_cell(nb, "result.evaluation.summary()"))
    assert "video accuracy" in evaluation and "(3 clips per video)" in evaluation
    assert len(images(code_cell(nb, "result.evaluation.summary()"))) == 1             # the confusion matrix


def test_own_dataset_tutorial_killed_then_run_all_finishes(tmp_path):
    run = tmp_path / "drive" / "MyDrive" / "har_colab" / "runs" / "smoke_own_dataset"
    nb, died = run_notebook("own_dataset.ipynb", tmp_path, HAR_COLAB_KILL_AFTER_SAVE="1")
    killed_in_fit(nb, died, run)
    assert len(images(code_cell(nb, "report = doctor(config)"))) == 2
    nb, died = run_notebook("own_dataset.ipynb", tmp_path)
    assert not died and "resumed from" in (run / "events.log").read_text()
    assert "has trained already" in cell_text(code_cell(nb, "report = doctor(config)"))
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2]
    evaluate = code_cell(nb, "result.evaluation.summary()")
    assert "video accuracy" in cell_text(evaluate) and len(images(evaluate)) == 1     # with the confusion matrix


def test_compare_models_tutorial_killed_then_run_all_finishes_the_sweep(tmp_path):
    root = tmp_path / "drive" / "MyDrive" / "har_colab" / "runs" / "smoke_compare_models"
    # first session: killed inside the sweep's first run
    nb, died = run_notebook("compare_models.ipynb", tmp_path, HAR_COLAB_KILL_AFTER_SAVE="1")
    assert died and code_cell(nb, "res = sweep(").get("outputs") and not code_cell(nb, "compare_runs(ws.run_dir)").get("outputs")
    assert "saved checkpoints/" in (root / "tiny3d-seed0" / "events.log").read_text()
    assert not (root / "tiny3d-seed1").exists()
    # second session: Run all again: the sweep resumes run 1, then trains runs 2 and 3
    nb, died = run_notebook("compare_models.ipynb", tmp_path)
    assert not died and "resumed from" in (root / "tiny3d-seed0" / "events.log").read_text()
    table = list(csv.DictReader(open(root / "comparison.csv")))
    assert sorted(r["run"] for r in table) == ["tiny3d-seed0", "tiny3d-seed1", "tiny3d-seed2"]
    assert {r["status"] for r in table} == {"done"} and all(r["val_acc"] for r in table)
    assert [int(r["epoch"]) for r in rows(root / "tiny3d-seed0")] == [1, 2]
    text = outputs(nb)
    assert "val acc" in text and "chosen on validation" in text and "top-1" in text and "parity: max |difference|" in text
    assert "test acc (mean ± sd)" in cell_text(code_cell(nb, "compare_runs(ws.run_dir)"))   # the three seeds, one group
    assert images(code_cell(nb, "compare_runs(ws.run_dir)"))                          # the figure, inline
    best = table[0]["path"]
    assert (Path(best) / "export" / "tiny3d.onnx").exists() and (root / "timeline.png").exists()
    assert all((root / r["run"] / "tensorboard").is_dir() for r in table)


# --- what the notebooks are, without running them ---------------------------------------------------------------------

def load(name): return json.loads((TUTORIALS / name).read_text())


def src(cell): return "".join(cell["source"])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorials_open_on_a_colab_gpu_with_forms_and_one_install_cell(name):
    nb = load(name)
    assert nb["metadata"]["accelerator"] == "GPU" and nb["metadata"]["colab"]["gpuType"] == "T4"
    code = [src(c) for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(s.startswith("# @title ") for s in code), [s.splitlines()[0] for s in code if not s.startswith("# @title ")]
    install = [s for s in code if s.startswith("# @title Install har_colab")]
    assert len(install) == 1 and install[0] == install_cell()                           # the same cell in all three
    params = next(s for s in code if s.startswith("# @title Parameters"))
    assert 'SMOKE = False  # @param {type:"boolean"}' in params and 'os.environ.get("HAR_COLAB_SMOKE") == "1"' in params
    assert 'EPOCHS = ' in params and '# @param {type:"integer"}' in params
    if 'MODEL = ' in params:                                                           # a dropdown of the registry
        from har_colab.models import list_models
        line = next(l for l in params.splitlines() if l.startswith("MODEL = "))
        assert json.loads(line.split("# @param", 1)[1]) == list_models()
    text = "\n".join(src(c) for c in nb["cells"])
    assert "transformers>=5.18" not in text and "Open In Colab" in text and "Before you start" in text


def test_nbdev_clean_keeps_colab_metadata(tmp_path):
    "settings.ini's allowed_metadata_keys: nbdev_clean keeps Colab's accelerator and GPU type, and drops the rest."
    nbdev_clean = Path(sys.executable).parent / "nbdev_clean"
    if not (ROOT / "settings.ini").exists() or not nbdev_clean.exists():
        pytest.skip("the repository's tooling (settings.ini, nbdev) is not here: the Colab twin tests the installed package")
    nb = load("own_dataset.ipynb")
    nb["metadata"]["colab"]["name"] = "own_dataset.ipynb"
    nb["metadata"]["language_info"] = {"name": "python"}
    nb["cells"][0]["metadata"]["id"] = "abc"                                           # what Colab adds to cells
    copy = tmp_path / "own_dataset.ipynb"
    copy.write_text(json.dumps(nb))
    r = subprocess.run([str(nbdev_clean), "--fname", str(copy)], cwd=ROOT,   # settings.ini
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cleaned = json.loads(copy.read_text())
    assert cleaned["metadata"]["accelerator"] == "GPU" and cleaned["metadata"]["colab"]["gpuType"] == "T4"
    assert "language_info" not in cleaned["metadata"] and cleaned["cells"][0]["metadata"] == {}


# --- the install cell with a fake pip ---------------------------------------------------------------------------------

def install_cell():
    return next(src(c) for c in load("colab_hmdb51.ipynb")["cells"] if src(c).startswith("# @title Install"))


class Dist:
    def __init__(self, name, version): self.metadata, self.version = {"Name": name}, version


class Done:
    def __init__(self, returncode, out=""): self.returncode, self.stdout, self.stderr = returncode, out, ""


def run_install(monkeypatch, have_har_colab=True, pip=(), unar=True, apt=None, numpy_after="1.0"):
    "Exec the install cell with fakes: `pip` the return codes of the pip calls in order; returns (calls, printed, error)."
    import importlib.metadata, importlib.util
    calls, pip_codes, real_find = [], list(pip), importlib.util.find_spec
    installed = {"done": False}
    def fake_run(cmd, *a, **k):
        calls.append(cmd)
        if isinstance(cmd, str):                                   # apt-get
            return Done(apt if apt is not None else 0)
        code = pip_codes.pop(0)
        installed["done"] = installed["done"] or code == 0
        return Done(code, f"ERROR: no {cmd[-1]} here")
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "har_colab" and not have_har_colab else real_find(n, *a))
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "unar" and not unar else f"/usr/bin/{n}")
    monkeypatch.setattr(importlib.metadata, "distributions",
                        lambda: [Dist("numpy", numpy_after if installed["done"] else "1.0"), Dist("Har_Colab", "0.1")])
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"numpy": ["numpy"]})
    out, error = io.StringIO(), None
    with redirect_stdout(out):
        try: exec(install_cell(), {})
        except RuntimeError as e: error = str(e)
    return calls, out.getvalue(), error


def test_install_cell_does_nothing_where_har_colab_is_importable(monkeypatch):
    assert run_install(monkeypatch) == ([], "", None)


def test_install_cell_falls_back_to_github_and_asks_for_a_restart_when_pip_changed_an_imported_package(monkeypatch):
    import numpy  # noqa: F401  (imported in this session, as Colab's kernel has it)
    calls, printed, error = run_install(monkeypatch, have_har_colab=False, pip=(1, 0), numpy_after="2.0")
    assert error is None and [c[-1] for c in calls] == ["har_colab[export]", "har_colab[export] @ git+https://github.com/har-colab/har_colab"]
    assert "ERROR" not in printed and "installed har_colab[export] @ git+" in printed
    assert "numpy changed after this session imported it: Runtime > Restart session, then Run all" in printed
    calls, printed, error = run_install(monkeypatch, have_har_colab=False, pip=(0,))   # nothing it had imported changed
    assert len(calls) == 1 and "Restart" not in printed


def test_install_cell_shows_pips_output_when_it_fails(monkeypatch):
    calls, printed, error = run_install(monkeypatch, have_har_colab=False, pip=(1, 1))
    assert error == "har_colab did not install: pip's output is above"
    assert "ERROR: no har_colab[export] here" in printed and "ERROR: no har_colab[export] @ git+" in printed


def test_install_cell_installs_unar_with_apt_and_says_in_one_line_when_it_fails(monkeypatch):
    calls, printed, error = run_install(monkeypatch, unar=False, apt=100)
    assert calls == ["apt-get update -qq && apt-get install -y -qq unar"] and error is None
    assert len(printed.strip().splitlines()) == 1 and printed.startswith("unar did not install (apt-get exit 100")
