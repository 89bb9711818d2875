"""The benchmark suite: engine vs loop reference vs peers, the forward floor, FLOPs, Jacobian and precision.

    python benchmarks/suite.py                         # one run with conf/suite.yaml
    python benchmarks/suite.py -m density=1,2,5,10     # a sweep; each run appends a line to results/suite.jsonl
    python benchmarks/report.py                        # table and plot from results/suite.jsonl

All timings of one run are measured in that run, on the same real frames, states and agent, as seconds per
frame (best of ``repeats``; engine, plain, bare forward and Jacobian in interleaved rounds, so that a slow
phase of this shared machine hits them alike); ratios are against the loop reference and the engine of the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* when run as a script
from benchmarks.common import best_of, best_of_interleaved, machine, measured_peaks, roofline_share  # noqa: E402

DEFAULT_CHECKPOINT = ROOT.parent / "shared" / "checkpoints" / "baby-a3c" / "pong-v4" / "model.40.tar"
# fp32 peaks for derived floors (dense, no tensor cores): what a GPU user can compare against
GPU_FP32_TFLOPS = {"A100": 19.5, "H100 SXM": 67.0, "RTX 4090": 82.6}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@hydra.main(version_base="1.3", config_path="conf", config_name="suite")
def main(cfg: DictConfig) -> None:
    from engine.core.batching import chunk_bounds
    from engine.core.jacobian import jacobian_saliency
    from engine.core.perturbation import perturbation_saliency, resolve_perturbations_per_eval
    from engine.core.preprocessing import preprocess_frames
    from engine.core.reference import score_frame_np
    from engine.env.rollout import rollout
    from engine.policies.greydanus2017 import load_agent

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    dtype = getattr(torch, cfg.dtype)
    agent = load_agent(cfg.checkpoint or DEFAULT_CHECKPOINT, device="cpu", dtype=dtype)
    played = rollout(agent, cfg.env, cfg.warmup_steps + cfg.frames, seed=cfg.seed, progress=False)[cfg.warmup_steps :]
    frames, states = played.frames, tuple(s.to(dtype) for s in played.states)
    masks = len(range(0, 80, cfg.density)) ** 2
    chunk = resolve_perturbations_per_eval(agent, dtype, cfg.frames * masks, cfg.perturbations_per_eval, None)
    options = dict(
        radius=cfg.radius, density=cfg.density, interp=cfg.interp, perturbations_per_eval=cfg.perturbations_per_eval
    )
    methods = set(cfg.methods)
    n, k = cfg.frames, cfg.reference_frames
    seconds: dict[str, float] = {}

    x = preprocess_frames(frames, dtype=dtype)
    inputs = x.repeat_interleave(masks + 1, dim=0)
    input_states = tuple(s.repeat_interleave(masks + 1, dim=0) for s in states)

    def bare():
        with torch.inference_mode():
            for a, b in chunk_bounds(inputs.shape[0], chunk):
                agent(inputs[a:b], tuple(s[a:b] for s in input_states))

    # the fast methods are timed in interleaved rounds: their ratios are what the suite reports
    fast = {
        "engine": lambda: perturbation_saliency(agent, frames, states, **options),
        "plain": lambda: perturbation_saliency(agent, frames, states, incremental=False, **options),
        "bare": bare,
        "jacobian": lambda: jacobian_saliency(agent, frames, states),
    }
    timed = best_of_interleaved(cfg.repeats, {m: fn for m, fn in fast.items() if m in methods})
    seconds.update({("bare_forward" if m == "bare" else m): t / n for m, t in timed.items()})
    one = lambda t: tuple(s[t : t + 1] for s in states)  # noqa: E731
    if "reference" in methods:
        seconds["reference"] = (
            best_of(
                1,
                warmup=False,
                fn=lambda: [
                    score_frame_np(agent, frames[t].numpy(), one(t), cfg.radius, cfg.density, cfg.interp)
                    for t in range(k)
                ],
            )
            / k
        )
    if "xaitk" in methods:
        from benchmarks.peers import xaitk_saliency_map

        images = [x[t, 0].float().numpy() for t in range(k)]
        seconds["xaitk"] = (
            best_of(
                1,
                fn=lambda: [
                    xaitk_saliency_map(agent, images[t], one(t), cfg.radius, cfg.density, chunk) for t in range(k)
                ],
            )
            / k
        )
    if "captum" in methods:
        from benchmarks.peers import captum_saliency_map

        seconds["captum"] = (
            best_of(
                1, fn=lambda: [captum_saliency_map(agent, x[t : t + 1], one(t), cfg.density, chunk) for t in range(k)]
            )
            / k
        )

    result = dict(
        machine=machine(),
        torch=torch.__version__,
        density=cfg.density,
        radius=cfg.radius,
        interp=cfg.interp,
        frames=n,
        masks_per_frame=masks,
        chunk_size=chunk,
        dtype=cfg.dtype,
        threads=torch.get_num_threads(),
        seconds_per_frame=seconds,
        frames_per_second={m: 1 / s for m, s in seconds.items()},
    )
    if "reference" in seconds:
        result["speedup_vs_reference"] = {m: seconds["reference"] / s for m, s in seconds.items()}
    if "engine" in seconds and "plain" in seconds:
        result["incremental_speedup_over_plain"] = seconds["plain"] / seconds["engine"]
    if "plain" in seconds and "bare_forward" in seconds:
        result["plain_over_bare_forward"] = seconds["plain"] / seconds["bare_forward"]

    # each saliency figure's share of this machine's float32 roofline (engine.core.roofline), peaks measured now;
    # the bare forward runs the plain plan's copies (and each frame once more, which the roofline leaves out)
    if dtype == torch.float32:
        peaks = measured_peaks(torch.device("cpu"))
        result["peak_flops_per_s"], result["peak_bytes_per_s"] = peaks
        shares = {}
        for m, incremental in (("engine", "auto"), ("plain", False), ("bare_forward", False)):
            if m in seconds:
                share = roofline_share(agent, incremental, cfg.radius, cfg.density, 1 / seconds[m], n, peaks, chunk)
                shares[m] = share["roofline_fraction"]
                if m == "engine":
                    result["engine_plan"] = share["plan"]
        result["roofline_fraction"] = shares

    # FLOPs of the bare forward pass per frame, and the floor they imply on a few GPUs
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        agent(inputs[: masks + 1], tuple(s[: masks + 1] for s in input_states))
    flops = counter.get_total_flops()
    result["forward_flops_per_frame"] = flops
    result["gpu_fp32_floor_ms_per_frame"] = {g: flops / (t * 1e12) * 1e3 for g, t in GPU_FP32_TFLOPS.items()}
    if "engine" in seconds:
        result["cpu_achieved_gflops_plain"] = flops / seconds.get("plain", seconds["engine"]) / 1e9

    if "bf16" in methods and dtype == torch.float32:  # reduced precision: its speed and what it costs in accuracy
        exact = perturbation_saliency(agent, frames, states, **options)

        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return perturbation_saliency(agent, frames, states, **options)

        seconds["engine_bf16_autocast"] = best_of(cfg.repeats, bf16) / n
        low = bf16()
        result["bf16"] = dict(
            seconds_per_frame=seconds["engine_bf16_autocast"],
            speedup_over_float32=seconds.get("engine", np.nan) / seconds["engine_bf16_autocast"],
            actor_spearman=spearman(low.actor_scores.float(), exact.actor_scores),
            critic_spearman=spearman(low.critic_scores.float(), exact.critic_scores),
            actor_max_rel_error=float(
                (low.actor_scores.float() - exact.actor_scores).abs().max() / exact.actor_scores.abs().max()
            ),
            critic_max_rel_error=float(
                (low.critic_scores.float() - exact.critic_scores).abs().max() / exact.critic_scores.abs().max()
            ),
        )

    print(json.dumps(result, indent=2))
    out = Path(cfg.results_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir, "result.json").write_text(
        json.dumps(result, indent=2)
    )
    OmegaConf.save(cfg, Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir, "settings.yaml"))


if __name__ == "__main__":
    main()
