"""Device and dtype resolution: ``auto`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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


# the per-backend float32 precision settings (``fp32_precision``: "ieee", "tf32", "bf16" or "none", inherit): what
# the kernels and inductor read. oneDNN's on the CPU: a process's torch.set_float32_matmul_precision("medium") sets
# its matrix products to bfloat16, which moved baby-a3c's maps by 4e-3 of their max on an AMX Xeon
FLOAT32_BACKENDS: dict[str, Any] = {
    "all": torch.backends,
    "cuda.matmul": torch.backends.cuda.matmul,
    "cudnn": torch.backends.cudnn,
    **{f"cudnn.{op}": getattr(torch.backends.cudnn, op) for op in ("conv", "rnn")},
    "mkldnn": torch.backends.mkldnn,
    **{f"mkldnn.{op}": getattr(torch.backends.mkldnn, op) for op in ("matmul", "conv", "rnn")},
}
_CPU_FLOAT32_BACKENDS = tuple(FLOAT32_BACKENDS[f"mkldnn.{op}"] for op in ("matmul", "conv", "rnn"))
_CUDA_FLOAT32_BACKENDS = tuple(FLOAT32_BACKENDS[name] for name in ("cuda.matmul", "cudnn.conv", "cudnn.rnn"))


def float32_precision_settings() -> dict[str, str]:
    """The process's per-backend float32 precision settings by backend (:data:`FLOAT32_BACKENDS`), which torch
    always reads back (its older switches it may refuse to)."""
    return {name: backend.fp32_precision for name, backend in FLOAT32_BACKENDS.items()}


def _legacy_tf32() -> tuple[bool, str] | None:
    """The older TF32 switches (cuDNN's ``allow_tf32`` and the float32 matmul precision), or None where torch
    refuses to read them: a process that set the per-backend settings to disagree with them."""
    try:
        return bool(torch.backends.cudnn.allow_tf32), torch.get_float32_matmul_precision()
    except RuntimeError:
        return None


def _set_legacy_tf32(cudnn: bool, matmul: str) -> None:
    torch.backends.cudnn.allow_tf32 = cudnn
    torch.set_float32_matmul_precision(matmul)


@contextlib.contextmanager
def float32_matmul_precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """Inside the block the device's float32 convolutions and matrix products are exact float32, except that on
    CUDA they use TF32 if ``tf32``; every setting is restored after.

    cuDNN allows TF32 convolutions by default, which moves float32 maps about 6e-4 (relative) away from float64
    ones on an H200, against 8e-7 without it (benchmarks/results/gpu/): the engine keeps float32 exact unless
    asked. On the CPU, oneDNN's reduced float32 modes (bfloat16 or TF32 products, which a process may have set with
    ``torch.set_float32_matmul_precision`` or ``torch.backends.mkldnn``'s ``fp32_precision``) are off whatever
    ``tf32`` says. Both the per-backend settings (``fp32_precision``, what the kernels and inductor read) and, where
    the process left them readable, the older switches they replace are set, so neither view disagrees inside; the
    per-backend ones are restored last, as they were. The settings are process-wide: work on other threads of the
    process meanwhile sees them too.
    """
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        yield
        return
    backends = _CPU_FLOAT32_BACKENDS if kind == "cpu" else _CUDA_FLOAT32_BACKENDS
    # the older matmul switch also sets oneDNN's matrix products: kept as they were too
    touched = backends if kind == "cpu" else backends + _CPU_FLOAT32_BACKENDS[:1]
    saved = [backend.fp32_precision for backend in touched]
    legacy = _legacy_tf32() if kind == "cuda" else None
    try:
        if legacy is not None:
            _set_legacy_tf32(tf32, "high" if tf32 else "highest")
        wanted = "tf32" if kind == "cuda" and tf32 else "ieee"
        for backend in backends:
            backend.fp32_precision = wanted
        yield
    finally:
        if legacy is not None:
            _set_legacy_tf32(*legacy)
        for backend, precision in zip(touched, saved, strict=True):
            backend.fp32_precision = precision
