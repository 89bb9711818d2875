"""Exact incremental inference for perturbation batches (the idea of Krypton, SIGMOD 2019), for any policy whose
network starts with a chain of convolutions and pointwise activations (:class:`engine.core.policy.IncrementalPolicy`:
the 2017 agents' four 3x3/2 ELU convolutions, the Nature CNN's 8x8/4, 4x4/2, 3x3/1 ReLU ones, ...).

A mask blurred with a Gaussian truncated at 4 sigma is exactly zero outside a box around its center, and there
``lerp(I, B, 0) == I`` exactly: a perturbed copy equals its observation outside the box (for searchlight,
``lerp(B, I, 0) == B``: it equals the blurred observation). A convolution's output row ``i`` reads input rows
``s*i - p .. s*i - p + k - 1`` (kernel extent ``k``, dilated, stride ``s``, zero padding ``p``) and a pointwise
activation keeps positions apart, so if input rows ``[a, b]`` changed, only output rows
``ceil((a + p - k + 1) / s) .. floor((b + p) / s)`` (clipped to the map) can change; the same along columns.
Layer by layer this gives each mask's changed box at every trunk layer, from the mask's own support.

The trunk's layers ``1..L`` are split into *segments* of consecutive layers, and the windows stop at a layer
``L* <= L``. In each segment the last layer's window, of one fixed side per axis for all masks (so copies batch),
is placed per mask to hold that mask's changed box; the windows of the segment's earlier layers are exactly
what the later ones read (regions ``s*o - p .. s*(o + S - 1) - p + k - 1``, their positions on the next
convolution's zero padding set to 0), down to the region of the segment's input. The first segment reads its
region from the perturbed observation (built only there: the observation, its blur and the mask on that patch,
zero-padded like the convolutions); a later segment reads its region from the observation's own activations of
the layer before it (computed once per observation, zero-padded, shared by all its masks) with the previous
segment's window pasted in (windows are placed so that the region holds it). The last window is pasted into the
observation's own layer-``L*`` activations, the remaining trunk layers run on whole maps, and
``policy.from_trunk`` runs the rest. Every value that enters a convolution is thus the perturbed copy's own,
and each convolution gets its input in the memory layout the plain pass gives it (so it runs the same kernel):
the results equal the plain batched pass up to float rounding, and so far bit for bit (the 2017 agents, the
Nature CNN, float32 and float64, CPU and an H200). Which ``L*`` and segments to use, and whether the windows pay
at all (``incremental="auto"``, :func:`worthwhile`), is decided by a cost estimate from the window sizes, with
one :class:`CostProfile` for CPUs and one for GPUs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from .batching import padded_row_count
from .masks import perturb
from .policy import Activation, ConvTrunk, IncrementalPolicy, Policy, PolicyOutput, State


class CostProfile(NamedTuple):
    """How a kind of device spends its time, for the cost estimate (:class:`Work`).

    Attributes:
        weights: in multiply-adds, of a multiply-add, a convolution output written (with its activation), an
            element gathered or pasted, and an element of the perturbed input built.
        per_copy: a fixed cost per perturbed copy (scores, indexing, the network after the trunk).
        worthwhile: ``incremental="auto"`` uses windows when their estimated cost is at most this share of the
            plain pass's.
        segments: the most segments a plan may have (None: any).
    """

    weights: tuple[float, float, float, float]
    per_copy: float
    worthwhile: float
    segments: int | None


# Chosen so that the choices made are the fastest measured or close to them (every window choice and the plain
# pass, timed for the 2017 agent and a Nature-CNN agent at radius 2-8, density 5; see the README). On a CPU (a
# 2-core Xeon, oneDNN) memory traffic, not arithmetic, dominates, and the choices are within 10% of the fastest;
# on a GPU (an H200) arithmetic is almost free and every segment boundary (a region gathered from the shared
# activations, a window pasted, a layout converted) costs more than it saves, so plans there have one segment
# (within 4% of the fastest). Near the threshold the two paths take about the same time.
# Fast precision (delta propagation, engine.core.delta) walks the same windows with about twice the work per layer
# (two products per linear layer on a CPU, the observation's activations read beside each delta) and the same
# fixed cost per copy, so windows pay relatively more: on the CPU its profile halves the per-copy cost and draws the
# line at 0.95 (fitted on baby-a3c, builtin/pong_ppo and CleanRL ppo_atari at radius 2-8, density 5:
# benchmarks/incremental_choice.py, benchmarks/results/incremental_choice_cpu.json). Fast mode on a GPU has not
# been timed yet: it uses the GPU's exact profile.
PROFILES = {
    "cpu": CostProfile((1.0, 100.0, 25.0, 25.0), 4.0e6, 0.8, None),
    "cuda": CostProfile((0.1, 25.0, 10.0, 25.0), 1.0e6, 1.0, 1),
    "cpu_fast": CostProfile((1.0, 100.0, 25.0, 25.0), 2.0e6, 0.95, None),
    "cuda_fast": CostProfile((0.1, 25.0, 10.0, 25.0), 1.0e6, 1.0, 1),
}


def cost_profile(device: torch.device, fast: bool = False) -> CostProfile:
    """The profile of a device: the CPU's for the CPU, the GPU's for any accelerator; ``fast``: for fast
    precision's delta propagation."""
    kind = "cpu" if torch.device(device).type == "cpu" else "cuda"
    return PROFILES[f"{kind}_fast" if fast else kind]


