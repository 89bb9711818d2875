"""benchmarks/gpu/verdict.py reads the GPU check's results and says which goals they meet and which defaults they
favour: checked on hand-made results whose answers are worked out here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import verdict

ROOT = Path(__file__).resolve().parents[2]
ACCURATE = dict(actor_rel_error=2e-5, critic_rel_error=1e-5, actor_top5_overlap=1.0, critic_top5_overlap=0.999)


def row(agent, variant, plan, fps, first_call_s=0.5, **extra):
    return (
        dict(
            agent=agent,
            variant=variant,
            plan=plan,
            frames_per_s=fps,
            first_call_s=first_call_s,
            frames=256,
            density=5,
            **ACCURATE,
        )
        | extra
    )


def check(name, value, passed, note=""):
    return dict(name=name, value=value, threshold=1e-5, passed=passed, note=note)


@pytest.fixture
def results() -> dict:
    baby, clean = "baby-a3c_gru", "cleanrl_ppo_atari"
    return {
        "speed.json": dict(
            environment=dict(gpu="NVIDIA H100 80GB HBM3"),
            rows=[
                row(baby, "eager", "plain", 2000),
                row(baby, "eager", "incremental", 3000),
                # 1.5x per frame, but 30 s of compiling is worth 90,000 frames at 3,000 frames/s: off
                row(baby, "compile", "incremental", 9000, first_call_s=30, roofline_fraction=0.55),
                row(baby, "cudnn_benchmark", "plain", 2200),
                row(baby, "cudnn_benchmark", "incremental", 3600),  # 1.2x; plain 1.1x: the worse plan counts
                row(baby, "tf32", "plain", 12000, actor_rel_error=6e-4),  # faster, not exact: no goal counts it
                row(baby, "fast", "incremental", 10000),
                row(baby, "fast_tf32", "incremental", 40000),  # fastest, but its check failed
                row(baby, "fast_triton", "incremental", 30000),
                row(baby, "fast_triton", "plain", 26000, actor_rel_error=3e-4),  # outside the bound: no goal
                row(baby, "fast", "plain", 13000),
                row(clean, "eager", "plain", 5000, roofline_fraction=0.4),
                row(clean, "cudnn_benchmark", "plain", 5100),  # 1.02x: too little for a default
                row(clean, "fast", "plain", 6000),
                row(clean, "fast_triton", "plain", 12000),
                dict(agent=clean, variant="compile", plan="plain", error="RuntimeError: no compiler"),
            ],
        ),
        "check.json": dict(
            environment=dict(gpu="NVIDIA H100 80GB HBM3"),
            checks=[
                check("fast_tf32_vs_emulation[gru]", 3e-3, False),
                check("fast_triton_vs_emulation[gru]", 2e-7, True),
                check("batch_vs_single_rows[gru]", 0.0, True, "0 of 32 rows differ in some bit"),
                check("batch_vs_single_rows[lstm]", 3e-7, True, "5 of 32 rows differ in some bit"),
            ],
        ),
        "incremental_choice.json": dict(
            rows=[
                dict(agent=baby, precision="exact", radius=2.0, loss=0.0),
                dict(agent=baby, precision="exact", radius=8.0, loss=0.02),
                dict(agent=baby, precision="fast", radius=2.0, loss=0.0),
                dict(agent=baby, precision="fast", radius=5.0, loss=0.12),
            ]
        ),
        "end_to_end.json": dict(device="NVIDIA H100 80GB HBM3", games=50, density=5, workers=8, job_vs_scoring=0.85),
    }


def test_goals_take_the_fastest_row_that_counts_for_each(results):
    got = {(g.issue, g.what.split(":")[0], g.what.split(":")[1][:6]): g for g in verdict.goals(results)}
    baby_rate = got[(19, "exact d5 r5, baby-a3c", " frame")]
    assert (baby_rate.measured, baby_rate.met) == (9000, True)  # compile's rate, not tf32's 12,000
    assert got[(19, "exact d5 r5, baby-a3c", " share")].measured == 0.55
    clean = got[(19, "exact d5 r5, CleanRL ppo_atari", " frame")]
    assert (clean.measured, clean.met) == (5100, False)
    assert got[(19, "exact d5 r5, CleanRL ppo_atari", " share")].measured is None  # cudnn's row has no roofline
    fast = got[(19, "fast d5 r5, baby-a3c", " frame")]
    # fast_tf32's 40,000 is within the bound here (its check is the kernel decision's business), plain triton is not
    assert (fast.measured, fast.met, fast.source) == (40000, True, "baby-a3c_gru fast_tf32 incremental")
    assert (got[(23, "end to end", " the j")].measured, got[(23, "end to end", " the j")].met) == (0.85, True)


def test_split_kernel_is_the_fastest_that_matches_the_emulation(results):
    d = verdict.split_kernel_decision(results)
    # triton: 30000/10000 on baby-a3c incremental and 12000/6000 on CleanRL plain (plain baby-a3c is inaccurate)
    assert d.favoured == "torch"  # triton's inaccurate plain row refuses it, tf32's failed check refuses it
    assert "tf32 refused: fast_tf32_vs_emulation[gru]" in d.evidence and "triton refused" in d.evidence
    results["speed.json"]["rows"] = [r for r in results["speed.json"]["rows"] if r.get("actor_rel_error") != 3e-4]
    d = verdict.split_kernel_decision(results)
    assert d.favoured == "triton" and f"triton {(3.0 * 2.0) ** 0.5:.2f}x (2 agent/plan pairs)" in d.evidence


def test_a_kernel_never_checked_against_the_emulation_is_not_favoured(results):
    results["check.json"]["checks"] = [c for c in results["check.json"]["checks"] if "triton" not in c["name"]]
    results["speed.json"]["rows"] = [r for r in results["speed.json"]["rows"] if r.get("actor_rel_error") != 3e-4]
    d = verdict.split_kernel_decision(results)
    assert d.favoured == "torch" and "triton refused: not checked against the emulation" in d.evidence


def test_compile_and_autotuning_need_a_gain_on_every_agent(results):
    compile_, cudnn = verdict.exact_path_decisions(results)
    # compile: (1000/3000 + 0.5) / (1000/9000 + 30) = 0.0277 on baby-a3c incremental (CleanRL's compile failed)
    assert compile_.favoured == "off" and "baby-a3c_gru 0.03x" in compile_.evidence
    # cuDNN: baby-a3c 1.10x (plain; 1.20x incremental), CleanRL 1.02x: below 1.05 on one agent
    assert (
        cudnn.favoured == "off"
        and "baby-a3c_gru 1.10x" in cudnn.evidence
        and "cleanrl_ppo_atari 1.02x" in cudnn.evidence
    )
    for r in results["speed.json"]["rows"]:
        if r["variant"] == "compile":
            r["first_call_s"] = 0.1  # (1000/3000 + 0.5) / (1000/9000 + 0.1) = 3.95
    results["speed.json"]["rows"] = [r for r in results["speed.json"]["rows"] if r["agent"] == "baby-a3c_gru"]
    compile_, cudnn = verdict.exact_path_decisions(results)
    assert compile_.favoured == "on" and "baby-a3c_gru 3.95x" in compile_.evidence
    assert cudnn.favoured == "on"


def test_auto_profiles_are_refitted_only_where_auto_lost_more_than_the_tolerance(results):
    exact, fast = verdict.incremental_decisions(results)
    assert (exact.favoured, fast.favoured) == ("keep", "refit")
    assert "PROFILES['cuda_fast']" in fast.where and "baby-a3c_gru r5 (12%)" in fast.evidence


def test_num_envs_promise_follows_the_batch_check(results):
    assert verdict.num_envs_decision(results).favoured.startswith("equal to float rounding")
    for c in results["check.json"]["checks"]:
        c["value"] = 0.0
    assert verdict.num_envs_decision(results).favoured == "bit for bit, as on the CPU"


def test_cpu_results_are_shown_not_judged_and_missing_files_are_named(results, tmp_path):
    del results["end_to_end.json"]
    results["speed.json"]["environment"] = results["check.json"]["environment"] = dict(cpu="Intel(R) Xeon(R) Processor")
    for name, content in results.items():
        (tmp_path / name).write_text(json.dumps(content))
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu/verdict.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "verdict.md").read_text()
    assert text == out.stdout
    assert "Missing from the results: end_to_end.json" in text and "but not judged" in text
    assert "| yes |" not in text and "| no |" not in text
    # a CPU's figures favour no GPU default: every row of the defaults table says so
    defaults = text.split("## Defaults waiting on these figures")[1].strip().splitlines()[2:]
    assert len(defaults) == 6 and all("| - (no CUDA) |" in row for row in defaults)
    assert "Correctness checks failed: fast_tf32_vs_emulation[gru]" in text


def test_a_gpu_run_whose_speed_part_wrote_nothing_is_still_judged_as_the_gpus(results):
    """speed.py may fail before its first save: check.json (or the end-to-end job) still says the run had a GPU."""
    del results["speed.json"]
    text = verdict.render(results, ["speed.json"])
    assert text.startswith("# What the GPU check's figures say: NVIDIA H100 80GB HBM3")
    assert "not judged" not in text and "| 23 | end to end" in text and "| yes |" in text
    results["end_to_end.json"]["device"] = "cpu"
    assert "not judged" not in verdict.render(results, ["speed.json"])  # check.json alone says so
    del results["check.json"]["environment"]
    assert "not judged" in verdict.render(results, ["speed.json"])


def test_an_empty_folder_is_refused_with_what_to_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu/verdict.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 1 and "run benchmarks/gpu/check.sh first" in out.stderr
