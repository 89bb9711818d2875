"""The benchmark scripts stay runnable: interleaved timing, and a tiny suite run into a temporary results file."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import best_of_interleaved

ROOT = Path(__file__).resolve().parents[1]


def test_best_of_interleaved_times_every_method_in_rounds():
    calls = []
    best = best_of_interleaved(3, {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")})
    assert calls == ["a", "b"] * 4  # one warm-up round, then 3 rounds, alternating
    assert set(best) == {"a", "b"} and all(0 <= t < 1 for t in best.values())


def test_tiny_suite_run_appends_a_result(tmp_path):
    results = tmp_path / "suite.jsonl"
    command = [
        sys.executable, "benchmarks/suite.py", "density=20", "frames=2", "warmup_steps=2", "repeats=1",
        "methods=[engine,plain,bare,reference]", f"results_file={results}", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert set(run["seconds_per_frame"]) == {"engine", "plain", "bare_forward", "reference"}
    assert run["masks_per_frame"] == 16 and run["forward_flops_per_frame"] > 0
    assert run["speedup_vs_reference"]["reference"] == 1.0 and run["incremental_speedup_over_plain"] > 0
