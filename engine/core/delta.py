"""Delta propagation for perturbation saliency: the perturbed copies' differences from their observation, run
through the linear layers alone, in a selectable arithmetic (the fast precision of issue 19, item 3).

A perturbed copy differs from its observation ``x`` by ``dx = M * (B - x)`` (occlude: ``lerp(x, B, M)``; searchlight:
``lerp(B, x, M)``, so ``dx = (1 - M) * (B - x)``), ``B`` the observation's blur. The observation's own forward runs
once, in the working dtype (float32, or the agent's float64), keeping each layer's pre-activation ``z`` and
activation ``a``. Through the copies only differences propagate: a linear layer (convolution, linear layer, the
input product ``W_ih`` of a GRU/LSTM cell, a head) maps ``d`` to ``W d`` without its bias, in the chosen
arithmetic; a pointwise function ``f`` gives ``f(z + W d) - a`` in the working dtype; a recurrent cell's hidden
term ``W_hh h + b_hh`` is the observation's (the same for every copy), so its gates are the observation's plus
``W_ih d``, evaluated in the working dtype, and ``d_h = h' - h'_observation``. A multi-layer ``nn.LSTM``
(unidirectional, no projection) is its layers in turn: layer ``l >= 1`` reads layer ``l - 1``'s next hidden state,
so its gates are the observation's plus ``W_ih_l d_h(l - 1)`` and its hidden term is the observation's on the
layer's own ``(h_l, c_l)``: columns ``l * hidden`` to ``(l + 1) * hidden`` of the state tensors, which hold the
layers side by side, ``(N, layers * hidden)``. The heads give ``d_logits`` and ``d_value`` directly, so the actor
score ``0.5 * |d_logits|^2`` and the critic score ``0.5 * d_value^2`` come with no cancellation of two nearly
equal outputs (a Q-network's value ``max_a Q`` is a pointwise function of its Q head:
``d_value = max(q + d_q) - max(q)``). The actor and the critic may be separate branches after the shared
body (:class:`engine.core.policy.DeltaNetwork`: their own layers, the critic's own cell, or their own columns of
the body's output); each branch's deltas propagate the same way.

With a window plan (``engine.core.incremental``: ``incremental`` "auto" or True) the first ``plan.stop`` trunk
layers run on each mask's windows: a copy's delta is zero outside its mask's box, and each layer's delta outside the
box's window there (the window a convolution's receptive fields give), so a window's ``f(z + W d) - a`` is computed
with the observation's ``z`` and ``a`` on that window (gathered from maps padded once per call), set to zero on the
next convolution's zero padding, and carried from segment to segment pasted into zeros; the last window, pasted
into a zero map, continues through the rest of the walk as above. For searchlight a copy equals the blurred
observation outside the box, so the windows carry the deltas from the blur (``M * (x - B)``, around the blur's own
``z`` and ``a``), and the blur's layer-``stop`` activations minus the observation's turn them into deltas from the
observation. In float64 this equals the whole-map walk to about 1e-15.

The algebra is exact: in float64 arithmetic the scores equal the plain pass's to about 1e-12. What differs is the
rounding of the products (``ARITHMETICS``):

- ``"float64"``, ``"float32"``: the product in that dtype (deltas and weights cast to it), output in the working
  dtype.
- ``"bfloat16"``, ``"float16"``: deltas and weights rounded once to that type, products accumulated and returned
  in float32 (about 1e-2 and 2e-3 of the map's max on baby-a3c: ``../shared/notes/fast-precision.md``).
- ``"bfloat16x3"``: each of delta and weight split into ``hi = bf16(t)``, ``lo = bf16(t - hi)``; the product is
  ``hi*hi + lo*hi + hi*lo`` with float32 accumulation and float32 output (about 16 significant bits; 2e-5 there).

Only :func:`round_to`, :func:`split_bfloat16` and :func:`linear_product` know the arithmetic; a GPU kernel
replaces them without touching the walk. For ``"bfloat16x3"`` :func:`use_split_kernel` chooses the kernel:
``"torch"`` (the default: two float32 products of bf16-representable values, on the CPU and CUDA alike),
``"triton"`` (engine.core.split_kernels: three bfloat16 ``tl.dot`` with float32 accumulation and output, on CUDA
tensors, or CPU tensors in triton's interpreter) or ``"tf32"`` (the three products on TF32 tensor cores, which hold
bfloat16 parts exactly: :func:`split_products_tf32`), until a GPU session has measured which to use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .batching import chunk_bounds, pad_rows, padded_row_count
from .blur import gaussian_blur
from .device import float32_matmul_precision
from .errors import NoDeltaForm
from .incremental import (
    WindowPlan,
    conv_trunk_of,
    padded_windows,
    paste_windows,
    segment_regions,
    window_regions,
)
from .policy import Activation, ConvTrunk, DeltaNetwork, DeltaPolicy, Policy, State

ARITHMETICS = ("float64", "float32", "bfloat16", "float16", "bfloat16x3")
_DIRECT = {"float64": torch.float64, "float32": torch.float32}
_ROUNDED = {"bfloat16": torch.bfloat16, "float16": torch.float16}

# (input, weight) -> the layer's linear map of the input, without bias (F.conv2d with the layer's geometry, F.linear)
Apply = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- the arithmetic: small and separate, so that a GPU kernel can replace it ---------------------------------------


def round_to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` rounded (to nearest, ties to even) to ``dtype`` and held in ``t``'s dtype."""
    return t.to(dtype).to(t.dtype)


