"""Batch-invariant evaluation and chunking.

CPU kernels (GEMMs, some convolutions, vectorised elementwise ops split across threads) take different code
paths, and so round differently, for a handful of rows or an odd row count. Padded with zero rows to a
multiple of 8, and to at least 16, a row's result no longer depends on how many rows share the call
(measured on the pinned CPU torch build, float32 and float64; tests/unit/test_batching.py checks it). On Intel
CPUs MKL also blocks GEMMs by row count; ``engine/__init__.py`` sets ``MKL_CBWR=AUTO,STRICT`` (MKL's strict
reproducibility mode) before any GEMM runs, without which no padding makes rows independent there. That is what
lets chunking, and scoring frames together or one at a time, give bit-identical maps, and lets a recomputed
forward pass reproduce a rollout's recorded logits bit for bit. On CUDA, cuDNN picks its algorithms by batch
size, so there chunking changes results only by float rounding (the GPU check measures it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

ROW_QUANTUM, MIN_ROWS = 8, 16


def padded_row_count(n: int) -> int:
    """The row count ``pad_rows`` pads ``n`` rows to."""
    return max(MIN_ROWS, -(-n // ROW_QUANTUM) * ROW_QUANTUM)


def pad_rows(t: torch.Tensor) -> torch.Tensor:
    """Append zero rows (dim 0) up to :func:`padded_row_count`; slice the result back with ``[:n]``."""
    n = t.shape[0]
    target = padded_row_count(n)
    return t if target == n else torch.cat([t, t.new_zeros(target - n, *t.shape[1:])])


def chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(total)`` in pieces of at most ``size``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [(start, min(start + size, total)) for start in range(0, total, size)]


Result = TypeVar("Result")


def concatenated(parts: Sequence[Result], fields: Sequence[str], **shared: Any) -> Result:
    """One result of the type of ``parts`` (results of consecutive groups of frames): its per-frame ``fields``
    concatenated along the frames, the others as ``shared`` gives them."""
    joined = {name: torch.cat([getattr(part, name) for part in parts]) for name in fields}
    return type(parts[0])(**joined, **shared)
