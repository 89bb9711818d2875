"""What the GPU check's results say: each benchmark goal of issues 19 and 23 against its figure, and each engine
default that waits on a GPU measurement with the setting the figures favour (a report, not a test).

    python benchmarks/gpu/verdict.py OUT_DIR      # after benchmarks/gpu/check.sh OUT_DIR (check.sh runs it last)

Reads ``check.json``, ``speed.json``, ``incremental_choice.json`` and ``end_to_end.json`` from OUT_DIR (a missing
file is named, and what needs it is left out), writes ``verdict.md`` there and prints it. Only the standard
library: it runs wherever the results are, the GPU machine or here. A decision names the setting, where it lives,
the value today and the value the figures favour, with the figures that decide it; making the change stays a
person's step (the docs quote the figures).

On a run without CUDA the figures are the CPU's small-size ones: the GPU goals and defaults are shown but not judged.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

FILES = ("check.json", "speed.json", "incremental_choice.json", "end_to_end.json")
# "exact" is float32 without TF32: the variants of benchmarks/gpu/speed.py that keep it
EXACT_VARIANTS = ("eager", "cudnn_benchmark", "compile", "compile_cudagraphs", "compile+cudnn_benchmark")
# fast precision's split products on each kernel (engine.core.delta.SPLIT_KERNELS) and the speed variant timing it
SPLIT_KERNEL_VARIANTS = {"torch": "fast", "tf32": "fast_tf32", "triton": "fast_triton"}
FAST_MAX_ERROR = 1e-4  # issue 19: fast mode within 1e-4 of the map max from float64 maps ...
FAST_MIN_OVERLAP = 0.99  # ... and at least 0.99 overlap of the top 5% cells
AMORTISED_FRAMES = 1000  # a compiled variant's first call (its compilation) spread over this many frames
ENOUGH_GAIN = 1.05  # below this speed-up on any agent a default is not worth changing
AUTO_TOLERATED_LOSS = 0.05  # incremental="auto" may run the slower plan by this much before its profile is refitted


@dataclass(frozen=True)
class Goal:
    issue: int
    what: str
    measured: float | None
    threshold: float
    source: str  # the row the figure comes from

    @property
    def met(self) -> bool | None:
        return None if self.measured is None else self.measured >= self.threshold


@dataclass(frozen=True)
class Decision:
    setting: str
    where: str
    today: str
    favoured: str
    evidence: str


def load_results(out: Path) -> tuple[dict[str, dict], list[str]]:
    """The result files found in ``out`` by name, and the names of those missing."""
    found, missing = {}, []
    for name in FILES:
        path = out / name
        if path.is_file():
            found[name] = json.loads(path.read_text())
        else:
            missing.append(name)
    return found, missing


def _timed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "frames_per_s" in r and "error" not in r]


def _accurate(row: dict) -> bool:
    errors = (row["actor_rel_error"], row["critic_rel_error"])
    overlaps = (row["actor_top5_overlap"], row["critic_top5_overlap"])
    return max(errors) <= FAST_MAX_ERROR and min(overlaps) >= FAST_MIN_OVERLAP


def _fastest(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["frames_per_s"], default=None)


def _label(row: dict) -> str:
    return f"{row['agent']} {row['variant']} {row['plan']}"


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def goals(results: dict[str, dict]) -> list[Goal]:
    """Issue 19's GPU goals from speed.json (d5 r5) and issue 23's from end_to_end.json; a goal whose rows are
    missing has no figure."""
    rows = [r for r in _timed(results.get("speed.json", {}).get("rows", [])) if r.get("density", 5) == 5]
    out: list[Goal] = []
    for agent, label, threshold in (
        ("baby-a3c_gru", "baby-a3c", 8000),
        ("cleanrl_ppo_atari", "CleanRL ppo_atari", 6000),
    ):
        best = _fastest([r for r in rows if r["agent"] == agent and r["variant"] in EXACT_VARIANTS])
        source = f"{_label(best)}, {best['frames']} frames" if best else "no exact row"
        out.append(Goal(19, f"exact d5 r5, {label}: frames/s", best and best["frames_per_s"], threshold, source))
        out.append(
            Goal(
                19, f"exact d5 r5, {label}: share of its roofline", best and best.get("roofline_fraction"), 0.5, source
            )
        )
    fast = [r for r in rows if r["agent"] == "baby-a3c_gru" and r["variant"] in SPLIT_KERNEL_VARIANTS.values()]
    best = _fastest([r for r in fast if _accurate(r)])
    source = _label(best) if best else ("no fast row within the accuracy bound" if fast else "no fast row")
    out.append(
        Goal(
            19,
            f"fast d5 r5, baby-a3c: frames/s within {FAST_MAX_ERROR:.0e} of the map max and {FAST_MIN_OVERLAP} top-5% overlap",
            best and best["frames_per_s"],
            25000,
            source,
        )
    )
    end = results.get("end_to_end.json")
    measured = end.get("job_vs_scoring") if end else None
    source = f"{end['games']} games, d{end['density']}, workers {end['workers']}" if end else "no end_to_end.json"
    out.append(Goal(23, "end to end: the job's frames/s over scoring alone", measured, 0.8, source))
    return out


def split_kernel_decision(results: dict[str, dict]) -> Decision:
    """The split products' kernel on CUDA: the fastest against the emulation (geometric mean over the agents and
    plans both were timed on) of the kernels whose maps equal the emulation's (check.json) and stay within fast
    mode's accuracy bound; the emulation where none gains ENOUGH_GAIN."""
    checks = results.get("check.json", {}).get("checks", [])
    rows = [r for r in _timed(results.get("speed.json", {}).get("rows", [])) if r["variant"].startswith("fast")]
    by_kernel = {
        k: {(r["agent"], r["plan"]): r for r in rows if r["variant"] == v} for k, v in SPLIT_KERNEL_VARIANTS.items()
    }
    refused = {}
    for kernel in ("tf32", "triton"):
        failed = [c["name"] for c in checks if c["name"].startswith(f"fast_{kernel}_vs_emulation") and not c["passed"]]
        inaccurate = [_label(r) for r in by_kernel[kernel].values() if not _accurate(r)]
        if failed or inaccurate:
            refused[kernel] = ", ".join(failed + inaccurate)
        elif not any(c["name"].startswith(f"fast_{kernel}_vs_emulation") for c in checks):
            refused[kernel] = "not checked against the emulation"
    speedups, pairs = {}, {}
    for kernel in ("tf32", "triton"):
        shared = set(by_kernel[kernel]) & set(by_kernel["torch"])  # agent/plan pairs timed on both
        if kernel in refused or not shared:
            refused.setdefault(kernel, "not timed beside the emulation")
            continue
        ratios = [by_kernel[kernel][key]["frames_per_s"] / by_kernel["torch"][key]["frames_per_s"] for key in shared]
        speedups[kernel], pairs[kernel] = _geomean(ratios), len(shared)
    favoured = max(speedups, key=lambda k: speedups[k]) if speedups else "torch"
    if speedups.get(favoured, 1.0) < ENOUGH_GAIN:
        favoured = "torch"
    figures = ", ".join(f"{k} {v:.2f}x ({pairs[k]} agent/plan pairs)" for k, v in speedups.items()) or "none"
    refusals = "; ".join(f"{k} refused: {why}" for k, why in refused.items())
    return Decision(
        "fast precision's split kernel on CUDA",
        "engine/core/delta.py (`_split_kernel`, `use_split_kernel`)",
        "torch",
        favoured,
        f"frames/s against the emulation, geometric mean: {figures}" + (f"; {refusals}" if refusals else ""),
    )


