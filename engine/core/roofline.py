"""A roofline model of perturbation saliency, computed from the network (nothing is timed here): per layer, the
floating-point operations and the bytes one perturbed input costs, for the plain batched pass (every perturbed
copy through the whole network) and for exact incremental inference (:mod:`engine.core.incremental`: the conv
trunk only over each mask's windows).

FLOPs are 2 x the multiply-adds of the convolutions, the linear layers and a recurrent cell's gate products
(``W_ih x`` and ``W_hh h``; the gates' elementwise work, biases and activations are not counted). Bytes are
the least traffic of a layer that runs fused with its activation: its input read, its weights (and biases)
read, its output written, all in the agent's dtype. A batched pass reads the weights once per forward pass of
``batch`` perturbed inputs, so they count ``1 / batch`` per input. For the incremental plan each windowed layer
counts its windows (the sides :func:`engine.core.incremental.window_plan` gives every mask of the grid) plus
its share of the observation's own activations, computed once per observation and shared by its masks; the
gathers and pastes between windows and the building of the perturbed input are not counted (they are
elementwise and small next to the convolutions). The layers after the trunk run in full in both plans.

:func:`roofline_fraction` compares an achieved rate with the roofline bound ``min(peak_flops, intensity *
peak_bandwidth)``; ``benchmarks/roofline.py`` measures both on a device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .incremental import TrunkGeometry, conv_trunk_of, trunk_geometry, window_plan
from .masks import perturbation_masks
from .policy import IncrementalPolicy, Policy

PLANS = ("plain", "incremental")


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost per perturbed input: ``flops`` (2 x multiply-adds) and ``bytes`` (input read, weights
    read, output written)."""

    name: str
    kind: str
    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte."""
        return self.flops / self.bytes if self.bytes else 0.0


@dataclass(frozen=True)
class RooflineTable:
    """Per-layer costs of one plan per perturbed input, and their totals.

    Attributes:
        plan: ``"plain"`` or ``"incremental"``; layers: the rows in the order the network runs them.
        radius, density: the mask grid; masks: masks per observation; batch: perturbed inputs per forward pass
            (the weights' reads are shared by them); itemsize: bytes per element of the agent's dtype.
        stop: the last windowed trunk layer of the incremental plan (0 for the plain plan).
    """

    plan: str
    layers: tuple[LayerCost, ...]
    radius: float
    density: int
    masks: int
    batch: int
    itemsize: int
    stop: int = 0

    @property
    def flops(self) -> float:
        return sum(layer.flops for layer in self.layers)

    @property
    def bytes(self) -> float:
        return sum(layer.bytes for layer in self.layers)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity of the whole pass, FLOPs per byte."""
        return self.flops / self.bytes if self.bytes else 0.0

    def bound(self, peak_flops: float, peak_bandwidth: float) -> float:
        """The roofline bound in FLOP/s: ``min(peak_flops, intensity * peak_bandwidth)``."""
        return min(peak_flops, self.intensity * peak_bandwidth)

    def rows(self) -> list[dict[str, Any]]:
        """The table as plain dicts (name, kind, flops, bytes, intensity), the totals last."""
        out = [dict(name=r.name, kind=r.kind, flops=r.flops, bytes=r.bytes, intensity=r.intensity) for r in self.layers]
        out.append(dict(name="total", kind="", flops=self.flops, bytes=self.bytes, intensity=self.intensity))
        return out


def roofline_fraction(
    achieved_inputs_per_s: float, table: RooflineTable, peak_flops: float, peak_bandwidth: float
) -> float:
    """The share of the roofline bound achieved: ``achieved_inputs_per_s * table.flops`` (FLOP/s) over
    ``min(peak_flops, table.intensity * peak_bandwidth)``."""
    bound = table.bound(peak_flops, peak_bandwidth)
    if bound <= 0:
        raise ValueError(f"the roofline bound must be positive, got {bound} (peaks {peak_flops}, {peak_bandwidth})")
    return achieved_inputs_per_s * table.flops / bound


# --- the trunk ------------------------------------------------------------------------------------------------


def _conv_cost(
    geometry: TrunkGeometry, layer: int, out_hw: tuple[int, int], in_hw: tuple[int, int], weight_bytes: float
) -> tuple[float, float]:
    """(FLOPs, bytes) of trunk layer ``layer`` (1-based) writing an ``out_hw`` output from an ``in_hw`` input;
    ``weight_bytes`` already per input. Bytes here count elements; the caller scales by the itemsize."""
    conv = geometry.convs[layer - 1]
    outputs = conv.out_channels * out_hw[0] * out_hw[1]
    inputs = conv.in_channels * in_hw[0] * in_hw[1]
    return 2.0 * outputs * conv.macs, inputs + outputs + weight_bytes


def _conv_weights(geometry: TrunkGeometry, layer: int, bias: bool) -> int:
    conv = geometry.convs[layer - 1]
    return conv.out_channels * conv.macs + (conv.out_channels if bias else 0)


def _trunk_plain(geometry: TrunkGeometry, biases: list[bool], batch: int) -> list[tuple[float, float]]:
    out = []
    for layer in range(1, len(geometry.convs) + 1):
        full = [(geometry.sizes(0)[i], geometry.sizes(1)[i]) for i in (layer - 1, layer)]
        out.append(
            _conv_cost(geometry, layer, full[1], full[0], _conv_weights(geometry, layer, biases[layer - 1]) / batch)
        )
    return out


def _trunk_incremental(
    geometry: TrunkGeometry, biases: list[bool], batch: int, masks: torch.Tensor
) -> tuple[list[tuple[float, float]], int]:
    plan = window_plan(geometry, masks)
    m = masks.shape[0]
    plain = _trunk_plain(geometry, biases, batch)
    sides = {layer: window[2] for layer, window in enumerate(plan.windows)}
    inputs = {}
    for segment in plan.segments:
        inputs[segment.first] = segment.region
        for layer in range(segment.first + 1, segment.last + 1):
            inputs[layer] = sides[layer - 1]
    out = []
    for layer in range(1, len(geometry.convs) + 1):
        if layer > plan.stop:
            out.append(plain[layer - 1])
            continue
        weights = _conv_weights(geometry, layer, biases[layer - 1]) / batch
        flops, elements = _conv_cost(geometry, layer, sides[layer], inputs[layer], weights)
        # the observation's own activations of this layer: once per observation, shared by its m masks
        out.append((flops + plain[layer - 1][0] / m, elements + plain[layer - 1][1] / m))
    return out, plan.stop


# --- the layers after the trunk, found by running them once ---------------------------------------------------


def _gates(module: nn.Module) -> int:
    return {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1, nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(module)]


def _module_cost(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> tuple[str, float, float] | None:
    """(kind, FLOPs, elements read and written besides the weights) of one call of ``module``, per input row."""
    if isinstance(module, nn.Linear):
        return "linear", 2.0 * module.in_features * module.out_features, module.in_features + module.out_features
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return "conv", 2.0 * output[0].numel() * per_output, inputs[0][0].numel() + output[0].numel()
    if isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
        g, i, h = _gates(module), module.input_size, module.hidden_size
        states = 2 if isinstance(module, nn.LSTMCell) else 1  # (h, c) or h: read, and written
        return type(module).__name__, 2.0 * g * h * (i + h), i + 2 * states * h
    if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        steps = inputs[0].shape[1 if module.batch_first else 0]
        g, h, d = _gates(module), module.hidden_size, 2 if module.bidirectional else 1
        macs = sum(g * h * ((module.input_size if n == 0 else d * h) + h) * d for n in range(module.num_layers))
        states = (2 if isinstance(module, nn.LSTM) else 1) * module.num_layers * d * h
        return type(module).__name__, 2.0 * steps * macs, steps * (module.input_size + d * h) + 2 * states
    return None


def _rest(
    agent: Policy, geometry: TrunkGeometry, trunk_convs: set[int], batch: int
) -> list[tuple[str, str, float, float]]:
    """(name, kind, FLOPs, elements) per call of each layer after the trunk, from one run of ``from_trunk``."""
    if not isinstance(agent, nn.Module):
        return []
    names = {id(m): name for name, m in agent.named_modules()}
    calls: list[tuple[str, str, float, float]] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        cost = _module_cost(module, inputs, output)
        if cost is None:
            return
        kind, flops, elements = cost
        weights = sum(p.numel() for p in module.parameters(recurse=False))
        calls.append((names.get(id(module), kind), kind, flops, elements + weights / batch))

    handles = [
        m.register_forward_hook(hook)
        for m in agent.modules()
        if id(m) not in trunk_convs and isinstance(m, (nn.Linear, nn.Conv2d, nn.RNNCellBase, nn.RNNBase))
    ]
    try:
        last = len(geometry.convs)
        shape = (1, geometry.channels(last), geometry.sizes(0)[last], geometry.sizes(1)[last])
        with torch.inference_mode():
            cast(IncrementalPolicy, agent).from_trunk(
                torch.zeros(shape, device=agent.device, dtype=agent.dtype), agent.initial_state(1), 1
            )
    finally:
        for handle in handles:
            handle.remove()
    return calls


def roofline(
    agent: Policy,
    plan: str = "plain",
    radius: float = 5,
    density: int = 5,
    batch: int = 1,
    device: torch.device | str = "cpu",
) -> RooflineTable:
    """The :class:`RooflineTable` of ``agent`` (a policy that declares its conv trunk) for ``plan``, per perturbed
    input, on the mask grid of ``radius`` and ``density`` over its observations; ``batch``: perturbed inputs per
    forward pass; ``device``: whose cost profile picks the incremental windows (as the engine's would there)."""
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    trunk = conv_trunk_of(agent)
    if trunk is None:
        raise ValueError(f"{type(agent).__name__} declares no conv trunk (conv_trunk/from_trunk): no roofline")
    geometry = trunk_geometry(agent, trunk)
    biases = [conv.bias is not None for conv, _ in trunk.layers]
    itemsize = torch.empty((), dtype=agent.dtype).element_size()
    size = (geometry.input_shape[1], geometry.input_shape[2])
    masks = perturbation_masks(radius, density, device, torch.float32, size)
    stop = 0
    if plan == "plain":
        trunk_costs = _trunk_plain(geometry, biases, batch)
    else:
        trunk_costs, stop = _trunk_incremental(geometry, biases, batch, masks)
    rows = [
        LayerCost(f"conv{layer}", "conv", flops, elements * itemsize)
        for layer, (flops, elements) in enumerate(trunk_costs, start=1)
    ]
    trunk_convs = {id(conv) for conv, _ in trunk.layers}
    rows += [
        LayerCost(name, kind, flops, elements * itemsize)
        for name, kind, flops, elements in _rest(agent, geometry, trunk_convs, batch)
    ]
    return RooflineTable(plan, tuple(rows), float(radius), density, masks.shape[0], batch, itemsize, stop)
