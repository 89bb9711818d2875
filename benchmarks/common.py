"""Helpers shared by the benchmark scripts: the machine, timings, and the roofline share of a speed figure."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from engine.core.masks import perturbation_masks
from engine.core.perturbation import incremental_plan, resolve_perturbations_per_eval
from engine.core.policy import Policy
from engine.core.roofline import roofline, roofline_fraction


def machine() -> str:
    """CPU model and torch thread count, for the record."""
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions that decide which kernels torch runs (empty where unknown)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [f for f in wanted if f in flags]


def best_of(repeats: int, fn, warmup: bool = True) -> float:
    """Shortest of ``repeats`` timings of ``fn()`` in seconds (after one untimed warm-up call)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_of_interleaved(repeats: int, fns: dict) -> dict:
    """Shortest of ``repeats`` timings of each ``fns[name]()`` in seconds, taken in rounds (one call of each
    function per round, after one untimed warm-up round), so that slow phases of a noisy shared machine hit
    every method alike and their ratios stay meaningful."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Shortest of ``repeats`` timings of ``fn()`` (after one warm-up call; the device synchronised around each)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def peak_flops(device: torch.device, size: int, repeats: int) -> float:
    """FLOP/s of a float32 ``size`` x ``size`` matrix product (2 size^3 FLOPs), with the process's TF32 settings
    (callers turn TF32 off first)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return 2.0 * size**3 / best_seconds(lambda: torch.mm(a, b), device, repeats)


def peak_bandwidth(device: torch.device, mib: int, repeats: int) -> float:
    """Bytes/s of a device copy of ``mib`` MiB (each byte read once and written once)."""
    src = torch.empty(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    return 2.0 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), device, repeats)


def measured_peaks(device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """(FLOP/s, bytes/s) of this device, measured now: the float32 peaks a speed figure of the same run is set
    against (a 4096 product and a 1 GiB copy on CUDA, 1024 and 256 MiB on a CPU)."""
    cuda = device.type == "cuda"
    return peak_flops(device, 4096 if cuda else 1024, repeats), peak_bandwidth(device, 1024 if cuda else 256, repeats)


def roofline_share(
    agent: Policy,
    incremental: bool | str,
    radius: float,
    density: int,
    frames_per_s: float,
    frames: int,
    peaks: tuple[float, float],
    perturbations_per_eval: int | None = None,
) -> dict:
    """Where ``frames_per_s`` of ``engine.perturbation_saliency(agent, <frames observations>, radius=, density=,
    incremental=, perturbations_per_eval=)`` sits against the float32 roofline (engine.core.roofline) of the plan
    that call runs (``incremental="auto"``: the engine's own choice) at its pass size, on ``agent``'s device, with
    ``peaks`` (FLOP/s, bytes/s) measured in the same run. Returns the plan, FLOPs and bytes per perturbed input
    and ``roofline_fraction``."""
    device = torch.device(agent.device)
    masks = perturbation_masks(radius, density, device, torch.float32, tuple(agent.observation_shape[1:]))
    plan = "plain" if incremental_plan(agent, masks, incremental) is None else "incremental"
    batch = resolve_perturbations_per_eval(agent, agent.dtype, frames * masks.shape[0], perturbations_per_eval, None)
    table = roofline(agent, plan, radius, density, batch=batch, device=device)
    return dict(
        plan=plan,
        flops_per_input=table.flops,
        bytes_per_input=table.bytes,
        roofline_fraction=round(roofline_fraction(frames_per_s * masks.shape[0], table, *peaks), 4),
    )
