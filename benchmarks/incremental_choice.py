"""Whether ``incremental="auto"`` picks the faster of windows and plain passes, for the exact path and for
``precision="fast"`` (a benchmark, not a test).

    python benchmarks/incremental_choice.py --out FILE [--data .gpu_carry] [--agents baby-a3c_gru,builtin_pong_ppo]
                                            [--radii 2,3,5,8] [--frames 16] [--repeats 2]

The windows' cost estimate (:mod:`engine.core.incremental`: one :class:`~engine.core.incremental.CostProfile` per
kind of device) was fitted on the exact path. Fast mode (:mod:`engine.core.delta`) walks the same windows with other
work per layer (two products per linear layer in its arithmetic, the observation's activations gathered beside each
window), so the estimate may choose wrongly there. For each agent (the real recorded frames of
``benchmarks/gpu/prepare.py``), precision and radius (density 5, occlude), this times plain passes
(``incremental=False``) and windows (``incremental=True``) in interleaved rounds (best of ``--repeats``, after a
warm-up) and records what ``"auto"`` would run: ``loss`` is how much slower auto's choice is than the faster of the
two (0 where it chose the faster). Runs on the GPU machine too (the agent on CUDA, float32 without TF32).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import best_of_interleaved, cpu_flags, machine  # noqa: E402
from benchmarks.gpu.speed import load_agents  # noqa: E402
from engine.core.delta import delta_unsupported  # noqa: E402
from engine.core.masks import perturbation_masks  # noqa: E402
from engine.core.perturbation import incremental_plan, perturbation_saliency  # noqa: E402


def measure(agent, frames, states, precision: str, radius: float, density: int, repeats: int, device) -> dict:
    """One row: plain and windowed frames/s, auto's choice, and its loss against the faster."""
    n = len(frames)
    # the masks and plan perturbation_saliency makes for incremental="auto"
    masks = perturbation_masks(radius, density, device, torch.float32, tuple(agent.observation_shape[-2:]))
    fast = precision == "fast" and delta_unsupported(agent) is None
    windows_by_auto = incremental_plan(agent, masks, "auto", fast) is not None

    def run(incremental: bool):
        def call() -> None:
            perturbation_saliency(
                agent, frames, states, radius=radius, density=density, incremental=incremental, precision=precision
            )
            if device.type == "cuda":
                torch.cuda.synchronize()

        return call

    best = best_of_interleaved(repeats, {"plain": run(False), "windows": run(True)})
    rates = {name: round(n / seconds, 2) for name, seconds in best.items()}
    faster = max(rates, key=lambda name: rates[name])
    chosen = "windows" if windows_by_auto else "plain"
    return dict(
        precision=precision,
        radius=radius,
        density=density,
        plain_frames_per_s=rates["plain"],
        windows_frames_per_s=rates["windows"],
        auto_runs=chosen,
        faster=faster,
        loss=round(1 - rates[chosen] / rates[faster], 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="the JSON file to write (after every row)")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu_carry", help="benchmarks/gpu/prepare.py's folder")
    parser.add_argument("--agents", default="baby-a3c_gru,builtin_pong_ppo")
    parser.add_argument("--precisions", default="exact,fast")
    parser.add_argument("--radii", default="2,3,5,8")
    parser.add_argument("--density", type=int, default=5)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    agents = load_agents(args.data, device)
    result: dict = dict(
        machine=machine(),
        cpu_flags=cpu_flags(),
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        frames=args.frames,
        rows=[],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.agents.split(","):
        if name not in agents:
            raise SystemExit(f"unknown agent {name!r}: one of {sorted(agents)}")
        load, frames, states = agents[name]
        agent = load(torch.float32)
        frames, states = frames[: args.frames], tuple(s[: args.frames] for s in states)
        for precision in args.precisions.split(","):
            for radius in (float(r) for r in args.radii.split(",")):
                row = dict(
                    agent=name, **measure(agent, frames, states, precision, radius, args.density, args.repeats, device)
                )
                result["rows"].append(row)
                args.out.write_text(json.dumps(result, indent=1))
                print(
                    f"{name:18s} {precision:5s} r{radius:g}: plain {row['plain_frames_per_s']:8.1f}  windows "
                    f"{row['windows_frames_per_s']:8.1f} frames/s; auto runs {row['auto_runs']} (loss {row['loss']:.0%})",
                    flush=True,
                )
    losses = [row["loss"] for row in result["rows"]]
    print(f"auto chose the faster in {losses.count(0)} of {len(losses)} settings; largest loss {max(losses):.0%}")


if __name__ == "__main__":
    main()