def split_bfloat16(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)``: ``hi = bf16(t)``, ``lo = bf16(t - hi)``, both held in ``t``'s dtype (float32):
    ``hi + lo`` keeps about 16 significant bits of ``t``."""
    hi = round_to(t, torch.bfloat16)
    return hi, round_to(t - hi, torch.bfloat16)


def prepare_weight(weight: torch.Tensor, arithmetic: str) -> tuple[torch.Tensor, ...]:
    """A layer's weight in the form :func:`linear_product` takes for ``arithmetic`` (prepared once per call)."""
    if arithmetic in _DIRECT:
        return (weight.to(_DIRECT[arithmetic]),)
    if arithmetic in _ROUNDED:
        return (round_to(weight.float(), _ROUNDED[arithmetic]),)
    return split_bfloat16(weight.float())


SPLIT_KERNELS = ("torch", "triton", "tf32")
_split_kernel = "torch"  # process-wide: see use_split_kernel


@contextmanager
def use_split_kernel(name: str) -> Iterator[None]:
    """Within the block, ``"bfloat16x3"`` products run on the kernel ``name`` (:data:`SPLIT_KERNELS`): ``"torch"``,
    the emulation by two float32 products; ``"triton"``, engine.core.split_kernels (CUDA tensors, or CPU tensors
    in triton's interpreter; other tensors keep the emulation); or ``"tf32"``, the three products as three float32
    products with TF32 allowed on CUDA (:func:`split_products_tf32`). The choice is process-wide, not per thread."""
    global _split_kernel
    if name not in SPLIT_KERNELS:
        raise ValueError(f"unknown split kernel {name!r}: choose one of {SPLIT_KERNELS}")
    previous, _split_kernel = _split_kernel, name
    try:
        yield
    finally:
        _split_kernel = previous


def _triton_split3(d: torch.Tensor, w_hi: torch.Tensor, w_lo: torch.Tensor, apply: Apply) -> torch.Tensor | None:
    """The bfloat16x3 product on the Triton kernels, or None where they do not apply: tensors neither on CUDA nor
    in triton's interpreter, a map other than F.linear and F.conv2d, grouped convolutions (the kernels run
    ``groups=1``; the trunks of the agents here have no groups, so the emulation serves them) and padding given by
    name (``"same"``)."""
    from . import split_kernels  # triton is imported only when its kernels are chosen

    if d.device.type != "cuda" and not split_kernels.interpreting():
        return None
    if apply is F.linear:
        rows = d.reshape(-1, d.shape[-1])
        return split_kernels.split3_linear(rows, w_hi, w_lo).reshape(*d.shape[:-1], w_hi.shape[0])
    if isinstance(apply, partial) and apply.func is F.conv2d and not apply.args and d.dim() == 4:
        geometry = dict(stride=1, padding=0, dilation=1, groups=1) | apply.keywords
        if geometry["groups"] != 1 or isinstance(geometry["padding"], str):
            return None
        return split_kernels.split3_conv2d(
            d, w_hi, w_lo, stride=geometry["stride"], padding=geometry["padding"], dilation=geometry["dilation"]
        )
    return None


def split_products_tf32(d: torch.Tensor, w_hi: torch.Tensor, w_lo: torch.Tensor, apply: Apply) -> torch.Tensor:
    """``hi*w_hi + lo*w_hi + hi*w_lo`` (``hi, lo = split_bfloat16(d)``) as three float32 products, TF32 allowed on
    CUDA. Every operand is bfloat16-representable, so TF32's 10-bit mantissa holds it exactly and each product and
    its float32 accumulation are what bfloat16 tensor-core products give, on cuDNN's and cuBLAS's TF32 kernels
    (three TF32 products cost less than one float32 product there). Whether every cuDNN algorithm keeps the inputs
    as they are (a Winograd transform would round its transformed inputs to TF32) is what the GPU check measures
    (``fast_tf32_vs_emulation``). On the CPU TF32 changes nothing: the three products are float32 products."""
    hi, lo = split_bfloat16(d)
    with float32_matmul_precision(d.device, True):
        return apply(hi, w_hi).add_(apply(lo, w_hi)).add_(apply(hi, w_lo))


