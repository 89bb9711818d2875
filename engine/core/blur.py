"""Gaussian blur with the semantics of ``scipy.ndimage.gaussian_filter`` (spec, section 2), batched in torch.

scipy truncates the kernel at ``truncate * sigma`` (radius ``int(truncate * sigma + 0.5)``) and pads in its
``reflect`` mode, which repeats the edge pixel (``c b a | a b c``, numpy's ``symmetric``). torch's and
kornia's ``reflect`` do not repeat it, so we pad ourselves with a gather and let kornia filter the padded
tensor with ``padding="valid"``.
"""

from __future__ import annotations

from functools import lru_cache

import kornia
import torch

from .batching import pad_rows


def kernel_radius(sigma: float, truncate: float = 4.0) -> int:
    """Half-width of scipy's truncated Gaussian kernel."""
    return int(truncate * float(sigma) + 0.5)


def gaussian_kernel1d(
    sigma: float, truncate: float = 4.0, device: torch.device | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """scipy's 1-D Gaussian kernel, ``(1, 2 * radius + 1)``, normalised to sum 1."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    size = 2 * kernel_radius(sigma, truncate) + 1
    return kornia.filters.get_gaussian_kernel1d(size, float(sigma), device=device, dtype=dtype)


@lru_cache(maxsize=64)
def _symmetric_indices(size: int, pad: int, device: torch.device) -> torch.Tensor:
    # Index of each padded position in the original axis, with half-sample symmetric reflection that keeps
    # reflecting for pads wider than the axis (period 2 * size), exactly like scipy/numpy.
    idx = torch.arange(-pad, size + pad, device=device) % (2 * size)
    return torch.where(idx >= size, 2 * size - 1 - idx, idx)


def symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims of ``x`` by ``pad`` on every side, repeating the edge (numpy ``symmetric``)."""
    if pad == 0:
        return x
    rows = _symmetric_indices(x.shape[-2], pad, x.device)
    cols = _symmetric_indices(x.shape[-1], pad, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Blur (B, C, H, W) images like ``scipy.ndimage.gaussian_filter(img, sigma)`` on each (H, W) plane.

    The kernel is built in the input's dtype on its device; output has the input's shape and dtype. Each
    image's result does not depend on the rest of the batch (rows padded as in ``engine.batching``).
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got {x.dtype}")
    kernel = gaussian_kernel1d(sigma, truncate, device=x.device, dtype=x.dtype).reshape(1, -1)
    padded = symmetric_pad(pad_rows(x), kernel_radius(sigma, truncate))
    out = kornia.filters.filter2d_separable(padded, kernel, kernel, normalized=False, padding="valid")
    return out[: x.shape[0]]
