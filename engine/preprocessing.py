"""The 2017 preprocessing (spec, section 1), batched on the device.

uint8 frames (N, 210, 160, 3) -> crop rows 35..194 -> mean of the colour channels -> per-frame min-max
byte-scale -> antialiased bilinear resize to 80x80 on uint8 (Pillow's algorithm; torchvision's uint8 path
gives the same bytes) -> /255 as float. Byte-scaling runs in float64 with the spec's operation order, so the
bytes equal a numpy implementation of it.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .device import to_device

FRAME_SHAPE = (210, 160, 3)
CROP_ROWS = (35, 195)
SIZE = 80


def as_frames_tensor(frames, device=None) -> torch.Tensor:
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


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow-BILINEAR resize of uint8 (N, H, W) images to ``size`` (antialiased when shrinking)."""
    out = TF.resize(images[:, None], list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return out[:, 0]


def preprocess_bytes(frames) -> torch.Tensor:
    """Raw frames (N, 210, 160, 3) uint8 -> the 80x80 uint8 images the agents were trained on, (N, 80, 80)."""
    frames = as_frames_tensor(frames)
    gray = frames[:, CROP_ROWS[0]:CROP_ROWS[1]].to(torch.float64).mean(dim=-1)
    return resize_uint8(byte_scale(gray), (SIZE, SIZE))


def preprocess_frames(frames, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Raw frames (N, 210, 160, 3) uint8 -> agent inputs (N, 1, 80, 80) in ``dtype`` on ``device``.

    The frames are moved to ``device`` first (one copy of the uint8 batch), so the work runs there.
    """
    frames = as_frames_tensor(frames, device)
    return (preprocess_bytes(frames).to(dtype) / 255)[:, None]
