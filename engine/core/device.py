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


# oneDNN's float32 products on the CPU (torch.backends.mkldnn.*.fp32_precision): a user's
# torch.set_float32_matmul_precision("medium") sets the matrix products to bfloat16, which moved baby-a3c's maps by
# 4e-3 of their max on an AMX Xeon
_CPU_FLOAT32_BACKENDS = tuple(getattr(torch.backends.mkldnn, op) for op in ("matmul", "conv", "rnn"))


@contextlib.contextmanager
def float32_matmul_precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """Inside the block the device's float32 convolutions and matrix products are exact float32, except that on
    CUDA they use TF32 if ``tf32``; every setting is restored after.

    cuDNN allows TF32 convolutions by default, which moves float32 maps about 6e-4 (relative) away from float64
    ones on an H200, against 8e-7 without it (benchmarks/results/gpu/): the engine keeps float32 exact unless
    asked. On the CPU, oneDNN's reduced float32 modes (bfloat16 or TF32 products, which a process may have set with
    ``torch.set_float32_matmul_precision`` or ``torch.backends.mkldnn``'s ``fp32_precision``) are off whatever
    ``tf32`` says. The settings are process-wide: work on other threads of the process meanwhile sees them too.
    """
    if torch.device(device).type == "cpu":
        saved_cpu = [backend.fp32_precision for backend in _CPU_FLOAT32_BACKENDS]
        for backend in _CPU_FLOAT32_BACKENDS:
            backend.fp32_precision = "ieee"
        try:
            yield
        finally:
            for backend, precision in zip(_CPU_FLOAT32_BACKENDS, saved_cpu, strict=True):
                backend.fp32_precision = precision
        return
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
