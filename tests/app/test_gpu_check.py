"""The GPU check runs end to end on a CPU-only machine too (small sizes), so it stays runnable between the rare
sessions that have a GPU: prepare its data from a short real rollout, run it, and read its results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import checkpoints_env

ROOT = Path(__file__).resolve().parents[2]


def _script(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python args...`` from the repository root; its exit status must be 0 (the output's tail says why not)."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the full check: use benchmarks/gpu/check.sh")
def test_gpu_check_runs_on_the_cpu_and_passes(tmp_path):
    env = {**checkpoints_env(("pong", 40)), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    data, out = tmp_path / "data", tmp_path / "out"
    _script("benchmarks/gpu/prepare.py", str(data), "--steps", "210", "--no-wheels", env=env)
    result = _script("benchmarks/gpu/check.py", "--out", str(out), "--data", str(data), env=env, timeout=900)
    assert "no CUDA here" in result.stdout
    report = json.loads((out / "check.json").read_text())
    names = {c["name"] for c in report["checks"]}
    assert {
        "preprocessing_bytes_device_vs_cpu",
        "float64_vs_loop_reference[gru]",
        "float64_vs_loop_reference[lstm]",
        "chunk_invariance[incremental=True]",
        "jacobian_func_vs_autograd[lstm]",
        "batch_vs_single_rows[gru]",
        "batch_vs_single_rows[lstm]",
    } <= names
    assert all(c["passed"] for c in report["checks"]) and len(report["checks"]) >= 28
    assert {"nature:float64_vs_loop_reference", "nature:device_vs_cpu", "nature:chunk_invariance"} <= names
    # on the CPU the device is the CPU: chunking and device parity are bit for bit
    assert all(
        c["value"] == 0
        for c in report["checks"]
        if c["name"].startswith(("chunk_invariance", "device_vs_cpu", "batch_vs_single_rows"))
    )
    timed = {b["name"]: b for b in report["benchmarks"]}
    assert {
        "engine_d5_r5",
        "loop_reference_d5_r5",
        "jacobian_maps_func",
        "precision_float32",
        "nature:engine_d5_r5",
    } <= set(timed)
    # a figure, not a race: on a loaded 2-core machine the 8 quick frames may not beat one loop-reference frame
    assert timed["engine_d5_r5"]["vs_reference"] > 0 and 0 < timed["precision_float32"]["actor_rel_error"] < 1e-4
    assert (out / "check.md").read_text().startswith("# GPU check: no CUDA")
    # the speed variants (benchmarks/gpu/speed.py), cut short by their time budget: the rows it measured, the
    # variants it skipped, each map compared with float64
    _script(
        *("benchmarks/gpu/speed.py", "--out", str(out), "--data", str(data), "--frames", "1"),
        *("--agents", "baby-a3c_gru", "--budget-s", "1", "--rounds", "1"),
        env=env,
    )
    rows = json.loads((out / "speed.json").read_text())
    first = rows["rows"][0]
    assert (first["agent"], first["variant"], first["plan"]) == ("baby-a3c_gru", "eager", "plain")
    assert 0 < first["actor_rel_error"] < 1e-4 and first["actor_top5_overlap"] == 1.0
    assert "baby-a3c_gru:compile:plain" in rows["skipped"]
    # whether incremental="auto" picks the faster of windows and plain passes (benchmarks/incremental_choice.py)
    _script(
        *("benchmarks/incremental_choice.py", "--out", str(out / "choice.json"), "--data", str(data)),
        *("--agents", "baby-a3c_gru", "--radii", "2,8", "--frames", "1", "--repeats", "1"),
        env=env,
    )
    rows = json.loads((out / "choice.json").read_text())["rows"]
    assert [(r["precision"], r["radius"]) for r in rows] == [("exact", 2), ("exact", 8), ("fast", 2), ("fast", 8)]
    # the 2017 agent's small masks are windowed, its large ones not (the cost estimate, whatever the timings)
    assert [r["auto_runs"] for r in rows] == ["windows", "plain"] * 2
    for r in rows:
        chosen, other = (
            r[f"{r['auto_runs']}_frames_per_s"],
            r[f"{'plain' if r['auto_runs'] == 'windows' else 'windows'}_frames_per_s"],
        )
        assert r["loss"] == round(max(0.0, 1 - chosen / other), 3) and (r["loss"] == 0) == (
            r["faster"] == r["auto_runs"]
        )
    # what the figures say (benchmarks/gpu/verdict.py, check.sh's last step): on a CPU run, shown and not judged
    (out / "choice.json").rename(out / "incremental_choice.json")
    verdict = _script("benchmarks/gpu/verdict.py", str(out), env=env).stdout
    assert "Missing from the results: end_to_end.json" in verdict and "but not judged" in verdict
    assert "Every correctness check passed." in verdict and "| 19 | exact d5 r5, baby-a3c: frames/s |" in verdict
    # this tree against a commit (here itself), side by side (benchmarks/against_commit.py)
    _script(
        *("benchmarks/against_commit.py", "--commit", "HEAD", "--out", str(out / "against.json")),
        *("--data", str(data), "--agents", "baby-a3c", "--variants", "eager", "--frames", "1", "--rounds", "1"),
        env=env,
    )
    against = json.loads((out / "against.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert against["earlier_commit"] == against["this_commit"] == head
    (rates,) = against["rounds"]
    assert set(rates) == {"baby-a3c:earlier:eager", "baby-a3c:this:eager"} and min(rates.values()) > 0
    assert against["vs_earlier"] == {
        "baby-a3c:this:eager": round(rates["baby-a3c:this:eager"] / rates["baby-a3c:earlier:eager"], 3)
    }


def test_end_to_end_benchmark_runs_a_many_games_job_and_reports_its_stages(tmp_path):
    """benchmarks/gpu/end_to_end.py (the GPU script's end-to-end job) at the smallest size on the CPU: two games
    played together and scored, while recorded and then in turn; the stages' rates and the overlapped job's rate
    against scoring alone are reported."""
    _script(
        *("benchmarks/gpu/end_to_end.py", "--out", str(tmp_path)),
        *("--games", "2", "--max-steps", "12", "--chunk-steps", "5"),
    )
    report = json.loads((tmp_path / "end_to_end.json").read_text())
    assert report["device"] == "cpu" and report["games"] == 2 and report["game_lengths"] == [12, 12]
    assert report["frames"] == report["frames_scored"] == 24 and set(report["jobs"]) == {"overlapped", "sequential"}
    for name, job in report["jobs"].items():
        assert job["overlapped"] is (name == "overlapped") and job["frames_scored"] == 24 and job["chunk_steps"] == 5
        assert job["rollout_seconds"] > 0 and job["saliency_seconds"] > 0 and 0 < job["job_vs_own_scoring"] <= 1
    scoring = max(job["scoring_frames_per_s"] for job in report["jobs"].values())
    assert report["job_vs_scoring"] == round(report["jobs"]["overlapped"]["job_frames_per_s"] / scoring, 3)
