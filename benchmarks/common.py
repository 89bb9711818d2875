"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


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