def linear_product(d: torch.Tensor, weights: tuple[torch.Tensor, ...], apply: Apply, arithmetic: str) -> torch.Tensor:
    """``W d`` (no bias) in ``arithmetic``: in the direct dtypes, the product in that dtype; otherwise in float32
    (the products of the rounded parts are exact in float32, accumulated and returned in float32).

    The low-precision forms are emulated as float32 products of bf16/fp16-representable values, on the CPU and
    CUDA alike; under ``use_split_kernel("triton")`` the ``"bfloat16x3"`` products of F.linear and ``groups=1``
    F.conv2d run on the Triton kernels (bf16 inputs, float32 accumulation and output) instead. Whatever replaces the
    emulation must keep float32 accumulation AND float32 output: the same split with bfloat16 outputs measured 1e-2
    of the map's max.
    """
    if arithmetic in _DIRECT:
        return apply(d.to(weights[0].dtype), weights[0])
    if arithmetic in _ROUNDED:
        return apply(round_to(d.float(), _ROUNDED[arithmetic]), weights[0])
    if _split_kernel == "triton":
        product = _triton_split3(d.float(), weights[0], weights[1], apply)
        if product is not None:
            return product
    if _split_kernel == "tf32":
        return split_products_tf32(d.float(), weights[0], weights[1], apply)
    hi, lo = split_bfloat16(d.float())
    w_hi, w_lo = weights
    # hi*w_hi + lo*w_hi + hi*w_lo as two float32 products: hi + lo is exact in float32, and (hi + lo) * w_hi is
    # exact or within one float32 rounding, as the tensor cores' float32 accumulation of the three would be.
    return apply(hi.add(lo), w_hi).add_(apply(hi, w_lo))


# --- the network, as delta propagation walks it ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Linear:
    """One linear layer: its map (``apply``), weight and bias in the working dtype for the observation's own
    forward, the weight prepared for the deltas' arithmetic, and the pointwise function after it."""

    apply: Apply
    weight: torch.Tensor
    bias: torch.Tensor | None
    delta_weights: tuple[torch.Tensor, ...]
    arithmetic: str
    activation: Activation | None = None

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """The layer on the observation's own activations: ``W a + b`` in the working dtype."""
        z = self.apply(a, self.weight)
        return z if self.bias is None else z + self.bias.view(-1, *([1] * (z.ndim - 2)))

    def product(self, d: torch.Tensor) -> torch.Tensor:
        """``W d`` in the arithmetic, returned in the working dtype."""
        return linear_product(d, self.delta_weights, self.apply, self.arithmetic).to(self.weight.dtype)

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """The pointwise function on ``z`` (left intact: the function gets a copy it may overwrite)."""
        return z if self.activation is None else self.activation(z.clone())


def _linear(
    layer: nn.Conv2d | nn.Linear, activation: Activation | None, arithmetic: str, dtype: torch.dtype
) -> _Linear:
    apply: Apply
    if isinstance(layer, nn.Conv2d):
        apply = cast(
            Apply,
            partial(F.conv2d, stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups),
        )
    else:
        apply = cast(Apply, F.linear)
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach().to(dtype)
    return _Linear(apply, weight.to(dtype), bias, prepare_weight(weight, arithmetic), arithmetic, activation)


def _weight_linear(weight: torch.Tensor, bias: torch.Tensor | None, arithmetic: str, dtype: torch.dtype) -> _Linear:
    """A bare ``(weight, bias)`` pair (a recurrent cell's input or hidden product) as a linear layer."""
    weight = weight.detach()
    bias = None if bias is None else bias.detach().to(dtype)
    return _Linear(cast(Apply, F.linear), weight.to(dtype), bias, prepare_weight(weight, arithmetic), arithmetic)


@dataclass(frozen=True)
class _Core:
    """A GRU or LSTM cell, or a stack of LSTM layers (``nn.LSTM``, unidirectional, no projection): ``kind``, each
    layer's input product (on the deltas) and hidden product (the observation's only), and the hidden size.

    The state tensors hold the layers side by side: layer ``l``'s hidden (and cell) state is columns
    ``l * size : (l + 1) * size`` of its tensor, ``(N, layers * size)`` (nn.LSTM's ``(layers, N, size)`` with the
    batch first, as the adapters keep it)."""

    kind: str
    layers: tuple[tuple[_Linear, _Linear], ...]
    size: int

    def step(self, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """A layer's next hidden state from the input term ``gi = W_ih x + b_ih``, the hidden term
        ``gh = W_hh h + b_hh`` and the state (torch's GRUCell / LSTMCell equations, gate order r, z, n / i, f, g,
        o)."""
        if self.kind == "gru":
            r_i, z_i, n_i = gi.chunk(3, dim=1)
            r_h, z_h, n_h = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
            new = torch.tanh(n_i + r * n_h)
            return (1 - z) * new + z * h
        assert c is not None  # an LSTM's state was checked to hold (h, c)
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        cell = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell)

    @property
    def state_width(self) -> int:
        """The width of each of its state tensors: every layer's state side by side."""
        return len(self.layers) * self.size


