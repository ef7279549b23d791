"""The test suite's CLI processes: each fresh interpreter vs forked from a parent that has imported torch (tests/cli_zygote.py).

Runs a test file of the suite as CI does (`pytest -n 2`), alternately with `HAR_COLAB_TEST_FRESH_CLI=1` (every
`har-colab` process and torchrun worker a fresh interpreter) and without it (forked), and writes the wall times and
their ratio to results_tests.md. A CI-time figure, not a product one: what a `har-colab` command costs a user is unchanged."""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def once(target, fresh:bool) -> float:
    env = dict(os.environ)
    env.pop("HAR_COLAB_TEST_FRESH_CLI", None)
    if fresh: env["HAR_COLAB_TEST_FRESH_CLI"] = "1"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", target, "-q", "-m", "not slow", "-n", "2", "-p", "no:cacheprovider"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0: sys.exit(f"{target} failed ({'fresh' if fresh else 'forked'}):\n{r.stdout[-3000:]}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="tests/test_distributed.py", help="the test file (or folder) to time")
    ap.add_argument("--reps", type=int, default=1, help="alternating repetitions of each")
    ap.add_argument("--out", default=str(HERE / "results_tests.md"))
    a = ap.parse_args()
    fresh, forked = [], []
    for _ in range(a.reps):
        fresh.append(once(a.target, True)); forked.append(once(a.target, False))
    f, k = statistics.median(fresh), statistics.median(forked)
    text = (f"# Test suite: fresh CLI processes vs forked ones\n\n"
            f"`pytest {a.target} -n 2`, {os.cpu_count()} CPU cores (shared with other jobs: noisy); median of {a.reps} "
            "alternating repetitions.\n\n"
            "| CLI processes | wall s |\n| --- | ---: |\n"
            f"| fresh interpreters (`HAR_COLAB_TEST_FRESH_CLI=1`) | {f:.1f} |\n| forked (tests/cli_zygote.py, cli_client.py) | {k:.1f} |\n\n"
            f"Forked / fresh: {k / f:.2f} ({f - k:.0f} s less). Each fresh `har-colab` process spends 5 to 7 s of CPU importing "
            "torch, torch._dynamo, matplotlib and har_colab before it does anything; a forked one starts after them.\n")
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
