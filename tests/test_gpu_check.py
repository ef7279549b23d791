"""`benchmarks/gpu_check.py --device cpu --quick` runs in CI so that the script a lent GPU runs never rots."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)
HERE = Path(__file__).resolve().parents[1]
SCRIPT = next((p for p in (HERE / "benchmarks" / "gpu_check.py", HERE / "gpu_check.py") if p.exists()), None)   # checkout, Colab twin


def test_gpu_check_quick_on_the_cpu(tmp_path):
    assert SCRIPT is not None, "benchmarks/gpu_check.py is missing"
    out = tmp_path / "gpu_check.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", out], capture_output=True,
                       text=True, timeout=540)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = out.read_text()
    for section in ("### One training step", "### Out-of-memory fallback", "### Out-of-memory inside the optimizer step",
                    "### Killed with SIGKILL and resumed",
                    "### Input pipeline on 2 CPU cores"):
        assert section in md, section
    assert "in the evaluation of best.pt: continuing at batch 1" in md and "eval.json written" in md
    assert "continuing with micro-batch 2 x accumulate 4" in md and "(bit-exact)" in md and "all checks passed" in md
    assert "moments 0 (bit-exact)" in md and "(step 1 fitted): exit 2, one line" in md