def _core(core: nn.Module, arithmetic: str, dtype: torch.dtype, name: str) -> _Core:
    if isinstance(core, nn.LSTM):
        if core.bidirectional or core.proj_size:
            raise ValueError(
                f"{name}.delta_network(): delta propagation takes a unidirectional nn.LSTM without projection "
                f"(bidirectional=False, proj_size=0), got {core}"
            )
        suffixes, kind = tuple(f"_l{layer}" for layer in range(core.num_layers)), "lstm"
    elif isinstance(core, (nn.GRUCell, nn.LSTMCell)):
        suffixes, kind = ("",), "gru" if isinstance(core, nn.GRUCell) else "lstm"
    else:
        raise ValueError(
            f"{name}.delta_network(): core must be an nn.GRUCell, nn.LSTMCell, nn.LSTM or None, got {type(core).__name__}"
        )
    layers = []
    for suffix in suffixes:
        weights = {k: getattr(core, f"{k}{suffix}", None) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        layers.append(
            (
                _weight_linear(cast(torch.Tensor, weights["weight_ih"]), weights["bias_ih"], arithmetic, dtype),
                _weight_linear(cast(torch.Tensor, weights["weight_hh"]), weights["bias_hh"], arithmetic, dtype),
            )
        )
    return _Core(kind, tuple(layers), core.hidden_size)


@dataclass(frozen=True)
class _Walk:
    """The whole network as delta propagation walks it (:class:`engine.core.policy.DeltaNetwork`)."""

    input_scale: float
    trunk: tuple[_Linear, ...]
    body: tuple[_Linear, ...]
    core: _Core | None
    actor_layers: tuple[_Linear, ...]
    actor: _Linear
    critic_core: _Core | None
    critic_from_body: bool
    critic_layers: tuple[_Linear, ...]
    critic: _Linear | None
    split: int | None

    @property
    def state_widths(self) -> tuple[int, ...]:
        """The widths of the state tensors the cores read (the actor's first, then the critic's): ``h``, or ``h``
        and ``c`` for an LSTM, each holding its core's layers side by side."""
        widths: tuple[int, ...] = ()
        for core in (self.core, self.critic_core):
            if core is not None:
                widths += (core.state_width,) * (2 if core.kind == "lstm" else 1)
        return widths


def delta_unsupported(agent: Policy) -> str | None:
    """Why delta propagation cannot run on ``agent`` (a sentence naming what it lacks), or None if it can."""
    reason, _ = _declared(agent)
    return reason


def _declared(agent: Policy) -> tuple[str | None, object]:
    """``(why delta propagation cannot run on agent, None)`` or ``(None, what its delta_network() returned)``."""
    reason = _undeclared(agent)
    if reason is not None:
        return reason, None
    try:
        return None, cast(DeltaPolicy, agent).delta_network()
    except NoDeltaForm as exc:
        return f"{type(agent).__name__} has no delta form in this configuration: {exc}", None


def _undeclared(agent: Policy) -> str | None:
    name = type(agent).__name__
    if not (callable(getattr(agent, "conv_trunk", None)) and callable(getattr(agent, "from_trunk", None))):
        return (
            f"{name} declares no conv trunk (conv_trunk() and from_trunk(), engine.core.policy.IncrementalPolicy) "
            "nor the network after it (delta_network(), engine.core.policy.DeltaPolicy)"
        )
    if not callable(getattr(agent, "delta_network", None)):
        return (
            f"{name} declares its conv trunk but not the network after it (delta_network() returning an "
            "engine.core.policy.DeltaNetwork, engine.core.policy.DeltaPolicy)"
        )
    return None


def _check_layers(layers: object, name: str, what: str) -> tuple[tuple[nn.Linear, Activation | None], ...]:
    checked = []
    for index, layer in enumerate(cast(tuple[object, ...], layers)):
        linear, act = cast(tuple[object, object], layer)
        if not isinstance(linear, nn.Linear) or (act is not None and not callable(act)):
            raise ValueError(
                f"{name}.delta_network() {what} layer {index + 1}: expected (nn.Linear, a pointwise callable or "
                f"None), got ({type(linear).__name__}, {act!r})"
            )
        checked.append((linear, cast(Activation | None, act)))
    return tuple(checked)


def _walk(agent: Policy, arithmetic: str, dtype: torch.dtype) -> _Walk:
    """The agent's declared trunk and :class:`DeltaNetwork`, checked, with weights prepared for ``arithmetic``."""
    reason, network = _declared(agent)
    if reason is not None:
        raise ValueError(f"delta propagation needs an agent that declares its whole network: {reason}")
    name = type(agent).__name__
    trunk = cast(ConvTrunk, conv_trunk_of(agent))
    if not isinstance(network, DeltaNetwork):
        raise ValueError(f"{name}.delta_network() must return an engine.core.policy.DeltaNetwork, got {network!r}")
    body = _check_layers(network.body, name, "body")
    actor_layers = _check_layers(network.actor_layers, name, "actor_layers")
    critic_layers = _check_layers(network.critic_layers, name, "critic_layers")
    if not isinstance(network.actor, nn.Linear):
        raise ValueError(f"{name}.delta_network().actor must be an nn.Linear, got {type(network.actor).__name__}")
    if network.critic is not None and not (isinstance(network.critic, nn.Linear) and network.critic.out_features == 1):
        raise ValueError(
            f"{name}.delta_network().critic must be an nn.Linear with one output or None, got {network.critic}"
        )
    critic_from_body = bool(network.critic_from_body) or network.critic_core is not None
    if network.critic is None and (critic_layers or network.critic_core is not None or critic_from_body):
        raise ValueError(f"{name}.delta_network(): a critic branch (layers, core or input) without a critic head")
    split = network.split
    if split is not None and (
        isinstance(split, bool) or not isinstance(split, int) or split < 1 or not critic_from_body
    ):
        raise ValueError(
            f"{name}.delta_network().split must be a positive int, with a critic branch that reads the body "
            f"(critic_core or critic_from_body), got split={split!r}"
        )

    def linears(layers: tuple[tuple[nn.Linear, Activation | None], ...]) -> tuple[_Linear, ...]:
        return tuple(_linear(linear, act, arithmetic, dtype) for linear, act in layers)

    return _Walk(
        input_scale=trunk.input_scale,
        trunk=tuple(_linear(conv, act, arithmetic, dtype) for conv, act in trunk.layers),
        body=linears(body),
        core=None if network.core is None else _core(network.core, arithmetic, dtype, name),
        actor_layers=linears(actor_layers),
        actor=_linear(network.actor, None, arithmetic, dtype),
        critic_core=None if network.critic_core is None else _core(network.critic_core, arithmetic, dtype, name),
        critic_from_body=critic_from_body,
        critic_layers=linears(critic_layers),
        critic=None if network.critic is None else _linear(network.critic, None, arithmetic, dtype),
        split=split,
    )


# a cell layer's saved terms on the observations: (gi, gh, h, c, h_next); a core's: one per layer
_LayerGates = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]
_Gates = tuple[_LayerGates, ...]