@dataclass(frozen=True)
class ConvGeometry:
    """One convolution along (rows, columns): kernel extent (dilation included), stride, zero padding."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_channels: int
    out_channels: int
    groups: int
    taps: int  # kernel positions (rows * columns), without dilation

    @property
    def macs(self) -> int:
        """Multiply-adds per output element."""
        return self.in_channels // self.groups * self.taps


@dataclass(frozen=True)
class TrunkGeometry:
    """A trunk on observations ``input_shape`` (C, H, W); ``rest_cost``: multiply-adds of the network after it
    (its parameter count), which the plain and the windowed pass share."""

    input_shape: tuple[int, int, int]
    convs: tuple[ConvGeometry, ...]
    rest_cost: int = 0

    def sizes(self, axis: int) -> list[int]:
        """Map sizes along ``axis`` (0: rows, 1: columns) of the input and of each layer's output."""
        sizes = [self.input_shape[1 + axis]]
        for c in self.convs:
            sizes.append((sizes[-1] + 2 * c.padding[axis] - c.kernel[axis]) // c.stride[axis] + 1)
        return sizes

    def channels(self, layer: int) -> int:
        """Channels of layer ``layer`` (0: the observation)."""
        return self.input_shape[0] if layer == 0 else self.convs[layer - 1].out_channels


def conv_trunk_of(agent: Policy) -> ConvTrunk | None:
    """The agent's declared :class:`ConvTrunk` (checked), or None if it declares none (it runs plain passes)."""
    declare, rest = getattr(agent, "conv_trunk", None), getattr(agent, "from_trunk", None)
    if not (callable(declare) and callable(rest)):
        return None
    trunk = declare()
    name = type(agent).__name__
    layers = getattr(trunk, "layers", None)
    if not isinstance(layers, (tuple, list)) or not layers:
        raise ValueError(
            f"{name}.conv_trunk() must return an engine.core.policy.ConvTrunk with at least one layer, got {trunk!r}"
        )
    scale = getattr(trunk, "input_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name}.conv_trunk().input_scale must be a finite number, got {scale!r}")
    channels = agent.observation_shape[0]
    for index, layer in enumerate(layers):
        conv, act = layer
        where = f"{name}.conv_trunk() layer {index + 1}"
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{where}: expected an nn.Conv2d, got {type(conv).__name__}")
        if act is not None and not callable(act):
            raise ValueError(f"{where}: the activation must be a pointwise callable or None, got {act!r}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"{where}: padding_mode={conv.padding_mode!r}; incremental inference needs zero padding")
        if conv.in_channels != channels:
            raise ValueError(f"{where}: takes {conv.in_channels} channels, but the layer before gives {channels}")
        channels = conv.out_channels
    return ConvTrunk(tuple((conv, act) for conv, act in layers), float(scale))


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(
                f"{conv}: padding='same' is asymmetric for this kernel; incremental inference needs symmetric padding"
            )
        return (total[0] // 2, total[1] // 2)
    return cast(tuple[int, int], tuple(int(p) for p in conv.padding))  # a Conv2d holds a pair


def trunk_geometry(agent: Policy, trunk: ConvTrunk) -> TrunkGeometry:
    """The window arithmetic's view of a trunk on the agent's observations (a ValueError if its maps vanish)."""
    convs = tuple(
        ConvGeometry(
            kernel=cast(tuple[int, int], tuple(d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size))),
            stride=cast(tuple[int, int], tuple(conv.stride)),
            padding=_padding(conv),
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            groups=conv.groups,
            taps=conv.kernel_size[0] * conv.kernel_size[1],
        )
        for conv, _ in trunk.layers
    )
    rest = 0
    if isinstance(agent, nn.Module):
        trunk_params = {id(p) for conv, _ in trunk.layers for p in conv.parameters()}
        rest = sum(p.numel() for p in agent.parameters() if id(p) not in trunk_params)
    shape = cast(tuple[int, int, int], tuple(int(s) for s in agent.observation_shape))
    geometry = TrunkGeometry(shape, convs, rest)
    for axis in (0, 1):
        if min(geometry.sizes(axis)) < 1:
            raise ValueError(
                f"{type(agent).__name__}'s conv trunk maps {tuple(agent.observation_shape)} to nothing (sizes {geometry.sizes(axis)})"
            )
    return geometry


# --- the window arithmetic, along one axis ---------------------------------------------------------------------


def changed_ranges(geometry: TrunkGeometry, axis: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """Rows (axis 0) or columns (axis 1) ``[lo, hi]`` of each layer (0: the input) that can change when input rows
    ``[lo, hi]`` change (a superset where a convolution reads none of them)."""
    sizes, ranges = geometry.sizes(axis), [(lo, hi)]
    for c, n in zip(geometry.convs, sizes[1:]):
        k, s, p = c.kernel[axis], c.stride[axis], c.padding[axis]
        a, b = max(-(-(lo + p - k + 1) // s), 0), min((hi + p) // s, n - 1)
        lo, hi = (a, b) if a <= b else (min(a, n - 1),) * 2
        ranges.append((lo, hi))
    return ranges


def _backward(geometry: TrunkGeometry, axis: int, first: int, last: int) -> tuple[int, int, int]:
    """``(P, Q, E)``: a layer-``last`` window at origin ``o`` of side ``S`` reads, through layers ``first..last``,
    the layer-``first-1`` region at origin ``P*o - Q`` of side ``P*S + E``."""
    scale, shift, extra = 1, 0, 0
    for c in reversed(geometry.convs[first - 1 : last]):
        k, s, p = c.kernel[axis], c.stride[axis], c.padding[axis]
        scale, shift, extra = s * scale, s * shift + p, s * extra - s + k
    return scale, shift, extra


def _place(
    geometry: TrunkGeometry,
    axis: int,
    first: int,
    last: int,
    changed: list[tuple[int, int]],
    previous: tuple[list[int], int] | None,
) -> tuple[int, list[int]] | None:
    """Smallest side ``S`` of the layer-``last`` windows and each mask's origin: the window holds the mask's
    changed rows ``changed[m]`` and stays in the map, and (``previous``: the layer-``first-1`` windows' origins
    and side) its region at layer ``first-1`` holds the previous window. None if no side works."""
    n = geometry.sizes(axis)[last]
    scale, shift, extra = _backward(geometry, axis, first, last)
    for side in range(max(hi - lo + 1 for lo, hi in changed), n + 1):
        region = scale * side + extra
        origins: list[int] = []
        for m, (lo, hi) in enumerate(changed):
            low, high = max(hi - side + 1, 0), min(lo, n - side)
            if previous is not None:
                start, width = previous[0][m], previous[1]
                low = max(
                    low, -((region - shift - start - width) // scale)
                )  # ceil((start + width - region + shift) / scale)
                high = min(high, (start + shift) // scale)
            if low > high:
                break
            origins.append(high)
        else:
            return side, origins
    return None


@dataclass(frozen=True)
class _AxisSegment:
    """One segment along one axis: window sides of layers ``first-1..last`` (index 0: the region read) and each
    mask's window origins there (layer coordinates; negative or past the map on zero padding)."""

    sides: tuple[int, ...]
    origins: tuple[tuple[int, ...], ...]  # [layer][mask]


def _axis_plan(
    geometry: TrunkGeometry, axis: int, segments: Sequence[tuple[int, int]], changed: list[list[tuple[int, int]]]
) -> list[_AxisSegment] | None:
    """Windows of every segment along one axis, or None if these segments admit none. ``changed[m][layer]``."""
    out: list[_AxisSegment] = []
    previous: tuple[list[int], int] | None = None
    for first, last in segments:
        placed = _place(geometry, axis, first, last, [c[last] for c in changed], previous)
        if placed is None:
            return None
        side, origins = placed
        sides, rows = [side], [origins]
        for c in reversed(geometry.convs[first - 1 : last]):
            k, s, p = c.kernel[axis], c.stride[axis], c.padding[axis]
            sides.insert(0, s * (sides[0] - 1) + k)
            rows.insert(0, [s * o - p for o in rows[0]])
        out.append(_AxisSegment(tuple(sides), tuple(tuple(r) for r in rows)))
        previous = (origins, side)
    return out


Structure = tuple[tuple[tuple[int, int], ...], int]  # (segments (first, last), stop)


def _structures(layers: int) -> Iterator[Structure]:
    """Every (segments, stop): windows on layers ``1..stop`` split into runs of consecutive layers."""
    for stop in range(1, layers + 1):
        for cuts in itertools.product((False, True), repeat=stop - 1):
            segments: list[tuple[int, int]] = []
            first = 1
            for layer, cut in enumerate(cuts, start=1):
                if cut:
                    segments.append((first, layer))
                    first = layer + 1
            segments.append((first, stop))
            yield tuple(segments), stop


class Work(NamedTuple):
    """What one perturbed copy costs, by kind: multiply-adds, convolution outputs written (with their
    activation), elements gathered or pasted, and elements of the perturbed input built."""

    macs: float = 0
    written: float = 0
    moved: float = 0
    perturbed: float = 0

    # elementwise, not tuple concatenation; typed with tuple.__add__'s argument (any tuple) to stay a valid override
    def __add__(self, other: tuple[Any, ...]) -> Work:
        return Work(*(a + b for a, b in zip(self, other)))

    def cost(self, profile: CostProfile) -> float:
        """The estimate, in multiply-adds, on a device of this :class:`CostProfile`."""
        return profile.per_copy + sum(w * n for w, n in zip(profile.weights, self))


def _full_layer(geometry: TrunkGeometry, layer: int) -> Work:
    elements = geometry.channels(layer) * geometry.sizes(0)[layer] * geometry.sizes(1)[layer]
    return Work(macs=elements * geometry.convs[layer - 1].macs, written=elements)


def plain_work(geometry: TrunkGeometry) -> Work:
    """One plain forward pass of a perturbed copy (its perturbation included; the network after the trunk, its
    parameter count in multiply-adds, is shared with the windows)."""
    c, h, w = geometry.input_shape
    work = Work(macs=geometry.rest_cost, perturbed=c * h * w)
    for layer in range(1, len(geometry.convs) + 1):
        work = work + _full_layer(geometry, layer)
    return work


def windows_work(
    geometry: TrunkGeometry,
    segments: Sequence[tuple[int, int]],
    stop: int,
    axes: tuple[list[_AxisSegment], list[_AxisSegment]],
    masks: int,
) -> Work:
    """One perturbed copy through windows ``axes`` (rows, columns: :func:`_axis_plan`) of these segments."""
    rows, cols = axes
    work = Work(macs=geometry.rest_cost, perturbed=geometry.channels(0) * rows[0].sides[0] * cols[0].sides[0])
    for index, (first, last) in enumerate(segments):
        r, c = rows[index], cols[index]
        if index:  # the region gathered from the shared activations, the previous window pasted in
            pr, pc = rows[index - 1], cols[index - 1]
            work = work + Work(
                moved=geometry.channels(first - 1) * (r.sides[0] * c.sides[0] + pr.sides[-1] * pc.sides[-1])
            )
        for offset, layer in enumerate(range(first, last + 1), start=1):
            elements = geometry.channels(layer) * r.sides[offset] * c.sides[offset]
            work = work + Work(
                macs=elements * geometry.convs[layer - 1].macs, written=elements * (1 if layer == last else 2)
            )
    full = (geometry.sizes(0)[stop], geometry.sizes(1)[stop])
    if (rows[-1].sides[-1], cols[-1].sides[-1]) != full:
        work = work + Work(
            moved=geometry.channels(stop) * (full[0] * full[1] + rows[-1].sides[-1] * cols[-1].sides[-1])
        )
    for layer in range(1, len(geometry.convs) + 1):
        full_work = _full_layer(geometry, layer)
        # the layers after the windows run on whole maps; those before, once per observation (shared)
        work = work + (full_work if layer > stop else Work(*(n / masks for n in full_work)))
    return work


@dataclass(frozen=True)
class Segment:
    """Tensors of one segment (layers ``first..last``) for a mask set of M masks.

    Attributes:
        region: (rows, columns) side of the region of layer ``first-1`` it reads; step: the unfold step that
            places it (the product of the segment's strides): the region of mask m is window
            ``(rows[m], cols[m])`` of ``map.unfold(2, region[0], step[0]).unfold(3, region[1], step[1])`` on the
            map padded by ``pad`` = (left, right, top, bottom).
        rows, cols: (M,) those unfold indices (the layer-``last`` window's origin).
        valid: per layer ``first..last-1``: (M, 1, h, w) 0 where its window lies on the next convolution's zero
            padding, or None where no window does.
        paste_index: (M, h*w) flat positions of the previous segment's window in the region (None for the first).
    """

    first: int
    last: int
    region: tuple[int, int]
    step: tuple[int, int]
    pad: tuple[int, int, int, int]
    rows: torch.Tensor
    cols: torch.Tensor
    valid: tuple[torch.Tensor | None, ...]
    paste_index: torch.Tensor | None


@dataclass(frozen=True)
class WindowPlan:
    """Where each mask's windows sit (M masks, row-major by center), for one trunk geometry.

    Attributes:
        segments: the segments in order; stop: the last windowed layer ``L*``.
        mask_patches: (M, h, w) each mask on the first segment's input region.
        final_index: (M, h*w) flat positions of the last window in the layer-``L*`` map, or None where it is the
            whole map.
        windows: per layer ``0..L*``: (row origins (M,), column origins (M,), (h, w)) of the window computed there
            (layer 0: the first segment's input region; positions on zero padding included).
        cost, plain: estimated multiply-adds per perturbed copy of these windows and of the plain pass, on a device
            of ``profile`` (the masks' device).
    """

    segments: tuple[Segment, ...]
    stop: int
    mask_patches: torch.Tensor
    final_index: torch.Tensor | None
    windows: tuple[tuple[torch.Tensor, torch.Tensor, tuple[int, int]], ...]
    cost: float
    plain: float
    profile: CostProfile

    @property
    def structure(self) -> tuple[tuple[tuple[int, int], ...], int]:
        return tuple((s.first, s.last) for s in self.segments), self.stop

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Observations (N, C, H, W) zero-padded for the first segment's regions (channels last: see :func:`_regions`)."""
        return F.pad(x, self.segments[0].pad)


def worthwhile(plan: WindowPlan) -> bool:
    """Whether the windows are small enough to beat the plain batched pass (``incremental="auto"``)."""
    return plan.cost <= plan.profile.worthwhile * plan.plain


class UnsupportedTrunk(ValueError):
    """A trunk geometry the window planner cannot place windows for (a convolution padded by more than its kernel
    reaches): its agent runs plain passes."""


def reach(geometry: TrunkGeometry, axis: int) -> tuple[int, int]:
    """The input rows (axis 0) or columns (axis 1) the trunk's output can depend on, ``[lo, hi]``: a trunk whose
    strides do not divide its input (a Nature CNN on 210 rows) never reads the last ones, and a mask there changes
    nothing."""
    n = geometry.sizes(axis)
    scale, shift, extra = _backward(geometry, axis, 1, len(geometry.convs))
    lo, hi = -shift, -shift + scale * n[-1] + extra - 1
    return max(lo, 0), min(hi, n[0] - 1)


def _support(masks: torch.Tensor, axis: int) -> list[tuple[int, int]]:
    """Per mask, the first and last row (axis 0) or column (axis 1) where it is non-zero."""
    hit = (masks != 0).any(dim=2 - axis).cpu()
    positions = torch.arange(hit.shape[1])
    lo = torch.where(hit, positions, hit.shape[1]).amin(1)
    hi = torch.where(hit, positions, -1).amax(1)
    return list(zip(lo.tolist(), hi.tolist()))


@lru_cache(maxsize=16)
def window_plan(
    geometry: TrunkGeometry, masks: torch.Tensor, structure: Structure | None = None, fast: bool = False
) -> WindowPlan:
    """The cheapest windows (by the cost estimate) for ``masks`` (M, H, W) on this trunk; ``structure``
    ``(segments, stop)`` forces one (tests); ``fast``: estimated for fast precision (:func:`cost_profile`). Cached
    per (geometry, mask set, fast)."""
    m = masks.shape[0]
    if any(lo > hi for lo, hi in _support(masks, 0)):
        raise ValueError("a perturbation mask is zero everywhere")
    # what lies beyond the trunk's reach changes no output: the windows cover each mask's part within it
    (row_lo, row_hi), (col_lo, col_hi) = reach(geometry, 0), reach(geometry, 1)
    if (row_lo, row_hi, col_lo, col_hi) != (0, masks.shape[1] - 1, 0, masks.shape[2] - 1):
        inside = torch.zeros_like(masks[:1])
        inside[:, row_lo : row_hi + 1, col_lo : col_hi + 1] = 1
        masks = masks * inside
    # along each axis a mask's windows depend only on its support there: place them once per distinct support
    supports: list[list[tuple[int, int]]] = []
    inverse: list[list[int]] = []
    for axis, first_read in ((0, row_lo), (1, col_lo)):
        # a mask wholly beyond the reach changes nothing: any window does (its patch is zero)
        support = [(lo, hi) if lo <= hi else (first_read, first_read) for lo, hi in _support(masks, axis)]
        distinct = sorted(set(support))
        supports.append(distinct)
        inverse.append([distinct.index(s) for s in support])
    changed = [[changed_ranges(geometry, axis, lo, hi) for lo, hi in supports[axis]] for axis in (0, 1)]
    best: tuple[float, tuple[tuple[int, int], ...], int, tuple[list[_AxisSegment], list[_AxisSegment]]] | None = None
    profile = cost_profile(masks.device, fast)
    candidates = [
        s for s in _structures(len(geometry.convs)) if profile.segments is None or len(s[0]) <= profile.segments
    ]
    for segments, stop in [structure] if structure is not None else candidates:
        row_plan, col_plan = [_axis_plan(geometry, axis, segments, changed[axis]) for axis in (0, 1)]
        if row_plan is None or col_plan is None:
            continue
        axes = (row_plan, col_plan)
        cost = windows_work(geometry, segments, stop, axes, m).cost(profile)
        if best is None or cost < best[0]:
            best = (cost, segments, stop, axes)
    if best is None:
        raise RuntimeError(f"no windows fit the structure {structure} (a bug): use incremental=False")
    cost, segments, stop, axes = best
    rows, cols = (
        [_AxisSegment(a.sides, tuple(tuple(o[i] for i in inverse[axis]) for o in a.origins)) for a in axes[axis]]
        for axis in (0, 1)
    )
    return _build(geometry, masks, segments, stop, rows, cols, cost, profile)


def _build(
    geometry: TrunkGeometry,
    masks: torch.Tensor,
    segments: Sequence[tuple[int, int]],
    stop: int,
    rows: list[_AxisSegment],
    cols: list[_AxisSegment],
    cost: float,
    profile: CostProfile,
) -> WindowPlan:
    device, m = masks.device, masks.shape[0]
    built: list[Segment] = []
    windows: dict[int, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = {}
    for index, (first, last) in enumerate(segments):
        r, c = rows[index], cols[index]
        for offset, layer in enumerate(range(first - 1, last + 1)):
            if layer not in windows:  # a segment's last window, not the next segment's region around it
                windows[layer] = (
                    torch.tensor(r.origins[offset]),
                    torch.tensor(c.origins[offset]),
                    (r.sides[offset], c.sides[offset]),
                )
        steps = cast(tuple[int, int], tuple(_backward(geometry, axis, first, last)[0] for axis in (0, 1)))
        pads: list[tuple[int, int]] = []
        for axis, a in enumerate((r, c)):
            n = geometry.sizes(axis)[first - 1]
            top = -min(a.origins[0])
            bottom = max(max(a.origins[0]) + a.sides[0] - n, 0)
            pads.append((top, bottom))
            # the unfold index of each region is its last window's origin
            if not all(o0 + top == steps[axis] * o for o0, o in zip(a.origins[0], a.origins[-1])):
                raise UnsupportedTrunk(
                    "incremental windows cannot be placed on this trunk (a convolution padded by more than its "
                    "kernel reaches): use incremental=False or 'auto'"
                )
        valid = []
        for offset, layer in enumerate(range(first, last), start=1):
            parts = []
            for axis, a in enumerate((r, c)):
                n = geometry.sizes(axis)[layer]
                at = torch.tensor(a.origins[offset])[:, None] + torch.arange(a.sides[offset])
                parts.append(((at >= 0) & (at < n)).to(device=device, dtype=masks.dtype))
            inside = parts[0][:, :, None] * parts[1][:, None, :]
            valid.append(None if bool((inside == 1).all()) else inside[:, None])
        paste = None
        if index:
            pr, pc = rows[index - 1], cols[index - 1]
            offsets = [torch.tensor(p.origins[-1]) - torch.tensor(a.origins[0]) for p, a in ((pr, r), (pc, c))]
            at_r = offsets[0][:, None] + torch.arange(pr.sides[-1])
            at_c = offsets[1][:, None] + torch.arange(pc.sides[-1])
            assert (
                int(at_r.min()) >= 0
                and int(at_r.max()) < r.sides[0]
                and int(at_c.min()) >= 0
                and int(at_c.max()) < c.sides[0]
            )
            paste = (at_r[:, :, None] * c.sides[0] + at_c[:, None, :]).flatten(1).to(device)
        built.append(
            Segment(
                first=first,
                last=last,
                region=(r.sides[0], c.sides[0]),
                step=steps,
                pad=(pads[1][0], pads[1][1], pads[0][0], pads[0][1]),
                rows=torch.tensor(r.origins[-1], device=device),
                cols=torch.tensor(c.origins[-1], device=device),
                valid=tuple(valid),
                paste_index=paste,
            )
        )
    head = built[0]
    padded = F.pad(masks, head.pad)
    patches = padded.unfold(1, head.region[0], head.step[0]).unfold(2, head.region[1], head.step[1])
    patches = patches[torch.arange(m, device=device), head.rows, head.cols]
    # every non-zero of every mask must lie in its patch, else the windows would miss a change
    if not torch.equal((patches != 0).flatten(1).sum(1), (masks != 0).flatten(1).sum(1)):
        raise RuntimeError("incremental window plan does not cover a mask's support (a bug): use incremental=False")
    last_r, last_c = rows[-1], cols[-1]
    full = (geometry.sizes(0)[stop], geometry.sizes(1)[stop])
    final = None
    if (last_r.sides[-1], last_c.sides[-1]) != full:
        at_r = torch.tensor(last_r.origins[-1])[:, None] + torch.arange(last_r.sides[-1])
        at_c = torch.tensor(last_c.origins[-1])[:, None] + torch.arange(last_c.sides[-1])
        final = (at_r[:, :, None] * full[1] + at_c[:, None, :]).flatten(1).to(device)
    return WindowPlan(
        tuple(built),
        stop,
        patches.contiguous(),
        final,
        tuple(windows[layer] for layer in range(stop + 1)),
        cost,
        plain_work(geometry).cost(profile),
        profile,
    )


# --- running the windows ----------------------------------------------------------------------------------------


def _layer(conv: nn.Conv2d, act: Activation | None, x: torch.Tensor, padded: bool = True) -> torch.Tensor:
    """``act(conv(x))``; without ``padded`` the convolution reads ``x`` as it is (a window's region)."""
    x = conv(x) if padded else F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    return x if act is None else act(x)


class SharedActivations(NamedTuple):
    """What a perturbed copy equals outside its mask's windows, once per observation (N rows), shared by all its
    masks: per later segment, the activations it reads its regions from (zero-padded, channels last for fast
    gathers) and the memory format the plain pass holds them in; then the layer-``L*`` activations the last
    windows are pasted into (or None where the last windows are whole maps)."""

    regions: tuple[torch.Tensor, ...]
    formats: tuple[torch.memory_format, ...]
    final: torch.Tensor | None


def _format(t: torch.Tensor) -> torch.memory_format:
    """The memory format of a (N, C, H, W) tensor (contiguous where both fit, as for C = 1)."""
    return (
        torch.channels_last
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        else torch.contiguous_format
    )


def shared_activations(trunk: ConvTrunk, plan: WindowPlan, x: torch.Tensor, n: int) -> SharedActivations:
    """:class:`SharedActivations` of the first ``n`` rows of ``x`` (rows padded as in ``engine.core.batching``; the
    observations for occlude, their blur for searchlight), computed as the plain pass computes them."""
    regions, formats, needed = [], [], {s.first - 1: s.pad for s in plan.segments[1:]}
    a = x * trunk.input_scale if trunk.input_scale != 1 else x
    for layer in range(1, plan.stop + 1):
        a = _layer(*trunk.layers[layer - 1], a)
        if layer in needed:
            regions.append(F.pad(a[:n], needed[layer]).contiguous(memory_format=torch.channels_last))
            formats.append(_format(a))
    return SharedActivations(tuple(regions), tuple(formats), a[:n] if plan.final_index is not None else None)


def _paste(base: torch.Tensor, index: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``base`` (K, C, H, W), a fresh tensor, with ``window`` (K, C, h, w) written at flat positions ``index`` (K, h*w)
    of each map. A channels-last ``base`` takes whole pixels (C contiguous values) at once, which is faster."""
    k, c, h, w = base.shape
    if base.is_contiguous(memory_format=torch.channels_last):
        pixels = (index + torch.arange(k, device=index.device)[:, None] * (h * w)).flatten()
        base.permute(0, 2, 3, 1).view(k * h * w, c).index_copy_(0, pixels, window.permute(0, 2, 3, 1).reshape(-1, c))
        return base
    out = base.flatten(2)
    out.scatter_(2, index[:, None, :].expand(-1, c, -1), window.flatten(2))
    return out.view_as(base)


def _regions(t: torch.Tensor, segment: Segment, frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The regions (K, C, h, w) of ``segment`` for (frame[k], mask[k]) in the padded maps ``t`` (N, C, H', W')."""
    (h, w), (sh, sw) = segment.region, segment.step
    rows, cols = segment.rows.index_select(0, mask), segment.cols.index_select(0, mask)
    # one advanced index into a view of all windows: several times faster than gathers with broadcast indices,
    # and several times faster again from a channels-last map (each region row is one run of memory); the regions
    # come out channels last, the layout the CPU convolutions are fastest on
    return t.unfold(2, h, sh).unfold(3, w, sw)[frame, :, rows, cols]


def window_regions(
    t: torch.Tensor,
    size: tuple[int, int],
    step: tuple[int, int],
    rows: torch.Tensor,
    cols: torch.Tensor,
    frame: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The windows (K, C, h, w) of side ``size`` for (frame[k], mask[k]) in the maps ``t`` (N, C, H', W'): window
    ``(rows[m], cols[m])`` of ``t.unfold(2, h, step[0]).unfold(3, w, step[1])`` (as :func:`_regions` gathers a
    segment's regions; fastest from a channels-last ``t``)."""
    (h, w), (sh, sw) = size, step
    return t.unfold(2, h, sh).unfold(3, w, sw)[frame, :, rows.index_select(0, mask), cols.index_select(0, mask)]


def segment_regions(t: torch.Tensor, segment: Segment, frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The regions (K, C, h, w) of ``segment`` for (frame[k], mask[k]) in the padded maps ``t`` (N, C, H', W')
    (the regions :func:`perturbed_outputs` reads)."""
    return _regions(t, segment, frame, mask)


def padded_windows(t: torch.Tensor, plan: WindowPlan, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``t`` (N, C, H, W), maps of trunk layer ``layer`` (0: the input), zero-padded so that every mask's window
    there (``plan.windows[layer]``, positions on the convolutions' zero padding included) lies inside it, channels
    last (fast gathers), and each mask's window origin in it, rows and columns (M,) on ``t``'s device: window m of
    frame f is ``window_regions(padded, plan.windows[layer][2], (1, 1), rows, cols, f, m)``."""
    rows, cols, (h, w) = plan.windows[layer]
    top, left = max(-int(rows.min()), 0), max(-int(cols.min()), 0)
    bottom, right = max(int(rows.max()) + h - t.shape[2], 0), max(int(cols.max()) + w - t.shape[3], 0)
    padded = F.pad(t, (left, right, top, bottom)).contiguous(memory_format=torch.channels_last)
    return padded, (rows + top).to(t.device), (cols + left).to(t.device)


def paste_windows(base: torch.Tensor, index: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``base`` (K, C, H, W), a fresh tensor (channels last is faster), with ``window`` (K, C, h, w) written at flat
    positions ``index`` (K, h*w) of each map (as :func:`perturbed_outputs` pastes a segment's windows)."""
    return _paste(base, index, window)


def perturbed_outputs(
    agent: IncrementalPolicy,
    trunk: ConvTrunk,
    plan: WindowPlan,
    images: torch.Tensor,
    blurred: torch.Tensor,
    shared: SharedActivations,
    state: State,
    frame: torch.Tensor,
    mask: torch.Tensor,
    interp: str,
) -> PolicyOutput:
    """Outputs of the perturbed copies ``(frame[k], mask[k])``, the trunk's first ``plan.stop`` layers on windows.

    Args:
        images, blurred: observations and their blur (N, C, H, W), padded by :meth:`WindowPlan.pad_input`.
        shared: :func:`shared_activations` of the observations (occlude) or of their blur (searchlight).
        state: the state of each observation (a tuple of batch-first tensors). frame, mask: (K,) index tensors.
    """
    k = frame.shape[0]
    rows_needed = padded_row_count(k)  # batch-invariant kernels, as in engine.batching
    if rows_needed != k:
        fill = frame.new_zeros(rows_needed - k)
        frame, mask = torch.cat([frame, fill]), torch.cat([mask, fill])
    # Every convolution gets its input in the memory format the plain pass gives it (the observations: contiguous;
    # later layers: as the convolutions before return them), so that it runs the same kernel: a window's values
    # then equal the plain pass's bit for bit where the kernel does not depend on the map's size (so far, always).
    first = plan.segments[0]
    x = perturb(
        _regions(images, first, frame, mask),
        _regions(blurred, first, frame, mask),
        plan.mask_patches.index_select(0, mask)[:, None],
        interp,
    ).contiguous()
    if trunk.input_scale != 1:
        x = x * trunk.input_scale
    for index, segment in enumerate(plan.segments):
        if index:  # the observation's own activations around the window, the previous window pasted in
            assert segment.paste_index is not None  # set for every segment after the first
            region = _paste(
                _regions(shared.regions[index - 1], segment, frame, mask), segment.paste_index.index_select(0, mask), x
            )
            x = region.contiguous(memory_format=shared.formats[index - 1])
        for layer in range(segment.first, segment.last + 1):
            x = _layer(*trunk.layers[layer - 1], x, padded=False)
            if layer < segment.last:
                valid = segment.valid[layer - segment.first]
                if valid is not None:
                    x = x * valid.index_select(0, mask)
    if plan.final_index is not None:
        assert shared.final is not None  # shared_activations keeps them whenever the plan has a final index
        x = _paste(shared.final[frame], plan.final_index.index_select(0, mask), x)  # [frame] keeps the memory format
    for conv, act in trunk.layers[plan.stop :]:
        x = _layer(conv, act, x)
    return agent.from_trunk(x, tuple(t.index_select(0, frame) for t in state), k)
