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

from ..core.preprocessing import CROP_ROWS, SIZE, as_frames_tensor

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
    """maps (N, 80, 80) saliency, region bool (N, 80, 80) -> :class:`RegionShare`: the part of each map's positive
    mass inside the region (a signed map counts its positive part; see
    :func:`engine.metrics.faithfulness.object_agreement`).

    Frames where the region is empty (the object is off screen) or the map has no positive mass are left out.
    """
    if maps.shape != region.shape or maps.dim() != 3:
        raise ValueError(f"maps and region must both be (N, 80, 80), got {tuple(maps.shape)} and {tuple(region.shape)}")
    maps = maps.double().clamp(min=0)
    total = maps.sum(dim=(1, 2))
    counted = region.any(dim=2).any(dim=1) & (total > 0)
    if not bool(counted.any()):
        return RegionShare(float("nan"), float("nan"), 0)
    inside = (maps * region).sum(dim=(1, 2))
    share = inside[counted] / total[counted]
    area = region[counted].double().mean(dim=(1, 2))
    return RegionShare(float(share.mean()), float(area.mean()), int(counted.sum()))


def object_shares(
    frames, maps: torch.Tensor, objects: dict = PONG_OBJECTS, distance: float = 10
) -> dict[str, RegionShare]:
    """:func:`region_share` of ``maps`` near each named object of ``objects`` (name -> colour) in ``frames``."""
    return {
        name: region_share(maps.cpu(), near_cells(object_pixels(frames, color), distance))
        for name, color in objects.items()
    }


# --- objects of several games, on maps of any size ------------------------------------------------------------
#
# An object is one or more ALE palette colours inside a band of frame rows: several games reuse a colour (Breakout's
# ball, paddle and top brick row are all red; Space Invaders' score digits have the player's green), and the rows
# tell them apart. Rows and colours were read off real frames of baby-a3c's agents (Pong-v4, Breakout-v4,
# SpaceInvaders-v4); an object that is not on screen simply has no pixels in that frame.


@dataclass(frozen=True)
class ObjectSpec:
    """Pixels of an object: any of ``colors`` (r, g, b) in frame rows ``rows[0]..rows[1]-1``."""

    colors: tuple[tuple[int, int, int], ...]
    rows: tuple[int, int]


GAME_OBJECTS: dict[str, dict[str, ObjectSpec]] = {
    "pong": {name: ObjectSpec((color,), PLAY_ROWS) for name, color in PONG_OBJECTS.items()},
    "breakout": {
        "ball": ObjectSpec(((200, 72, 72),), (93, 189)),  # between the bricks and the paddle
        "paddle": ObjectSpec(((200, 72, 72),), (189, 194)),
        "bricks": ObjectSpec(
            ((200, 72, 72), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72), (66, 72, 200)), (57, 93)
        ),
    },
    "spaceinvaders": {
        "player": ObjectSpec(((50, 132, 50),), (185, 195)),  # the same green as the score digits at rows 10..19
        "aliens": ObjectSpec(((134, 134, 29),), (20, 185)),
        "shields": ObjectSpec(((181, 83, 40),), (150, 185)),
        "shots": ObjectSpec(((142, 142, 142),), (20, 195)),
    },
}


def game_of(env_id: str) -> str | None:
    """The key of :data:`GAME_OBJECTS` for an ALE id (``Pong-v4``, ``ALE/Breakout-v5``, ...), or None."""
    name = env_id.split("/")[-1].split("-")[0].lower().removesuffix("noframeskip").removesuffix("deterministic")
    return name if name in GAME_OBJECTS else None


def game_object_pixels(frames, game: str) -> dict[str, torch.Tensor]:
    """Raw uint8 frames (N, 210, 160, 3) -> ``{name: bool (N, 210, 160)}``, the pixels of each object of ``game``
    (a key of :data:`GAME_OBJECTS`) in full-frame coordinates."""
    if game not in GAME_OBJECTS:
        raise ValueError(
            f"objects are known for the games {sorted(GAME_OBJECTS)}, got {game!r}: pass one of those "
            "(engine.metrics.regions.game_of(env_id) maps an ALE id to it)"
        )
    x = as_frames_tensor(frames)
    rows = torch.arange(x.shape[1], device=x.device)
    found = {}
    for name, spec in GAME_OBJECTS[game].items():
        palette = torch.tensor(spec.colors, dtype=x.dtype, device=x.device)  # (K, 3)
        hit = (x[:, :, :, None, :] == palette).all(dim=-1).any(dim=-1)  # (N, 210, 160)
        band = (rows >= spec.rows[0]) & (rows < spec.rows[1])
        found[name] = hit & band[None, :, None]
    return found


def cells_near(
    pixels: torch.Tensor, map_size: tuple[int, int], rows: tuple[int, int] | None = CROP_ROWS, distance: float = 0.0
) -> torch.Tensor:
    """bool (N, 210, 160) object pixels -> bool (N, h, w): map cells that cover a frame pixel within ``distance``
    frame pixels (Euclidean) of the object.

    ``rows``: the frame rows the map covers (the 2017 crop, 35..194, by default); ``None`` for the whole frame
    (the standard 84x84 pipelines resize the full frame). Cell (i, j) covers the pixels of adaptive pooling's bin
    (rows ``floor(i * R / h) .. ceil((i + 1) * R / h) - 1``), which is the 2x2 block of :func:`near_cells` on the
    2017 crop."""
    if pixels.dim() != 3:
        raise ValueError(f"object pixels must be (N, 210, 160) booleans, got shape {tuple(pixels.shape)}")
    if not distance >= 0:
        raise ValueError(f"distance must be >= 0 pixels, got {distance!r}")
    region = pixels if rows is None else pixels[:, rows[0] : rows[1]]
    r = math.floor(distance)
    mask = region[:, None].float()
    if r > 0:
        offsets = torch.arange(-r, r + 1, dtype=torch.float32, device=pixels.device)
        disc = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= distance**2).float()[None, None]
        mask = (F.conv2d(mask, disc, padding=r) > 0).float()
    return F.adaptive_max_pool2d(mask, tuple(map_size))[:, 0] > 0


def game_object_cells(
    frames, game: str, map_size: tuple[int, int], rows: tuple[int, int] | None = CROP_ROWS, distance: float = 0.0
) -> dict[str, torch.Tensor]:
    """``{name: bool (N, h, w)}``: :func:`cells_near` each object of ``game`` in raw frames (N, 210, 160, 3)."""
    return {name: cells_near(p, map_size, rows, distance) for name, p in game_object_pixels(frames, game).items()}
