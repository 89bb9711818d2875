"""The 2017 preprocessing (spec, section 1), batched on the device.

uint8 frames (N, 210, 160, 3) -> crop rows 35..194 -> mean of the colour channels -> per-frame min-max
byte-scale -> antialiased bilinear resize to 80x80 on uint8 (Pillow's algorithm) -> /255 as float.
Byte-scaling runs in float64 with the spec's operation order, so the bytes equal a numpy implementation of it.
The resize is Pillow's fixed-point resampling written as two products with integer weights (exact in
float64), so it gives Pillow's bytes on every device (torchvision's CUDA resize rounds differently: on a GPU
it changed agent outputs by about 0.7%, benchmarks/results/gpu/).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .device import to_device
from .settings import FRAME_SHAPE, SIZE

# SIZE and FRAME_SHAPE are re-exported: the layers above take the side of the preprocessed observation from here
__all__ = [
    "CROP_ROWS",
    "FRAME_SHAPE",
    "SIZE",
    "as_frames_tensor",
    "byte_scale",
    "preprocess_bytes",
    "preprocess_frames",
    "resize_uint8",
]

CROP_ROWS = (35, 195)


def as_frames_tensor(frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Check raw Atari frames (N, 210, 160, 3) uint8 (numpy or torch) and return them as a tensor on ``device``."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.ndim == 3:
        raise ValueError(
            f"frames must be batched (N, 210, 160, 3); got one frame {tuple(frames.shape)}: use frames[None]"
        )
    if frames.ndim != 4 or tuple(frames.shape[1:]) != FRAME_SHAPE:
        raise ValueError(f"frames must have shape (N, 210, 160, 3) (raw ALE RGB frames), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 raw pixels, got dtype {frames.dtype}")
    return to_device(frames, device)


def byte_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max stretch of (N, H, W) to uint8: ``floor((a - min) * 255 / (max - min) + 0.5)``.

    A constant sample (max == min) uses a span of 1. Computed in float64, in the spec's operation order.
    """
    if x.ndim != 3:
        raise ValueError(f"byte_scale expects (N, H, W), got shape {tuple(x.shape)}")
    a = x.to(torch.float64)
    lo = a.amin(dim=(1, 2), keepdim=True)
    span = a.amax(dim=(1, 2), keepdim=True) - lo
    span = torch.where(span == 0, torch.ones_like(span), span)
    return torch.floor((a - lo) * 255 / span + 0.5).clamp_(0, 255).to(torch.uint8)


_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit images (32 - 8 - 2)


@lru_cache(maxsize=64)
def _pillow_weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """Pillow's BILINEAR resampling weights (``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of its
    Resample.c) as an (out_size, in_size) float64 matrix of integers scaled by ``2**22``."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)]
        total = sum(taps)
        for x, w in enumerate(taps):
            w = w / total if total != 0.0 else w
            weights[xx, xmin + x] = math.trunc(w * (1 << _PRECISION_BITS) + (0.5 if w >= 0 else -0.5))
    return weights.to(device)


def _resample_rows(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One fixed-point pass along the last axis: integer-valued float64 in, integer-valued float64 (0..255) out.
    Every sum is an integer below 2**53, so the float64 product is exact whatever the summation order."""
    acc = images @ weights.T + (1 << (_PRECISION_BITS - 1))
    return torch.floor(acc / (1 << _PRECISION_BITS)).clamp_(0, 255)


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow-BILINEAR resize of uint8 (N, H, W) images to ``size`` (antialiased when shrinking), byte for byte
    Pillow's result on any device: horizontal pass first, then vertical, each rounded to bytes as Pillow does."""
    if images.ndim != 3 or images.dtype != torch.uint8:
        raise ValueError(f"resize_uint8 expects uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}")
    (h, w), (out_h, out_w) = images.shape[1:], size
    x = images.to(torch.float64)
    if out_w != w:
        x = _resample_rows(x, _pillow_weights(w, out_w, x.device))
    if out_h != h:
        x = _resample_rows(x.transpose(1, 2), _pillow_weights(h, out_h, x.device)).transpose(1, 2)
    return x.to(torch.uint8)


def preprocess_bytes(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw frames (N, 210, 160, 3) uint8 -> the 80x80 uint8 images the agents were trained on, (N, 80, 80)."""
    frames = as_frames_tensor(frames)
    gray = frames[:, CROP_ROWS[0] : CROP_ROWS[1]].to(torch.float64).mean(dim=-1)
    return resize_uint8(byte_scale(gray), (SIZE, SIZE))


def preprocess_frames(
    frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Raw frames (N, 210, 160, 3) uint8 -> agent inputs (N, 1, 80, 80) in ``dtype`` on ``device``.

    The frames are moved to ``device`` first (one copy of the uint8 batch), so the work runs there.
    """
    frames = as_frames_tensor(frames, device)
    return (preprocess_bytes(frames).to(dtype) / 255)[:, None]
