"""How close the engine gets to the roofline on this device (issue 19, item 1; a benchmark, not a test).

    python benchmarks/roofline.py [--frames 4] [--radius 5] [--density 5] [--repeats 3] [--peak-size 4096]
                                  [--copy-mib 1024] [--out benchmarks/results/roofline_<device>.json]

On the device it runs on (CUDA if there is one, else the CPU) it measures the peaks in the same run: FLOP/s of
a large float32 matrix product with TF32 off, and bytes/s of a large device copy (read + write). Then it times
``engine.perturbation_saliency`` (plain and incremental, float32, TF32 off) on ``--frames`` observations of zeros
plus noise (the cost of a pass does not depend on the pixels) for two agents with random weights: the 2017
agent (``ActorCritic(6, "gru")``, 1x80x80) and CleanRL's PPO-LSTM network
(``engine.policies.cleanrl.CleanRLPPOLSTM(6, channels=1)``, 1x84x84; no gymnasium needed, so it runs in the GPU
machines' bare Python, from ``benchmarks/gpu/check.sh``). For each agent and plan it prints the FLOPs and bytes per
perturbed input from :func:`engine.core.roofline.roofline` (weights read once per forward pass of the engine's perturbations per
pass), the intensity, the achieved perturbed inputs/s and frames/s, and the fraction of the roofline bound
``min(peak FLOP/s, intensity * peak bytes/s)``; it writes the result as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* when run as a script
from benchmarks.common import best_seconds, cpu_flags, machine, peak_bandwidth, peak_flops  # noqa: E402
from benchmarks.gpu.check import set_tf32  # noqa: E402
from engine.core.masks import perturbation_masks  # noqa: E402
from engine.core.perturbation import perturbation_saliency, resolve_perturbations_per_eval  # noqa: E402
from engine.core.roofline import roofline, roofline_fraction  # noqa: E402
from engine.policies.cleanrl import CleanRLPPOLSTM  # noqa: E402
from engine.policies.greydanus2017 import ActorCritic  # noqa: E402


def observations(shape: tuple[int, int, int], frames: int, seed: int = 0) -> np.ndarray:
    """Zeros plus noise: uint8 (frames, C, H, W), mostly 0 with a few bright pixels."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (frames, *shape))
    return np.where(rng.random((frames, *shape)) < 0.05, noise, 0).astype(np.uint8)


def environment(device: torch.device) -> dict:
    env = dict(
        machine=machine(),
        cpu_flags=cpu_flags(),
        python=platform.python_version(),
        torch=torch.__version__,
        device=device.type,
        cpu_threads=torch.get_num_threads(),
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4, help="observations per engine call")
    parser.add_argument("--radius", type=float, default=5)
    parser.add_argument("--density", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-size", type=int, default=None, help="matrix side for FLOP/s (4096 CUDA, 1024 CPU)")
    parser.add_argument("--copy-mib", type=int, default=None, help="MiB copied for bytes/s (1024 CUDA, 256 CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if there is one)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    out = args.out or ROOT / "benchmarks" / "results" / f"roofline_{device.type}.json"
    set_tf32(False)
    torch.manual_seed(0)
    env = environment(device)
    print(json.dumps(env), flush=True)
    flops_peak = peak_flops(device, args.peak_size or (4096 if cuda else 1024), args.repeats)
    bandwidth_peak = peak_bandwidth(device, args.copy_mib or (1024 if cuda else 256), args.repeats)
    print(f"peaks: {flops_peak / 1e9:.1f} GFLOP/s (float32 matmul, TF32 off), {bandwidth_peak / 1e9:.1f} GB/s (copy)")
    torch.manual_seed(0)
    agents = {
        "greydanus2017 ActorCritic(6, gru)": ActorCritic(6, "gru"),
        "CleanRL ppo_atari_lstm (6 actions)": CleanRLPPOLSTM(6, channels=1),
    }
    rows = []
    header = (
        f"{'agent':<38} {'plan':<11} {'MFLOP/in':>9} {'KB/in':>8} {'FLOP/B':>7} {'inputs/s':>10} "
        f"{'frames/s':>9} {'roofline':>8}"
    )
    print(header)
    for label, agent in agents.items():
        agent = agent.to(device).eval()
        shape = tuple(agent.observation_shape)
        obs = observations(shape, args.frames)
        states = agent.initial_state(args.frames)
        masks = perturbation_masks(args.radius, args.density, device, torch.float32, shape[1:]).shape[0]
        chunk = resolve_perturbations_per_eval(agent, torch.float32, args.frames * masks, None, None)
        for plan in ("plain", "incremental"):
            table = roofline(agent, plan, args.radius, args.density, batch=chunk, device=device)
            seconds = best_seconds(
                lambda plan=plan: perturbation_saliency(
                    agent, obs, states, radius=args.radius, density=args.density, incremental=plan == "incremental"
                ),
                device,
                args.repeats,
            )
            inputs_per_s = args.frames * masks / seconds
            fraction = roofline_fraction(inputs_per_s, table, flops_peak, bandwidth_peak)
            row = dict(
                agent=label,
                plan=plan,
                observation_shape=list(shape),
                masks_per_frame=masks,
                perturbations_per_eval=chunk,
                windowed_layers=table.stop,
                flops_per_input=table.flops,
                bytes_per_input=table.bytes,
                intensity=table.intensity,
                bound_flops_per_s=table.bound(flops_peak, bandwidth_peak),
                seconds=seconds,
                inputs_per_s=inputs_per_s,
                frames_per_s=args.frames / seconds,
                roofline_fraction=fraction,
                layers=table.rows(),
            )
            rows.append(row)
            print(
                f"{label:<38} {plan:<11} {table.flops / 1e6:>9.2f} {table.bytes / 1e3:>8.1f} {table.intensity:>7.1f} "
                f"{inputs_per_s:>10.0f} {args.frames / seconds:>9.1f} {fraction:>8.1%}",
                flush=True,
            )
    result = dict(
        environment=env,
        settings=dict(frames=args.frames, radius=args.radius, density=args.density, repeats=args.repeats),
        peak_flops_per_s=flops_peak,
        peak_bytes_per_s=bandwidth_peak,
        note="inputs are perturbed copies (frames x masks); the unperturbed pass per frame is not counted",
        results=rows,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
