"""`benchmarks/gpu_check.py --device cpu --quick` runs in CI so that the script a lent GPU runs never rots."""
import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.timeout(600)
HERE = Path(__file__).resolve().parents[1]
SCRIPT = next((p for p in (HERE / "benchmarks" / "gpu_check.py", HERE / "gpu_check.py") if p.exists()), None)   # checkout, Colab twin


def test_gpu_check_quick_on_the_cpu(tmp_path, monkeypatch, capsys):
    "The script's main() in this process; its `har-colab` commands through `run_cli`, each its own process as in the script."
    assert SCRIPT is not None, "benchmarks/gpu_check.py is missing"
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(gpu_check, "har", lambda *args, env=None, timeout=600: run_cli(*args, env=env, timeout=timeout))
    out = tmp_path / "gpu_check.md"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)])
    code = gpu_check.main()
    said = capsys.readouterr()
    assert code == 0, said.out[-3000:] + said.err[-3000:]
    md = out.read_text()
    for section in ("### One training step", "### Out-of-memory fallback", "### Out-of-memory inside the optimizer step",
                    "### Killed with SIGKILL and resumed",
                    "### Input pipeline on 2 CPU cores"):
        assert section in md, section
    assert "in the evaluation of best.pt: continuing at batch 1" in md and "eval.json written" in md
    assert "continuing with micro-batch 2 x accumulate 4" in md and "(bit-exact)" in md and "all checks passed" in md
    assert "moments 0 (bit-exact)" in md and "(step 1 fitted): exit 2, one line" in md
