"""benchmarks/roofline.py stays runnable: one quick CPU run with tiny settings into a temporary result file."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_roofline_benchmark_runs_on_the_cpu(tmp_path):
    out = tmp_path / "roofline.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "roofline.py"),
            "--device",
            "cpu",
            "--frames",
            "1",
            "--repeats",
            "1",
            "--peak-size",
            "256",
            "--copy-mib",
            "16",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["environment"]["device"] == "cpu" and result["environment"]["machine"]
    assert result["peak_flops_per_s"] > 0 and result["peak_bytes_per_s"] > 0
    rows = result["results"]
    assert [(r["agent"].split()[0], r["plan"]) for r in rows] == [
        ("greydanus2017", "plain"),
        ("greydanus2017", "incremental"),
        ("CleanRL", "plain"),
        ("CleanRL", "incremental"),
    ]
    for r in rows:
        assert r["flops_per_input"] > 0 and r["inputs_per_s"] > 0 and 0 < r["roofline_fraction"]
        assert r["layers"][-1]["name"] == "total"
    assert "roofline" in run.stdout
