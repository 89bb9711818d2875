"""Exact incremental inference for perturbation batches (the idea of Krypton, SIGMOD 2019).

A mask blurred with a Gaussian truncated at 4 sigma is exactly zero outside a box around its center, and
there ``lerp(I, B, 0) == I`` exactly: a perturbed copy equals its frame outside the box (for searchlight,
``lerp(B, I, 0) == B``: it equals the blurred frame). So its first
convolution layers differ from the frame's own activations only inside a window that grows by the kernel
and shrinks by the stride, layer by layer. For every mask we compute conv1 and conv2 only on a window of
fixed size placed at its center (clamped inside the map), paste the layer-2 window into the frame's own
layer-2 activations (computed once per frame; the blurred frame's, for searchlight), and run conv3, conv4, the core and the heads as usual.
Results equal the plain batched pass up to float rounding (convolutions of a patch may round differently
from the same convolution of the whole map).

Geometry along one axis (the agent's convs are 3x3, stride 2, padding 1): input rows ``[y0, y1]`` change
layer-1 rows ``[floor(y0/2), floor((y1+1)/2)]`` and so on. A layer-2 window of side ``s2`` at origin ``o2``
needs layer-1 rows ``2*o2-1 .. 2*o2+2*s2-1`` (side ``2*s2+1``; row -1 is conv2's zero padding) and input
rows ``4*o2-3 .. 4*o2+4*s2-1`` (side ``4*s2+3``), i.e. ``4*o2 + k`` in an input padded by 3 at the top/left.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .batching import padded_row_count
from .blur import kernel_radius
from .masks import center_coords, perturb
from .policy import ActorCritic, PolicyOutput, State, elu, index_state
from .preprocessing import SIZE

LAYER1, LAYER2 = SIZE // 2, SIZE // 4  # 40, 20
INPUT_PAD = 3
# Past this window side (on the 20x20 layer-2 grid) the windows cost about as much as the plain pass.
MAX_USEFUL_WINDOW = 15


@dataclass(frozen=True)
class WindowPlan:
    """Where each mask's windows sit. ``G`` centers per axis, ``M = G*G`` masks (row-major by center).

    Attributes:
        side: layer-2 window side ``s2``.
        input_rows, input_cols: (M, 4*s2+3) indices into the frame padded by 3 at the top/left.
        mask_patches: (M, 4*s2+3, 4*s2+3) each mask on its input patch.
        layer1_valid: (M, 1, 2*s2+1, 2*s2+1) 0 where the layer-1 window lies on conv2's zero padding.
        layer2_index: (M, s2*s2) flat positions of the layer-2 window in the 20x20 map.
    """

    side: int
    input_rows: torch.Tensor
    input_cols: torch.Tensor
    mask_patches: torch.Tensor
    layer1_valid: torch.Tensor
    layer2_index: torch.Tensor


def _changed_layer2_range(center: int, radius: float) -> tuple[int, int]:
    reach = kernel_radius(radius) + 1  # the 5-pixel plus reaches 1 pixel, the truncated blur r pixels more
    y0, y1 = max(center - reach, 0), min(center + reach, SIZE - 1)
    a1, b1 = y0 // 2, min((y1 + 1) // 2, LAYER1 - 1)
    return a1 // 2, min((b1 + 1) // 2, LAYER2 - 1)


def window_side(radius: float, density: int) -> int:
    """Side of the layer-2 window that holds every changed position of every mask."""
    return max(b - a + 1 for a, b in (_changed_layer2_range(c, radius) for c in range(0, SIZE, density)))


def worthwhile(radius: float, density: int) -> bool:
    """Whether windows are small enough to beat the plain batched pass (radius up to about 5)."""
    return window_side(radius, density) <= MAX_USEFUL_WINDOW


@lru_cache(maxsize=16)
def window_plan(radius: float, density: int, masks: torch.Tensor) -> WindowPlan:
    """Build (once per mask set) the window indices and mask patches; ``masks`` is (M, 80, 80)."""
    s2 = window_side(radius, density)
    centers = center_coords(density).tolist()
    g = len(centers)
    origins = torch.tensor([min(max(_changed_layer2_range(c, radius)[0], 0), LAYER2 - s2) for c in centers])
    device = masks.device
    axis_input = (4 * origins[:, None] + torch.arange(4 * s2 + 3)).to(device)  # (G, 4*s2+3)
    axis_valid = (2 * origins[:, None] - 1 + torch.arange(2 * s2 + 1) >= 0).to(device, masks.dtype)  # (G, 2*s2+1)
    axis_layer2 = (origins[:, None] + torch.arange(s2)).to(device)  # (G, s2)
    a = torch.arange(g * g, device=device) // g  # row-center number of each mask
    b = torch.arange(g * g, device=device) % g
    rows, cols = axis_input[a], axis_input[b]
    padded = F.pad(masks, (INPUT_PAD, 0, INPUT_PAD, 0))
    patches = padded[torch.arange(g * g, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    valid = (axis_valid[a][:, :, None] * axis_valid[b][:, None, :])[:, None]
    layer2 = (axis_layer2[a][:, :, None] * LAYER2 + axis_layer2[b][:, None, :]).flatten(1)
    # every non-zero of every mask must lie in its patch, else the windows would miss a change
    if not torch.equal((patches != 0).flatten(1).sum(1), (masks != 0).flatten(1).sum(1)):
        raise RuntimeError("incremental window plan does not cover a mask's support (a bug): use incremental=False")
    return WindowPlan(s2, rows, cols, patches, valid, layer2)


def frame_activations(agent: ActorCritic, x: torch.Tensor) -> torch.Tensor:
    """Layer-2 activations (N, 32, 20, 20) of what a perturbed copy equals outside its mask's box (the frame
    for occlude, its blur for searchlight), computed once per frame and shared by all its masks."""
    return agent.conv_activations(x, 0, 2)


def perturbed_outputs(
    agent: ActorCritic,
    plan: WindowPlan,
    images: torch.Tensor,
    blurred: torch.Tensor,
    layer2: torch.Tensor,
    state: State,
    frame: torch.Tensor,
    mask: torch.Tensor,
    interp: str,
) -> PolicyOutput:
    """Outputs of the perturbed copies ``(frame[k], mask[k])``, computing conv1/conv2 on windows only.

    Args:
        images, blurred: frames and their blur (N, 80, 80) padded by 3 at the top/left -> (N, 83, 83).
        layer2: :func:`frame_activations` of the frames, (N, 32, 20, 20).
        state: tuple of (N, hidden). frame, mask: (K,) index tensors.
    """
    k = frame.shape[0]
    rows_needed = padded_row_count(k)  # batch-invariant kernels, as in engine.batching
    if rows_needed != k:
        fill = frame.new_zeros(rows_needed - k)
        frame, mask = torch.cat([frame, fill]), torch.cat([mask, fill])
    f, r, c = frame[:, None, None], plan.input_rows[mask][:, :, None], plan.input_cols[mask][:, None, :]
    patch = perturb(images[f, r, c], blurred[f, r, c], plan.mask_patches[mask], interp)[:, None]
    conv1, conv2 = agent.conv1, agent.conv2
    window1 = elu(F.conv2d(patch, conv1.weight, conv1.bias, stride=2)) * plan.layer1_valid[mask]
    window2 = elu(F.conv2d(window1, conv2.weight, conv2.bias, stride=2))
    act = layer2[frame].flatten(2)  # a copy: (K, 32, 400)
    act.scatter_(2, plan.layer2_index[mask][:, None, :].expand(-1, act.shape[1], -1), window2.flatten(2))
    features = agent.conv_activations(act.view(-1, act.shape[1], LAYER2, LAYER2), 2, 4).flatten(1)
    return agent.from_features(features, index_state(state, frame), k)