@dataclass(frozen=True)
class _Frame:
    """The observations' own forward: each trunk and body layer's ``(z, a)``, each branch's cell terms and
    layers' ``(z, a)``, the Q-values (a Q-network) and the value."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    gates: _Gates | None
    actor_layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    critic_gates: _Gates | None
    critic_layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    logits: torch.Tensor
    value: torch.Tensor


def _layers_forward(
    layers: tuple[_Linear, ...], a: torch.Tensor
) -> tuple[torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
    saved = []
    for layer in layers:
        z = layer.forward(a)
        a = layer.activate(z)
        saved.append((z, a))
    return a, tuple(saved)


def _core_forward(core: _Core, a: torch.Tensor, state: State, first: int) -> _Gates:
    """Each layer's terms on input ``a`` (layer 0) or the layer below's next hidden state, with that layer's
    columns of the state tensors from ``state[first]`` on."""
    h_all = pad_rows(state[first].to(a.dtype))
    c_all = pad_rows(state[first + 1].to(a.dtype)) if core.kind == "lstm" else None
    gates = []
    for layer, (input_product, hidden_product) in enumerate(core.layers):
        columns = slice(layer * core.size, (layer + 1) * core.size)
        h = h_all[:, columns]
        c = None if c_all is None else c_all[:, columns]
        gi, gh = input_product.forward(a), hidden_product.forward(h)
        a = core.step(gi, gh, h, c)
        gates.append((gi, gh, h, c, a))
    return tuple(gates)


def _frame_forward(walk: _Walk, x: torch.Tensor, state: State) -> _Frame:
    """Batch-invariant (rows padded as ``engine.core.batching`` does); every tensor keeps the padded rows."""
    a = pad_rows(x) if walk.input_scale == 1.0 else pad_rows(x) * walk.input_scale
    layers = []
    for index, layer in enumerate(walk.trunk + walk.body):
        if index == len(walk.trunk):
            a = a.flatten(1)
        z = layer.forward(a)
        a = layer.activate(z)
        layers.append((z, a))
    if not walk.body:
        a = a.flatten(1)
    body_out = a
    if walk.split is not None:
        a = body_out[:, : walk.split]
    gates = None
    if walk.core is not None:
        gates = _core_forward(walk.core, a, state, 0)
        a = gates[-1][4]
    core_out = a
    a, actor_layers = _layers_forward(walk.actor_layers, a)
    logits = walk.actor.forward(a)
    critic_gates: _Gates | None = None
    critic_layers: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    if walk.critic is None:
        value = logits.amax(dim=-1)
    else:
        a = core_out
        if walk.critic_from_body:
            a = body_out if walk.split is None else body_out[:, walk.split :]
        if walk.critic_core is not None:
            first = 0 if walk.core is None else 2 if walk.core.kind == "lstm" else 1
            critic_gates = _core_forward(walk.critic_core, a, state, first)
            a = critic_gates[-1][4]
        a, critic_layers = _layers_forward(walk.critic_layers, a)
        value = walk.critic.forward(a)[:, 0]
    return _Frame(tuple(layers), gates, actor_layers, critic_gates, critic_layers, logits, value)


def _rows(t: torch.Tensor, frame: torch.Tensor, single: int | None) -> torch.Tensor:
    """The rows of ``t`` (per observation) for the copies of a pass: ``t[single]`` as a broadcasting view when
    every copy of the pass is of observation ``single`` (no copy made), else ``t.index_select(0, frame)`` in
    ``t``'s memory layout (a channels-last map gathered through its contiguous (N, H, W, C) view: index_select on
    the channels-last layout itself takes a slow strided path). Elementwise results are the same either way."""
    if single is not None:
        return t[single : single + 1]
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).index_select(0, frame).permute(0, 3, 1, 2)
    return t.index_select(0, frame)


def _layer_deltas(
    layers: tuple[_Linear, ...],
    saved: tuple[tuple[torch.Tensor, torch.Tensor], ...],
    d: torch.Tensor,
    frame: torch.Tensor,
    single: int | None,
    flatten_at: int = -1,
) -> torch.Tensor:
    """The deltas through ``layers`` around the observations' saved ``(z, a)`` (flattened before layer
    ``flatten_at``)."""
    for index, (layer, (z, a)) in enumerate(zip(layers, saved)):
        if index == flatten_at:
            d = d.flatten(1)
        dz = layer.product(d)
        # f(z + dz) - f(z), in place on the fresh product (the activation may overwrite its input)
        if layer.activation is None:
            d = dz
        else:
            d = layer.activation(dz.add_(_rows(z, frame, single))).sub_(_rows(a, frame, single))
    return d


def _core_deltas(core: _Core, gates: _Gates, d: torch.Tensor, frame: torch.Tensor, single: int | None) -> torch.Tensor:
    """The top layer's next hidden state's deltas from the input's: layer by layer, the input product on the
    deltas below (the core's input, then the layer below's ``d_h``) plus the observation's terms."""
    for (input_product, _), (gi, gh, h, c, h_next) in zip(core.layers, gates):
        gate_in = input_product.product(d).add_(_rows(gi, frame, single))
        rows = (_rows(gh, frame, single), _rows(h, frame, single), None if c is None else _rows(c, frame, single))
        d = core.step(gate_in, *rows) - _rows(h_next, frame, single)
    return d


