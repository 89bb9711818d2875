"""Perturbation masks and perturbed images (spec, sections 3 and 4).

A mask depends only on its center, the radius and the grid density, never on the frame: all masks of one
(radius, density) are built once in float64 on the CPU (one batched blur), cached, and cast/moved to each
(device, dtype) once.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .blur import gaussian_blur
from .settings import INTERPS, SIZE, validate_radius_density


def center_coords(density: int) -> torch.Tensor:
    """Pixel coordinates of the mask centers along one axis: ``range(0, 80, density)``, shape (G,)."""
    return torch.arange(0, SIZE, density)


@lru_cache(maxsize=16)
def _masks_float64(radius: float, density: int) -> torch.Tensor:
    c = center_coords(density).to(torch.float64)
    ci, cj = torch.meshgrid(c, c, indexing="ij")  # center (i, j) of mask number i * G + j
    yy = torch.arange(SIZE, dtype=torch.float64).view(1, SIZE, 1)
    xx = torch.arange(SIZE, dtype=torch.float64).view(1, 1, SIZE)
    plus = ((yy - ci.reshape(-1, 1, 1)) ** 2 + (xx - cj.reshape(-1, 1, 1)) ** 2 <= 1).to(torch.float64)
    blurred = gaussian_blur(plus[:, None], sigma=radius)[:, 0]
    return blurred / blurred.amax(dim=(1, 2), keepdim=True)


@lru_cache(maxsize=16)
def _masks_on(radius: float, density: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _masks_float64(radius, density).to(device=device, dtype=dtype)


def perturbation_masks(radius: float, density: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """All masks of the grid, ``(G * G, 80, 80)`` with ``G = len(range(0, 80, density))``, row-major by center.

    Cached per (radius, density, device, dtype): treat the result as read-only.
    """
    validate_radius_density(radius, density)
    return _masks_on(float(radius), density, torch.device(device or "cpu"), dtype)


def perturb(images: torch.Tensor, blurred: torch.Tensor, masks: torch.Tensor, interp: str) -> torch.Tensor:
    """Blend images with their blur under masks; all three broadcast to the same shape.

    occlude: ``I * (1 - M) + B * M`` (blur inside the mask); searchlight: ``I * M + B * (1 - M)``
    (blur outside it). Written as one ``lerp``, which equals the spec's expression up to rounding.
    """
    if interp == "occlude":
        return torch.lerp(images, blurred, masks)
    if interp == "searchlight":
        return torch.lerp(blurred, images, masks)
    raise ValueError(f"interp must be one of {INTERPS}, got {interp!r}")