def _speedups(rows: list[dict], variants: tuple[str, ...], amortise: bool) -> dict[str, float]:
    """Per agent, the best of ``variants`` against eager on the same plan (worst plan counts), with a first call's
    cost spread over AMORTISED_FRAMES frames when ``amortise``."""

    def seconds(row: dict) -> float:
        return AMORTISED_FRAMES / row["frames_per_s"] + (row["first_call_s"] if amortise else 0.0)

    eager = {(r["agent"], r["plan"]): r for r in rows if r["variant"] == "eager"}
    out: dict[str, float] = {}
    for (agent, plan), base in eager.items():
        tried = [r for r in rows if r["agent"] == agent and r["plan"] == plan and r["variant"] in variants]
        if tried:
            best = max(seconds(base) / seconds(r) for r in tried)
            out[agent] = min(out.get(agent, best), best)
    return out


def exact_path_decisions(results: dict[str, dict]) -> list[Decision]:
    """``saliency.compile`` and cuDNN autotuning on CUDA: worth a default only where every agent gains."""
    rows = _timed(results.get("speed.json", {}).get("rows", []))
    out = []
    for setting, where, variants, amortise in (
        ("saliency.compile on CUDA", "engine/core/settings.py (`compile`)", ("compile", "compile_cudagraphs"), True),
        ("cuDNN autotuning", "engine/core/perturbation.py (not set today)", ("cudnn_benchmark",), False),
    ):
        gains = _speedups(rows, variants, amortise)
        favoured = "on" if gains and min(gains.values()) >= ENOUGH_GAIN else "off"
        note = f", the first call spread over {AMORTISED_FRAMES} frames" if amortise else ""
        figures = ", ".join(f"{a} {g:.2f}x" for a, g in gains.items()) or "not timed"
        out.append(Decision(setting, where, "off", favoured, f"against eager, worst plan per agent{note}: {figures}"))
    return out


