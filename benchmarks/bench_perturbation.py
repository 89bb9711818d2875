"""Engine vs the loop reference on the same frames of a real Pong rollout, and the bare-forward floor.

    python benchmarks/bench_perturbation.py [--frames 8] [--reference-frames 2] [--density 5] [--radius 5]

Prints seconds per frame for the loop reference, the batched engine (default: exact incremental inference),
the engine with plain batched passes (``incremental=False``), and the floor of the plain engine: a bare
forward pass of the agent over the same number of inputs (N * (G*G + 1): every perturbed copy plus the
unperturbed frame) in chunks of the same size. Ratios are all measured in this one run; timings are the
best of ``--repeats`` runs taken in interleaved rounds of engine, plain and bare (the machine is noisy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from engine.core.batching import chunk_bounds
from engine.core.perturbation import perturbation_saliency, resolve_perturbations_per_eval
from engine.core.preprocessing import preprocess_frames
from engine.core.reference import score_frame_np
from engine.env.rollout import rollout
from engine.policies.greydanus2017 import load_agent

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* when run as a script
from benchmarks.common import best_of, best_of_interleaved, machine, measured_peaks, roofline_share  # noqa: E402

DEFAULT_CHECKPOINT = ROOT.parent / "shared" / "checkpoints" / "baby-a3c" / "pong-v4" / "model.40.tar"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--env", default="Pong-v4")
    parser.add_argument("--frames", type=int, default=8, help="frames scored by the engine (one batch)")
    parser.add_argument("--reference-frames", type=int, default=2, help="frames scored by the slow loop")
    parser.add_argument("--density", type=int, default=5)
    parser.add_argument("--radius", type=float, default=5)
    parser.add_argument("--perturbations-per-eval", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "perturbation.json"))
    args = parser.parse_args()

    agent = load_agent(args.checkpoint, device="cpu")
    played = rollout(agent, args.env, 40 + args.frames, seed=0, progress=False)[40:]
    frames, states = played.frames, played.states
    masks = len(range(0, 80, args.density)) ** 2

    def engine(incremental):
        options = dict(radius=args.radius, density=args.density, perturbations_per_eval=args.perturbations_per_eval)
        return lambda: perturbation_saliency(agent, frames, states, incremental=incremental, **options)

    chunk = resolve_perturbations_per_eval(agent, torch.float32, args.frames * masks, args.perturbations_per_eval, None)

    # the floor: the agent alone over the same number of inputs, no masks, blur, gathers or scores
    inputs = preprocess_frames(frames).repeat_interleave(masks + 1, dim=0)
    input_states = tuple(s.repeat_interleave(masks + 1, dim=0) for s in states)

    def bare():
        with torch.inference_mode():
            for start, stop in chunk_bounds(inputs.shape[0], chunk):
                agent(inputs[start:stop], tuple(s[start:stop] for s in input_states))

    # interleaved rounds (warm-up included: mask cache, allocator, oneDNN primitives)
    timings = best_of_interleaved(args.repeats, {"engine": engine("auto"), "engine_plain": engine(False), "bare": bare})
    engine_s, plain_s, bare_s = (timings[name] / args.frames for name in ("engine", "engine_plain", "bare"))

    def reference():
        for t in range(args.reference_frames):
            score_frame_np(agent, frames[t].numpy(), tuple(s[t : t + 1] for s in states), args.radius, args.density)

    reference_s = best_of(1, reference, warmup=False) / args.reference_frames
    # each figure's share of this machine's float32 roofline (engine.core.roofline), with its peaks measured now
    peaks = measured_peaks(torch.device("cpu"))
    shares = {
        name: roofline_share(
            agent, incremental, args.radius, args.density, 1 / s, args.frames, peaks, args.perturbations_per_eval
        )
        for name, incremental, s in (("engine", "auto", engine_s), ("engine_plain", False, plain_s))
    }

    result = dict(
        machine=machine(),
        torch=torch.__version__,
        checkpoint=str(args.checkpoint),
        env=args.env,
        density=args.density,
        radius=args.radius,
        masks_per_frame=masks,
        frames=args.frames,
        reference_frames=args.reference_frames,
        reference_s_per_frame=reference_s,
        perturbations_per_eval=chunk,
        engine_s_per_frame=engine_s,
        engine_plain_s_per_frame=plain_s,
        bare_forward_s_per_frame=bare_s,
        speedup_vs_reference=reference_s / engine_s,
        plain_speedup_vs_reference=reference_s / plain_s,
        plain_over_bare_forward=plain_s / bare_s,
        engine_over_bare_forward=engine_s / bare_s,
        incremental_speedup=plain_s / engine_s,
        peak_flops_per_s=peaks[0],
        peak_bytes_per_s=peaks[1],
        engine_plan=shares["engine"]["plan"],
        engine_roofline_fraction=shares["engine"]["roofline_fraction"],
        engine_plain_roofline_fraction=shares["engine_plain"]["roofline_fraction"],
    )
    print(f"loop reference      : {reference_s:8.4f} s/frame  ({masks + 1} forward passes of one input each)")
    print(
        f"engine              : {engine_s:8.4f} s/frame  ({args.frames} frames x {masks} perturbations, chunks of {chunk}, incremental)"
    )
    print(f"engine, plain passes: {plain_s:8.4f} s/frame  (incremental=False)")
    print(
        f"bare forward        : {bare_s:8.4f} s/frame  (same inputs and chunks, agent only: the plain engine's floor)"
    )
    print(
        f"speed-up vs reference: {result['speedup_vs_reference']:.1f}x (plain passes {result['plain_speedup_vs_reference']:.1f}x); "
        f"plain / bare forward: {result['plain_over_bare_forward']:.3f}; engine / bare forward: {result['engine_over_bare_forward']:.3f}"
    )
    print(
        f"of the float32 roofline ({peaks[0] / 1e9:.0f} GFLOP/s, {peaks[1] / 1e9:.0f} GB/s measured now): engine "
        f"{result['engine_roofline_fraction']:.0%} ({result['engine_plan']}), plain passes "
        f"{result['engine_plain_roofline_fraction']:.0%}"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
