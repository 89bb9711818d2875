"""A Nature-CNN agent on 4 stacked 84x84 frames: the engine against the loop reference, and exact incremental
inference against plain batched passes (issue 11, item 7; a benchmark, not a test).

    python benchmarks/bench_any_agent.py [--frames 8] [--reference-frames 2] [--density 5] [--radii 3 5]
                                         [--repeats 5] [--output results.json]

The agent is CleanRL's ``ppo_atari`` network (``tests/integration/test_any_policy.py``'s ``NatureAgent``: conv 8x8/4, 4x4/2,
3x3/1, ReLU, Linear(3136, 512), actor and critic heads; feed-forward, 6 actions), with seeded random weights, on
seeded smooth random observations (4, 84, 84): the cost of a forward pass does not depend on the weights or the
pixels. For each radius it prints seconds per observation for

- the loop reference (``engine.core.reference.score_frame_np``: numpy/scipy masks, one forward pass per
  perturbation, on ``--reference-frames`` observations),
- the engine with default settings (``incremental="auto"``: the cost estimate picks windows or plain passes),
- the engine with plain batched passes (``incremental=False``),
- the engine with exact incremental inference forced (``incremental=True``),

the last three on ``--frames`` observations in one call, timed in interleaved rounds (best of ``--repeats``,
after a warm-up round) because shared machines have slow phases; then the ratios and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* and tests.* when run as a script
from benchmarks.common import best_of, best_of_interleaved, machine  # noqa: E402
from engine.core.incremental import conv_trunk_of, trunk_geometry, window_plan, worthwhile  # noqa: E402
from engine.core.masks import perturbation_masks  # noqa: E402
from engine.core.perturbation import perturbation_saliency, resolve_perturbations_per_eval  # noqa: E402
from engine.core.reference import score_frame_np  # noqa: E402
from tests.integration.test_any_policy import NatureAgent  # noqa: E402


def observations(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 observations (n, 4, 84, 84), the channels of a stack differing slightly."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 21, 21)).repeat(4, axis=2).repeat(4, axis=3)
    return np.clip(base + rng.integers(-20, 21, (n, 4, 84, 84)), 0, 255).astype(np.uint8)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="observations scored by the engine (one call)")
    parser.add_argument("--reference-frames", type=int, default=2, help="observations scored by the slow loop")
    parser.add_argument("--density", type=int, default=5)
    parser.add_argument("--radii", type=float, nargs="+", default=[3, 5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args()

    torch.manual_seed(0)
    agent = NatureAgent(recurrent=False, channels=4, num_actions=6).eval()
    obs = observations(args.frames)
    states = ()
    geometry = trunk_geometry(agent, conv_trunk_of(agent))
    masks_per_frame = len(range(0, 84, args.density)) ** 2
    chunk = resolve_perturbations_per_eval(agent, torch.float32, args.frames * masks_per_frame, None, None)
    result = dict(
        machine=machine(),
        torch=torch.__version__,
        agent="NatureAgent (CleanRL ppo_atari network, seeded), 4x84x84, 6 actions",
        density=args.density,
        masks_per_frame=masks_per_frame,
        frames=args.frames,
        reference_frames=args.reference_frames,
        perturbations_per_eval=chunk,
        radii={},
    )
    print(
        f"{result['agent']}; density {args.density} ({masks_per_frame} masks per observation); {result['machine']}; torch {torch.__version__}"
    )
    for radius in args.radii:
        plan = window_plan(geometry, perturbation_masks(radius, args.density, size=(84, 84)))

        def engine(incremental, radius=radius):
            return lambda: perturbation_saliency(
                agent, obs, states, radius=radius, density=args.density, incremental=incremental
            )

        plain, windows = engine(False)(), engine(True)()
        error = float((windows.actor_scores - plain.actor_scores).abs().max() / plain.actor_scores.abs().max())
        timings = best_of_interleaved(
            args.repeats, {"auto": engine("auto"), "plain": engine(False), "incremental": engine(True)}
        )
        auto_s, plain_s, incremental_s = (timings[name] / args.frames for name in ("auto", "plain", "incremental"))

        def reference(radius=radius):
            for t in range(args.reference_frames):
                score_frame_np(agent, obs[t], states, radius, args.density)

        reference_s = best_of(1, reference, warmup=False) / args.reference_frames
        row = dict(
            reference_s_per_frame=reference_s,
            engine_s_per_frame=auto_s,
            plain_s_per_frame=plain_s,
            incremental_s_per_frame=incremental_s,
            engine_speedup_vs_reference=reference_s / auto_s,
            plain_speedup_vs_reference=reference_s / plain_s,
            incremental_speedup_vs_reference=reference_s / incremental_s,
            incremental_over_plain_speedup=plain_s / incremental_s,
            auto_uses_windows=worthwhile(plan),
            windows=dict(
                structure=plan.structure,
                estimated_cost_vs_plain=plan.cost / plan.plain,
                regions=[s.region for s in plan.segments],
            ),
            incremental_vs_plain_max_relative_error=error,
        )
        result["radii"][str(radius)] = row
        print(f"radius {radius:g}:")
        print(
            f"  loop reference          : {reference_s:8.4f} s/frame  ({masks_per_frame + 1} forward passes of one input each)"
        )
        print(
            f"  engine (auto: {'windows' if row['auto_uses_windows'] else 'plain':7s}): {auto_s:8.4f} s/frame  ({reference_s / auto_s:.1f}x the loop)"
        )
        print(f"  engine, plain passes    : {plain_s:8.4f} s/frame  ({reference_s / plain_s:.1f}x the loop)")
        print(
            f"  engine, incremental     : {incremental_s:8.4f} s/frame  ({reference_s / incremental_s:.1f}x the loop; "
            f"{plain_s / incremental_s:.2f}x the plain engine; windows {plan.structure}, estimated cost "
            f"{plan.cost / plan.plain:.2f} of plain; scores within {error:.1e} of plain)"
        )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