def incremental_decisions(results: dict[str, dict]) -> list[Decision]:
    """incremental="auto"'s cost profiles: kept while auto runs the faster plan, or nearly, in every setting."""
    rows = results.get("incremental_choice.json", {}).get("rows", [])
    out = []
    for precision, profile in (("exact", "cuda"), ("fast", "cuda_fast")):
        mine = [r for r in rows if r["precision"] == precision]
        if not mine:
            out.append(Decision(f"incremental='auto', {precision}", "", "", "unmeasured", "no incremental_choice rows"))
            continue
        worst = max(mine, key=lambda r: r["loss"])
        lost = [f"{r['agent']} r{r['radius']:g} ({r['loss']:.0%})" for r in mine if r["loss"] > AUTO_TOLERATED_LOSS]
        out.append(
            Decision(
                f"incremental='auto', {precision}",
                f"engine/core/incremental.py (`PROFILES['{profile}']`)",
                "as is",
                "refit" if lost else "keep",
                f"auto ran the faster plan in {sum(r['loss'] == 0 for r in mine)} of {len(mine)} settings; largest "
                f"loss {worst['loss']:.0%} ({worst['agent']} r{worst['radius']:g})"
                + (f"; over {AUTO_TOLERATED_LOSS:.0%}: {', '.join(lost)}" if lost else ""),
            )
        )
    return out


def num_envs_decision(results: dict[str, dict]) -> Decision:
    """What ``rollout.num_envs`` games can promise on this device: bit-for-bit equality with single-env rollouts
    holds where a row's outputs in a batch equal the row's alone."""
    checks = [
        c for c in results.get("check.json", {}).get("checks", []) if c["name"].startswith("batch_vs_single_rows")
    ]
    if not checks:
        return Decision("rollout.num_envs on CUDA", "docs/stores.md", "", "unmeasured", "no batch_vs_single_rows check")
    exact = all(c["value"] == 0 for c in checks)
    return Decision(
        "rollout.num_envs on CUDA",
        "docs/stores.md (what many games promise)",
        "said for the CPU only",
        "bit for bit, as on the CPU"
        if exact
        else "equal to float rounding: a sampled action can differ from the single-env game",
        "; ".join(f"{c['name']}: {c['value']:.1e} ({c['note']})" for c in checks),
    )


def render(results: dict[str, dict], missing: list[str]) -> str:
    speed_env = results.get("speed.json", {}).get("environment", {})
    check_env = results.get("check.json", {}).get("environment", {})
    job_device = results.get("end_to_end.json", {}).get("device")
    # the run was on a GPU if any of its parts says so (a part that failed early wrote nothing)
    gpu = speed_env.get("gpu") or check_env.get("gpu") or (job_device if job_device not in (None, "cpu") else None)
    device = gpu or speed_env.get("cpu") or check_env.get("cpu") or "unknown"
    judged = gpu is not None
    lines = [f"# What the GPU check's figures say: {device}", ""]
    if missing:
        lines += [f"Missing from the results: {', '.join(missing)} (what needs them is left out).", ""]
    if not judged:
        lines += [
            "No CUDA in this run: the goals and the defaults below are the GPU's, shown with this run's figures but "
            "not judged.",
            "",
        ]
    failed = [c["name"] for c in results.get("check.json", {}).get("checks", []) if not c["passed"]]
    if "check.json" in results:
        lines += [
            f"Correctness checks failed: {', '.join(failed)}" if failed else "Every correctness check passed.",
            "",
        ]
    lines += [
        "## Goals",
        "",
        "| issue | goal | measured | threshold | met | from |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for g in goals(results):
        met = "-" if g.met is None or not judged else ("yes" if g.met else "no")
        value = "-" if g.measured is None else f"{g.measured:,.3g}" if g.measured < 10 else f"{g.measured:,.0f}"
        lines.append(f"| {g.issue} | {g.what} | {value} | {g.threshold:,g} | {met} | {g.source} |")
    decisions = [split_kernel_decision(results), *exact_path_decisions(results), *incremental_decisions(results)]
    decisions.append(num_envs_decision(results))
    lines += ["", "## Defaults waiting on these figures", "", "| setting | where | today | favoured | figures |"]
    lines.append("| --- | --- | --- | --- | --- |")
    lines += [
        f"| {d.setting} | {d.where} | {d.today} | {d.favoured if judged else '- (no CUDA)'} | {d.evidence} |"
        for d in decisions
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder benchmarks/gpu/check.sh wrote")
    args = parser.parse_args()
    if not args.out.is_dir():
        raise SystemExit(f"error: {args.out} is not a folder: give the OUT_DIR of benchmarks/gpu/check.sh")
    results, missing = load_results(args.out)
    if not results:
        raise SystemExit(f"error: none of {', '.join(FILES)} in {args.out}: run benchmarks/gpu/check.sh first")
    text = render(results, missing)
    (args.out / "verdict.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