def _pass_scores(
    walk: _Walk, frame_out: _Frame, d: torch.Tensor, frame: torch.Tensor, single: int | None, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Actor and critic scores of the copies whose deltas at the output of trunk layer ``start`` (0: the input)
    are ``d``, copy ``k`` of observation ``frame[k]`` (all of observation ``single`` where not None)."""
    layers = walk.trunk[start:] + walk.body
    d = _layer_deltas(layers, frame_out.layers[start:], d, frame, single, len(walk.trunk) - start)
    if not walk.body:
        d = d.flatten(1)
    d_body = d
    if walk.split is not None:
        d = d_body[:, : walk.split]
    if walk.core is not None and frame_out.gates is not None:
        d = _core_deltas(walk.core, frame_out.gates, d, frame, single)
    d_core = d
    d = _layer_deltas(walk.actor_layers, frame_out.actor_layers, d, frame, single)
    d_logits = walk.actor.product(d)
    if walk.critic is None:  # a Q-network: value = max_a Q, a pointwise function of the Q head
        q = _rows(frame_out.logits, frame, single)
        d_value = (q + d_logits).amax(dim=-1) - _rows(frame_out.value, frame, single)
    else:
        d = d_core
        if walk.critic_from_body:
            d = d_body if walk.split is None else d_body[:, walk.split :]
        if walk.critic_core is not None and frame_out.critic_gates is not None:
            d = _core_deltas(walk.critic_core, frame_out.critic_gates, d, frame, single)
        d = _layer_deltas(walk.critic_layers, frame_out.critic_layers, d, frame, single)
        d_value = walk.critic.product(d)[:, 0]
    return 0.5 * d_logits.pow(2).sum(dim=-1), 0.5 * d_value.pow(2)


# --- the first trunk layers on the incremental windows ------------------------------------------------------------


@dataclass(frozen=True)
class _Windows:
    """Delta propagation through the first ``plan.stop`` trunk layers on the windows of
    :mod:`engine.core.incremental` (a copy's delta is zero outside its mask's box, and each layer's delta outside
    the box's window there), for N observations.

    Attributes:
        plan: the windows. trunk: layers ``1..stop``, their convolutions without padding (a window's region holds
            what the padding would give).
        diff: the input difference ``(B - x) * input_scale`` (N, C, H', W'), zero-padded by the first segment's
            padding. patches: (M, 1, h, w) what multiplies it on the first region: the mask (occlude), minus the
            mask (searchlight: the deltas are from the blurred observation, ``M * (x - B)``).
        saved: per layer ``1..stop``: the base's ``z`` and ``a`` zero-padded for every window there
            (:func:`engine.core.incremental.padded_windows`), and the windows' origins in them. The base is the
            observation (occlude) or its blur (searchlight: outside the box a copy is the blur).
        valid: per layer ``1..stop``: (M, 1, h, w) 0 on the next convolution's zero padding, or None.
        full: the layer-``stop`` map's (rows, columns).
        offset: searchlight only: the blur's layer-``stop`` activations minus the observation's (N rows), which
            turns the deltas from the blur into deltas from the observation for the rest of the walk.
    """

    plan: WindowPlan
    trunk: tuple[_Linear, ...]
    diff: torch.Tensor
    patches: torch.Tensor
    saved: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], ...]
    valid: tuple[torch.Tensor | None, ...]
    offset: torch.Tensor | None
    full: tuple[int, int]


def _windows(
    walk: _Walk,
    trunk: ConvTrunk,
    plan: WindowPlan,
    frame_out: _Frame,
    blurred: torch.Tensor,
    diff: torch.Tensor,
    interp: str,
) -> _Windows:
    """:class:`_Windows` of N observations from their blur and ``diff`` (N rows each), in the working dtype."""
    n, dtype = diff.shape[0], diff.dtype
    layers = []
    for index in range(plan.stop):
        conv = trunk.layers[index][0]
        apply = partial(F.conv2d, stride=conv.stride, padding=0, dilation=conv.dilation, groups=conv.groups)
        layers.append(replace(walk.trunk[index], apply=cast(Apply, apply)))
    if interp == "occlude":
        base = [(z[:n], a[:n]) for z, a in frame_out.layers[: plan.stop]]
        patches, offset = plan.mask_patches.to(dtype)[:, None], None
    else:
        a = pad_rows(blurred) if walk.input_scale == 1.0 else pad_rows(blurred) * walk.input_scale
        base = []
        for linear in walk.trunk[: plan.stop]:
            z = linear.forward(a)
            a = linear.activate(z)
            base.append((z[:n], a[:n]))
        patches = -plan.mask_patches.to(dtype)[:, None]
        offset = base[-1][1] - frame_out.layers[plan.stop - 1][1][:n]
    saved = []
    for layer, (z, a) in enumerate(base, start=1):
        padded_z, rows, cols = padded_windows(z, plan, layer)
        saved.append((padded_z, padded_windows(a, plan, layer)[0], rows, cols))
    valid: list[torch.Tensor | None] = []
    for segment in plan.segments:
        valid += [None if v is None else v.to(dtype) for v in segment.valid] + [None]
    full = cast(tuple[int, int], tuple(frame_out.layers[plan.stop - 1][1].shape[2:]))
    return _Windows(plan, tuple(layers), plan.pad_input(diff), patches, tuple(saved), tuple(valid), offset, full)


def _zeros(d: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero maps (K, C, *size) of ``d``'s rows, channels and dtype, channels last (the fast paste)."""
    shape = (d.shape[0], d.shape[1], *size)
    return torch.empty(shape, dtype=d.dtype, device=d.device, memory_format=torch.channels_last).zero_()


def _window_deltas(windows: _Windows, frame: torch.Tensor, mask: torch.Tensor, single: int | None) -> torch.Tensor:
    """The layer-``stop`` deltas (K, C, H, W) of the copies (frame[k], mask[k]): each segment's layers on its
    windows, the previous segment's window pasted into zeros, the last window pasted into a zero map."""
    plan = windows.plan
    d = segment_regions(windows.diff, plan.segments[0], frame, mask) * windows.patches.index_select(0, mask)
    for index, segment in enumerate(plan.segments):
        if index:  # zero outside the previous window
            assert segment.paste_index is not None  # set for every segment after the first
            d = paste_windows(_zeros(d, segment.region), segment.paste_index.index_select(0, mask), d)
        for layer in range(segment.first, segment.last + 1):
            linear = windows.trunk[layer - 1]
            dz = linear.product(d)
            if linear.activation is None:
                d = dz
            else:
                z, a, rows, cols = windows.saved[layer - 1]
                size = plan.windows[layer][2]
                z_window = window_regions(z, size, (1, 1), rows, cols, frame, mask)
                a_window = window_regions(a, size, (1, 1), rows, cols, frame, mask)
                d = linear.activation(dz.add_(z_window)).sub_(a_window)
            valid = windows.valid[layer - 1]
            if valid is not None:
                d = d * valid.index_select(0, mask)
    if plan.final_index is not None:
        d = paste_windows(_zeros(d, windows.full), plan.final_index.index_select(0, mask), d)
    if windows.offset is not None:
        d = d + _rows(windows.offset, frame, single)
    return d


def delta_scores(
    agent: Policy,
    x: torch.Tensor,
    state: State,
    masks: torch.Tensor,
    interp: str,
    blur_sigma: float,
    perturbations_per_eval: int,
    arithmetic: str = "float32",
    plan: WindowPlan | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Actor and critic scores (N, M) of every mask on every observation by delta propagation: the ``logit_l2``
    scores of ``engine.core.perturbation.perturbation_scores`` (same masks, blur, interpolation and chunking), with
    the linear layers' products in ``arithmetic`` (one of ``ARITHMETICS``).

    Args:
        agent: a policy declaring its conv trunk and the network after it (:class:`engine.core.policy.DeltaPolicy`);
            any other is a ValueError saying what it lacks (:func:`delta_unsupported` tells beforehand).
        x: observations (N, C, H, W) in [0, 1] on the agent's device and dtype.
        state: tuple of batch-first tensors: the state restored for each observation.
        masks: (M, H, W), each applied to every channel.
        interp: ``"occlude"`` or ``"searchlight"``; blur_sigma: the image blur's sigma.
        perturbations_per_eval: perturbed copies per pass; rows are padded as in ``engine.core.batching``, so the
            scores do not depend on it (bit for bit on the CPU).
        plan: windows of exact incremental inference for these masks on the agent's conv trunk
            (``engine.core.perturbation.incremental_plan``), or None: the first ``plan.stop`` trunk layers'
            deltas are then computed only on each mask's windows (zero outside them), the rest as without.
    """
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    if interp not in ("occlude", "searchlight"):
        raise ValueError(f"interp must be 'occlude' or 'searchlight', got {interp!r}")
    if x.ndim != 4 or masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(x.shape[2:]):
        raise ValueError(
            f"x must be (N, C, H, W) and masks (M, H, W) of the same H, W, got {tuple(x.shape)} and {tuple(masks.shape)}"
        )
    if isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, int):
        raise ValueError(f"perturbations_per_eval must be a positive integer, got {perturbations_per_eval!r}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must hold floats in [0, 1], got {x.dtype}")
    dtype = torch.promote_types(x.dtype, torch.float32)  # the working dtype: nonlinearities never below float32
    walk = _walk(agent, arithmetic, dtype)
    n, m = x.shape[0], masks.shape[0]
    if plan is not None and tuple(plan.mask_patches.shape[:1]) != (m,):
        raise ValueError(f"plan is for {plan.mask_patches.shape[0]} masks, got {m}")
    widths = walk.state_widths
    needed = len(widths)
    if len(state) < needed or any(tuple(s.shape) != (n, w) for s, w in zip(state, widths)):
        kinds = " and ".join(c.kind.upper() for c in (walk.core, walk.critic_core) if c is not None)
        raise ValueError(
            f"{type(agent).__name__}'s {kinds} core needs a state of at least {needed} tensors of {n} rows and "
            f"{list(widths)} columns (each layer's state side by side), got {[tuple(s.shape) for s in state]}"
        )
    # the products are exactly the arithmetic's: no TF32 (it would round the split's float32 parts to 10 bits) and
    # no autocast around them
    with (
        torch.inference_mode(),
        float32_matmul_precision(x.device, False),
        torch.autocast(x.device.type, enabled=False),
    ):
        frame_out = _frame_forward(walk, x.to(dtype), state)
        # the frame's outputs must be the agent's: a wrong declaration is refused, not scored
        if n:
            outputs = agent(x, state)
            for what, own, declared in (
                ("logits", outputs.logits, frame_out.logits),
                ("value", outputs.value, frame_out.value),
            ):
                own = own.to(dtype)
                gap = float((own - declared[:n]).abs().max())
                # a few hundred roundings of the working precision: a correct declaration differs from the agent
                # by its own kernels' rounding (float32: ~1e-7 of the outputs), a wrong one by far more
                tolerance = 256 * torch.finfo(dtype).eps * (1.0 + float(own.abs().max()))
                if not gap <= tolerance:
                    raise ValueError(
                        f"{type(agent).__name__}.delta_network() does not reproduce the agent's outputs (its {what} "
                        f"differ by {gap:.3g}, more than {tolerance:.3g}): check its conv_trunk() and delta_network()"
                    )
        blurred = gaussian_blur(x, blur_sigma).to(dtype)
        diff = (blurred - x.to(dtype)) * walk.input_scale  # (N, C, H, W): a copy's input delta is diff * weight
        weights = (masks if interp == "occlude" else 1 - masks).to(dtype)[:, None]  # (M, 1, H, W)
        windows = None
        if plan is not None and n:
            trunk = cast(ConvTrunk, conv_trunk_of(agent))
            windows = _windows(walk, trunk, plan, frame_out, blurred, diff, interp)
        actor = x.new_empty(n * m, dtype=dtype)
        critic = x.new_empty(n * m, dtype=dtype)
        for start, stop in chunk_bounds(n * m, perturbations_per_eval):
            # each pass padded to the row count pad_rows gives (copies of its last row): results are batch-invariant
            rows = padded_row_count(stop - start)
            flat = torch.arange(start, start + rows, device=x.device).clamp_(max=stop - 1)
            frame, mask = flat // m, flat % m
            single = start // m if start // m == (stop - 1) // m else None  # one observation's copies (host ints)
            if windows is None:
                d = _rows(diff, frame, single) * weights.index_select(0, mask)
                pass_actor, pass_critic = _pass_scores(walk, frame_out, d, frame, single)
            else:
                d = _window_deltas(windows, frame, mask, single)
                pass_actor, pass_critic = _pass_scores(walk, frame_out, d, frame, single, windows.plan.stop)
            actor[start:stop] = pass_actor[: stop - start]
            critic[start:stop] = pass_critic[: stop - start]
    return actor.view(n, m).to(x.dtype), critic.view(n, m).to(x.dtype)
