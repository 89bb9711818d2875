"""Exact incremental inference for perturbation batches (the idea of Krypton, SIGMOD 2019).

A mask blurred with a Gaussian truncated at 4 sigma is exactly zero outside a box around its center, and
there ``lerp(I, B, 0) == I`` exactly: a perturbed copy equals its frame outside the box (for searchlight,
``lerp(B, I, 0) == B``: it equals the blurred frame). So its first
convolution layers differ from the frame's own activations only inside a window that grows by the kernel
and shrinks by the stride, layer by layer. For every mask we compute conv1 and conv2 only on a window of
fixed size placed at its center (clamped inside the map); conv3 runs only on a smaller layer-3 window,
reading a region of the frame's own layer-2 activations (computed once per frame; the blurred frame's, for
searchlight) with the layer-2 window pasted in (windows are placed so that the region holds it); the layer-3
window is pasted into the frame's layer-3 activations, and conv4, the core and the heads run as usual.
Results equal the plain batched pass up to float rounding (convolutions of a patch may round differently
from the same convolution of the whole map).

Geometry along one axis (the agent's convs are 3x3, stride 2, padding 1): input rows ``[y0, y1]`` change
layer-1 rows ``[floor(y0/2), floor((y1+1)/2)]`` and so on. A layer-2 window of side ``s2`` at origin ``o2``
needs layer-1 rows ``2*o2-1 .. 2*o2+2*s2-1`` (side ``2*s2+1``; row -1 is conv2's zero padding) and input
rows ``4*o2-3 .. 4*o2+4*s2-1`` (side ``4*s2+3``), i.e. ``4*o2 + k`` in an input padded by 3 at the top/left.
A layer-3 window of side ``s3`` at ``o3`` reads layer-2 rows ``2*o3-1 .. 2*o3+2*s3-1``, i.e. ``2*o3 + k`` in
the layer-2 map padded by 1 at the top/left.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .batching import padded_row_count
from .blur import kernel_radius
from .masks import center_coords, perturb
from .policy import ActorCritic, PolicyOutput, State, elu
from .preprocessing import SIZE

LAYER1, LAYER2, LAYER3 = SIZE // 2, SIZE // 4, SIZE // 8  # 40, 20, 10
INPUT_PAD = 3
# Past this window side (on the 20x20 layer-2 grid) the windows cost about as much as the plain pass.
MAX_USEFUL_WINDOW = 15


@dataclass(frozen=True)
class WindowPlan:
    """Where each mask's windows sit. ``G`` centers per axis, ``M = G*G`` masks (row-major by center).

    Attributes:
        side: layer-2 window side ``s2``; side3: layer-3 window side ``s3``.
        origin_rows, origin_cols: (M,) layer-2 window origin ``o2`` of each mask; its input patch is rows
            ``4*o2 .. 4*o2+4*s2+2`` of the frame padded by 3 at the top/left.
        mask_patches: (M, 4*s2+3, 4*s2+3) each mask on its input patch.
        layer1_valid: (M, 1, 2*s2+1, 2*s2+1) 0 where the layer-1 window lies on conv2's zero padding.
        region_rows, region_cols: (M,) layer-3 window origin ``o3`` of each mask; conv3 reads the region
            ``2*o3 .. 2*o3+2*s3`` of the layer-2 map padded by 1 at the top/left (conv3's zero padding; its
            bottom/right padding is never read), which holds the layer-2 window.
        window2_index: (M, s2*s2) flat positions of the layer-2 window in that (2*s3+1)^2 region.
        layer3_index: (M, s3*s3) flat positions of the layer-3 window in the 10x10 layer-3 map.
    """

    side: int
    side3: int
    origin_rows: torch.Tensor
    origin_cols: torch.Tensor
    mask_patches: torch.Tensor
    layer1_valid: torch.Tensor
    region_rows: torch.Tensor
    region_cols: torch.Tensor
    window2_index: torch.Tensor
    layer3_index: torch.Tensor


def _next_layer(a: int, b: int, size: int) -> tuple[int, int]:
    """Rows ``[a, b]`` of a map change rows ``[floor(a/2), floor((b+1)/2)]`` of a 3x3 stride-2 pad-1 conv."""
    return a // 2, min((b + 1) // 2, size - 1)


def _changed_range(center: int, radius: float, layer: int) -> tuple[int, int]:
    """Rows of layer ``layer`` (2 or 3) that a mask centered at ``center`` changes."""
    reach = kernel_radius(radius) + 1  # the 5-pixel plus reaches 1 pixel, the truncated blur r pixels more
    a, b = max(center - reach, 0), min(center + reach, SIZE - 1)
    for size in (LAYER1, LAYER2, LAYER3)[:layer]:
        a, b = _next_layer(a, b, size)
    return a, b


def _side(radius: float, density: int, layer: int) -> int:
    return max(b - a + 1 for a, b in (_changed_range(c, radius, layer) for c in range(0, SIZE, density)))


def window_side(radius: float, density: int) -> int:
    """Side of the layer-2 window that holds every changed position of every mask."""
    return _side(radius, density, 2)


def worthwhile(radius: float, density: int) -> bool:
    """Whether windows are small enough to beat the plain batched pass (radius up to about 5)."""
    return window_side(radius, density) <= MAX_USEFUL_WINDOW


def _origins(centers: list[int], radius: float, layer: int, side: int, size: int) -> torch.Tensor:
    """Per center, the first row of a window of ``side`` rows that holds its changed rows, kept in the map."""
    return torch.tensor([min(max(_changed_range(c, radius, layer)[0], 0), size - side) for c in centers])


def _layer3_windows(centers: list[int], radius: float, density: int, o2: torch.Tensor, s2: int) -> tuple[int, torch.Tensor]:
    """The smallest layer-3 window side ``s3`` and, per center, an origin ``o3`` such that the window holds every
    layer-3 row the mask changes and conv3's input rows ``2*o3-1 .. 2*o3+2*s3-1`` hold the layer-2 window (so
    the region is the frame's activations with the layer-2 window pasted in). ``s3 = 10`` always works."""
    for s3 in range(_side(radius, density, 3), LAYER3 + 1):
        origins = []
        for c, a2 in zip(centers, o2.tolist()):
            lo3, hi3 = _changed_range(c, radius, 3)
            low = max(hi3 - s3 + 1, -((2 * s3 - a2 - s2) // 2), 0)  # the last: ceil((a2 + s2 - 2*s3) / 2)
            high = min(lo3, (a2 + 1) // 2, LAYER3 - s3)
            if low > high:
                break
            origins.append(low)
        else:
            return s3, torch.tensor(origins)
    raise RuntimeError("no layer-3 window fits (a bug): use incremental=False")


def _per_mask(axis: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, S) per-axis indices -> the row and column indices (M, S) of each mask (row-major by center)."""
    a = torch.arange(g * g, device=axis.device) // g
    b = torch.arange(g * g, device=axis.device) % g
    return axis[a], axis[b]


@lru_cache(maxsize=16)
def window_plan(radius: float, density: int, masks: torch.Tensor) -> WindowPlan:
    """Build (once per mask set) the window indices and mask patches; ``masks`` is (M, 80, 80)."""
    s2 = _side(radius, density, 2)
    centers = center_coords(density).tolist()
    g = len(centers)
    device = masks.device
    o2 = _origins(centers, radius, 2, s2, LAYER2)
    s3, o3 = _layer3_windows(centers, radius, density, o2, s2)
    origin_rows, origin_cols = _per_mask(o2[:, None].to(device), g)  # (M, 1)
    span = torch.arange(4 * s2 + 3, device=device)
    rows, cols = 4 * origin_rows + span, 4 * origin_cols + span  # (M, 4*s2+3)
    padded = F.pad(masks, (INPUT_PAD, 0, INPUT_PAD, 0))
    patches = padded[torch.arange(g * g, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    valid_r, valid_c = _per_mask((2 * o2[:, None] - 1 + torch.arange(2 * s2 + 1) >= 0).to(device, masks.dtype), g)
    # the layer-2 window inside conv3's region: real row o2 is row o2 + 1 of the padded map, 2*o3 its first
    win2_r, win2_c = _per_mask((o2[:, None] + 1 - 2 * o3[:, None] + torch.arange(s2)).to(device), g)
    region_rows, region_cols = _per_mask(o3[:, None].to(device), g)
    win3_r, win3_c = _per_mask((o3[:, None] + torch.arange(s3)).to(device), g)
    # every non-zero of every mask must lie in its patch, else the windows would miss a change
    if not torch.equal((patches != 0).flatten(1).sum(1), (masks != 0).flatten(1).sum(1)):
        raise RuntimeError("incremental window plan does not cover a mask's support (a bug): use incremental=False")
    return WindowPlan(
        side=s2,
        side3=s3,
        origin_rows=origin_rows[:, 0],
        origin_cols=origin_cols[:, 0],
        mask_patches=patches,
        layer1_valid=(valid_r[:, :, None] * valid_c[:, None, :])[:, None],
        region_rows=region_rows[:, 0],
        region_cols=region_cols[:, 0],
        window2_index=(win2_r[:, :, None] * (2 * s3 + 1) + win2_c[:, None, :]).flatten(1),
        layer3_index=(win3_r[:, :, None] * LAYER3 + win3_c[:, None, :]).flatten(1),
    )


class FrameActivations(NamedTuple):
    """What every perturbed copy of a frame shares: layer-2 activations padded by one zero row/column at the
    top/left (N, 32, 21, 21) and layer-3 activations (N, 32, 10, 10)."""

    layer2: torch.Tensor
    layer3: torch.Tensor


def frame_activations(agent: ActorCritic, x: torch.Tensor) -> FrameActivations:
    """Activations of what a perturbed copy equals outside its mask's box (the frame for occlude, its blur
    for searchlight), computed once per frame and shared by all its masks."""
    layer2 = agent.conv_activations(x, 0, 2)
    layer3 = agent.conv_activations(layer2, 2, 3)
    return FrameActivations(F.pad(layer2, (1, 0, 1, 0)), layer3)


def _paste(base: torch.Tensor, index: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``base`` (K, C, H, W), a fresh tensor, with ``window`` (K, C, h, w) written at flat positions ``index`` (K, h*w)."""
    out = base.flatten(2)
    out.scatter_(2, index[:, None, :].expand(-1, out.shape[1], -1), window.flatten(2))
    return out.view_as(base)


def perturbed_outputs(
    agent: ActorCritic,
    plan: WindowPlan,
    images: torch.Tensor,
    blurred: torch.Tensor,
    shared: FrameActivations,
    state: State,
    frame: torch.Tensor,
    mask: torch.Tensor,
    interp: str,
) -> PolicyOutput:
    """Outputs of the perturbed copies ``(frame[k], mask[k])``, computing conv1..conv3 on windows only.

    Args:
        images, blurred: frames and their blur (N, 80, 80) padded by 3 at the top/left -> (N, 83, 83).
        shared: :func:`frame_activations` of the frames.
        state: tuple of (N, hidden). frame, mask: (K,) index tensors.
    """
    k = frame.shape[0]
    rows_needed = padded_row_count(k)  # batch-invariant kernels, as in engine.batching
    if rows_needed != k:
        fill = frame.new_zeros(rows_needed - k)
        frame, mask = torch.cat([frame, fill]), torch.cat([mask, fill])
    # index_select, and one advanced index into a view of all windows, gather several times faster than
    # advanced indexing with broadcast index tensors on the CPU
    mask_rows, mask_cols = plan.origin_rows.index_select(0, mask), plan.origin_cols.index_select(0, mask)
    side = plan.mask_patches.shape[-1]
    image_patch, blurred_patch = (t.unfold(1, side, 4).unfold(2, side, 4)[frame, mask_rows, mask_cols] for t in (images, blurred))
    patch = perturb(image_patch, blurred_patch, plan.mask_patches.index_select(0, mask), interp)[:, None]
    conv1, conv2, conv3 = agent.conv1, agent.conv2, agent.conv3
    window1 = elu(F.conv2d(patch, conv1.weight, conv1.bias, stride=2)) * plan.layer1_valid.index_select(0, mask)
    window2 = elu(F.conv2d(window1, conv2.weight, conv2.bias, stride=2))
    # conv3's input region: the frame's layer-2 activations there, with the layer-2 window pasted in
    region_side = 2 * plan.side3 + 1
    region_rows, region_cols = plan.region_rows.index_select(0, mask), plan.region_cols.index_select(0, mask)
    region = shared.layer2.unfold(2, region_side, 2).unfold(3, region_side, 2)[frame, :, region_rows, region_cols]
    region = _paste(region, plan.window2_index.index_select(0, mask), window2)
    window3 = elu(F.conv2d(region, conv3.weight, conv3.bias, stride=2))
    layer3 = _paste(shared.layer3.index_select(0, frame), plan.layer3_index.index_select(0, mask), window3)
    features = agent.conv_activations(layer3, 3, 4).flatten(1)
    return agent.from_features(features, tuple(t.index_select(0, frame) for t in state), k)
