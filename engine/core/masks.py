"""Perturbation masks and perturbed images (spec, sections 3 and 4).

A mask depends only on its center, the radius, the grid density and the observation's size, never on the frame:
all masks of one (radius, density, size) are built once in float64 on the CPU (one batched blur), cached, and
cast/moved to each (device, dtype) once. Centers lie at ``range(0, H, d) x range(0, W, d)``; one mask applies to
every channel of an observation (all frames of a stack are perturbed at the same place).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .blur import gaussian_blur
from .settings import INTERPS, SIZE, validate_radius_density

MASK_BLOCK = 256  # masks blurred together while the cache is built


def center_coords(density: int, length: int = SIZE) -> torch.Tensor:
    """Pixel coordinates of the mask centers along one axis: ``range(0, length, density)``, shape (G,)."""
    return torch.arange(0, length, density)


def grid_shape(density: int, size: tuple[int, int] = (SIZE, SIZE)) -> tuple[int, int]:
    """``(Gh, Gw)``: how many mask centers fit along each axis of an ``(H, W)`` observation."""
    return len(range(0, size[0], density)), len(range(0, size[1], density))


@lru_cache(maxsize=16)
def _masks_float64(radius: float, density: int, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    ci, cj = torch.meshgrid(center_coords(density, h).double(), center_coords(density, w).double(), indexing="ij")
    yy = torch.arange(h, dtype=torch.float64).view(1, h, 1)  # center (i, j) is mask number i * Gw + j
    xx = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    plus = ((yy - ci.reshape(-1, 1, 1)) ** 2 + (xx - cj.reshape(-1, 1, 1)) ** 2 <= 1).to(torch.float64)
    # blurred in blocks: a dense grid (density 1 on 84x84: 7056 masks) would otherwise need gigabytes of padded
    # intermediates at once; each mask's blur does not depend on the others (batch-invariant blur)
    blurred = torch.cat([gaussian_blur(block[:, None], sigma=radius)[:, 0] for block in torch.split(plus, MASK_BLOCK)])
    return blurred / blurred.amax(dim=(1, 2), keepdim=True)


@lru_cache(maxsize=16)
def _masks_on(
    radius: float, density: int, size: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    return _masks_float64(radius, density, size).to(device=device, dtype=dtype)


def perturbation_masks(
    radius: float,
    density: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    size: tuple[int, int] = (SIZE, SIZE),
) -> torch.Tensor:
    """All masks of the grid, ``(Gh * Gw, H, W)`` for an observation of ``size = (H, W)``, row-major by center.

    Cached per (radius, density, size, device, dtype): treat the result as read-only.
    """
    validate_radius_density(radius, density, size)
    return _masks_on(float(radius), density, (int(size[0]), int(size[1])), torch.device(device or "cpu"), dtype)


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
