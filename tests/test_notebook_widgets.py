"""Progress bars and live curves in a real kernel, on the ipywidgets the environment has: 8.1 in the dev venv, Colab's
7.7.1 in the Colab twin (.ci/colab_image.txt), whose front end renders widgets 7. The training loop's bar
(`ProgressCallback`, through tqdm.auto) is a widget, updated and closed without a warning; the curves
(`PlotCallback`) are drawn once and then updated in place (IPython's display ids: IPython 7.34 in Colab)."""
import base64
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
WIDGET = "application/vnd.jupyter.widget-view+json"

CODE = """
import json, warnings
from types import SimpleNamespace as NS
import IPython, ipywidgets, tqdm
from tqdm.notebook import tqdm_notebook
from har_colab.callbacks import PlotCallback, ProgressCallback, in_notebook
from har_colab.checkpoint import RunFolder
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    cb = ProgressCallback()
    t = NS(steps_per_epoch=3, step_in_epoch=0, epoch=0, cfg=NS(epochs=1, batch_size=2), last_loss=0.5)
    cb.before_epoch(t)
    bar = cb.bar
    for _ in range(3): cb.after_step(t)
    bar.refresh()                                    # the bar redraws at most every 0.1 s: now, for the test
    shown = [bar.n, bar.container.children[1].value, bar.container.children[2].value]   # count, progress widget, its text
    cb.after_train(t)
rows = [dict(epoch=e, train_loss=1.0 / e, train_acc=0.5, val_loss=1.0 / e, val_acc=0.5, val_video_acc=0.5, lr=1e-3,
             epoch_seconds=1.0, train_seconds=0.8, val_seconds=0.2, data_wait_seconds=0.1) for e in (1, 2)]
t = NS(history=rows[:1], num_classes=2, cfg=NS(model="tiny3d"), run=RunFolder(RUN_DIR).mkdir())
pc = PlotCallback()
pc.after_validate(t)
t.history = rows
pc.after_validate(t)
print(json.dumps(dict(ipywidgets=ipywidgets.__version__, tqdm=tqdm.__version__, ipython=IPython.__version__,
                      in_notebook=in_notebook(), widget_bar=isinstance(bar, tqdm_notebook), shown=shown, closed=cb.bar is None,
                      warnings=[f"{w.category.__name__}: {w.message}" for w in caught           # what a user would see
                                if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))])))
"""


def test_progress_bar_and_curves_in_a_kernel(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"RUN_DIR = {str(tmp_path / 'run')!r}\n" + CODE)])
    env = dict(os.environ)
    os.environ.update(MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear(); os.environ.update(env)
    outs = nb.cells[0].outputs
    got = json.loads([o for o in outs if o.output_type == "stream" and o.name == "stdout"][-1].text.strip().splitlines()[-1])
    assert got["ipywidgets"].split(".")[0] in ("7", "8"), got
    assert got["in_notebook"] and got["widget_bar"], got                 # tqdm.auto chose the widget bar
    n, value, text = got["shown"]
    assert n == value == 3 and "loss=0.500" in text and got["closed"], got
    assert not got["warnings"], got                                        # e.g. tqdm's "IProgress not found"
    widgets = [o for o in outs if o.output_type == "display_data" and WIDGET in o.get("data", {})]
    assert len(widgets) == 1, outs                                         # the bar, as a widget view
    models = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    assert widgets[0]["data"][WIDGET]["model_id"] in models                # the kernel sent the widget's state
    pngs = [o for o in outs if o.output_type in ("display_data", "update_display_data") and "image/png" in o.get("data", {})]
    assert len(pngs) == 1, [o.output_type for o in outs]                  # one figure: nbclient applies the update in place
    png = base64.b64decode(pngs[0]["data"]["image/png"])
    assert png == (tmp_path / "run" / "curves.png").read_bytes()           # the second epoch's curves, not the first's
    assert not [o for o in outs if o.output_type == "error"], outs
