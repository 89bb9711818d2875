"""Where an agent looks: the share of a saliency map that falls near a game object, against that region's area.

Objects are found by colour in the raw frames, inside the rows the preprocessing keeps (spec: rows 35..194),
and a map cell ``(i, j)`` of an 80x80 map covers frame pixels ``35 + 2i .. 36 + 2i`` x ``2j .. 2j + 1``. A cell
is *near* an object when one of its pixels lies within ``distance`` frame pixels (Euclidean) of one of the
object's pixels. Colours are the ALE's; Pong's are listed in :data:`PONG_OBJECTS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .preprocessing import CROP_ROWS, SIZE, as_frames_tensor

# Pong (ALE palette). The score digits share the paddles' colours but sit above row 35, outside the crop;
# the bottom wall (white, like the ball) starts at row 194, so rows 35..193 are searched.
PONG_OBJECTS = {"ball": (236, 236, 236), "paddle": (92, 186, 92), "opponent": (213, 130, 74)}
PLAY_ROWS = (CROP_ROWS[0], 194)


def object_pixels(frames, color: tuple[int, int, int], rows: tuple[int, int] = PLAY_ROWS) -> torch.Tensor:
    """Raw uint8 frames (N, 210, 160, 3) -> bool (N, 160, 160): pixels of ``color`` in crop coordinates
    (row 0 is frame row 35), searched in frame rows ``rows[0]..rows[1]-1`` only."""
    x = as_frames_tensor(frames)
    if not (isinstance(color, tuple) and len(color) == 3):
        raise ValueError(f"color must be an (r, g, b) tuple, got {color!r}")
    crop = x[:, CROP_ROWS[0] : CROP_ROWS[1]]
    hit = (crop == torch.tensor(color, dtype=x.dtype, device=x.device)).all(dim=-1)
    keep = torch.zeros(crop.shape[1], dtype=torch.bool, device=x.device)
    keep[rows[0] - CROP_ROWS[0] : rows[1] - CROP_ROWS[0]] = True
    return hit & keep[None, :, None]


def near_cells(pixels: torch.Tensor, distance: float) -> torch.Tensor:
    """bool (N, 160, 160) object pixels -> bool (N, 80, 80): map cells with a pixel within ``distance``
    frame pixels of an object pixel (a disc dilation, then any of each cell's 2x2 pixels)."""
    if pixels.dim() != 3 or pixels.shape[1:] != (2 * SIZE, 2 * SIZE):
        raise ValueError(f"object pixels must be (N, {2 * SIZE}, {2 * SIZE}), got {tuple(pixels.shape)}")
    if not distance >= 0:
        raise ValueError(f"distance must be >= 0 pixels, got {distance!r}")
    r = math.floor(distance)
    offsets = torch.arange(-r, r + 1, dtype=torch.float32)
    disc = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= distance**2).float()[None, None]
    dilated = F.conv2d(pixels[:, None].float(), disc.to(pixels.device), padding=r) > 0
    return F.max_pool2d(dilated.float(), 2)[:, 0] > 0


@dataclass(frozen=True)
class RegionShare:
    """Over the frames where the object is visible: mean share of the map's mass near it (``saliency``),
    mean share of the screen near it (``area``), and how many frames counted."""

    saliency: float
    area: float
    frames: int

    @property
    def ratio(self) -> float:
        """How much more saliency the region gets than its area would (1 = no preference)."""
        return self.saliency / self.area if self.area > 0 else float("nan")


def region_share(maps: torch.Tensor, region: torch.Tensor) -> RegionShare:
    """maps (N, 80, 80) non-negative saliency, region bool (N, 80, 80) -> :class:`RegionShare`.

    Frames where the region is empty (the object is off screen) or the map is all zero are left out.
    """
    if maps.shape != region.shape or maps.dim() != 3:
        raise ValueError(f"maps and region must both be (N, 80, 80), got {tuple(maps.shape)} and {tuple(region.shape)}")
    maps = maps.double()
    total = maps.sum(dim=(1, 2))
    counted = region.any(dim=2).any(dim=1) & (total > 0)
    if not bool(counted.any()):
        return RegionShare(float("nan"), float("nan"), 0)
    inside = (maps * region).sum(dim=(1, 2))
    share = inside[counted] / total[counted]
    area = region[counted].double().mean(dim=(1, 2))
    return RegionShare(float(share.mean()), float(area.mean()), int(counted.sum()))


def object_shares(frames, maps: torch.Tensor, objects: dict = PONG_OBJECTS, distance: float = 10) -> dict[str, RegionShare]:
    """:func:`region_share` of ``maps`` near each named object of ``objects`` (name -> colour) in ``frames``."""
    return {name: region_share(maps.cpu(), near_cells(object_pixels(frames, color), distance)) for name, color in objects.items()}
