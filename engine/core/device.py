"""Device and dtype resolution: ``auto`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import EngineError

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` when available, else ``cpu``; anything else is checked and returned."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EngineError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} was asked for but CUDA is not available here: use device=auto or cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch floating dtype from its name (``"float32"``) or itself."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise EngineError(f"dtype {dtype} is not a floating-point type: use one of {sorted(_DTYPES)}")
        return dtype
    if dtype not in _DTYPES:
        raise EngineError(f"unknown dtype {dtype!r}: use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """Move a tensor to ``device``; host -> CUDA copies go through pinned memory without blocking the host
    (one copy per call, made before the work that needs it, never inside a loop)."""
    if device is None:
        return t
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@contextlib.contextmanager
def float32_matmul_precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """Inside the block, CUDA float32 convolutions and matrix products use TF32 only if ``tf32`` (restored after).

    cuDNN allows TF32 convolutions by default, which moves float32 maps about 6e-4 (relative) away from float64
    ones on an H200, against 8e-7 without it (benchmarks/results/gpu/): the engine keeps float32 exact unless
    asked. Nothing changes on other devices.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
