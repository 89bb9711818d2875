"""Batched, device-agnostic saliency for recurrent Atari agents (Greydanus et al., 2017)."""

import os

# Intel MKL picks GEMM kernels by row count, so a row's result changes with the batch it is in (seen on
# AVX-512 Xeons). Its strict reproducibility mode makes every row independent of the batch at no measured cost
# (6.2 ms either way for a 2048x800x768 GEMM). MKL reads this on its first call, so it must be set before any
# matrix product runs; a value the user set is kept. See engine.batching.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from .errors import CheckpointError, EngineError, UnknownEnvironmentError
from .policy import ActorCritic, PolicyOutput, load_agent
from .preprocessing import preprocess_frames

__all__ = [
    "ActorCritic",
    "CheckpointError",
    "EngineError",
    "PolicyOutput",
    "UnknownEnvironmentError",
    "load_agent",
    "preprocess_frames",
]
