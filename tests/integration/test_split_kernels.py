"""The Triton kernels of the fast precision's split product (engine.core.split_kernels) in triton's CPU
interpreter, and their dispatch from engine.core.delta.linear_product.

The interpreter computes bfloat16 wrongly (triton 3.8), so the kernels run here with float16 parts as a stand-in for
bfloat16: the indexing, masking, splitting and float32 accumulation are the code the GPU runs. Each result is held to
two references in float64: the same three products of the same float16 parts (the kernel may differ from it by
float32 accumulation rounding only), and the exact product ``W d`` (within what the split keeps: a hi-only product
fails the same bound). Inputs have magnitudes 1/4 to 8, where float16's lo parts stay mostly normal."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

triton = pytest.importorskip("triton", reason="the split kernels are Triton kernels, and triton is not installed")
import triton.language as tl  # noqa: E402

from engine.core import delta, split_kernels  # noqa: E402
from engine.core.delta import linear_product, use_split_kernel  # noqa: E402

PART = torch.float16
UNIT = 2.0**-11  # float16's unit roundoff (11 significant bits)
HALF_SUBNORMAL = 2.0**-25  # half float16's smallest subnormal: the most a tiny lo part loses
FLOAT32_UNIT = 2.0**-24

# name: (in channels, out channels, kernel, stride, padding, dilation, map side). Odd sizes exercise the masks: output
# positions and channels that are no multiple of the blocks (32, 16), reductions (channels * taps) that are no
# multiple of 16 for the 3x3 kernels (the 8x8 and 4x4 ones always are)
GEOMETRIES = {
    "2017_first_3x3s2p1": (1, 24, 3, 2, 1, 1, 21),
    "2017_inner_3x3s2p1": (12, 24, 3, 2, 1, 1, 11),
    "nature_8x8s4_1ch": (1, 16, 8, 4, 0, 1, 21),
    "nature_8x8s4_4ch": (4, 16, 8, 4, 0, 1, 20),
    "nature_4x4s2": (16, 24, 4, 2, 0, 1, 9),
    "nature_3x3s1": (10, 16, 3, 1, 0, 1, 9),
    "dilated_uneven": (7, 16, (3, 2), (1, 2), (1, 0), (2, 1), 13),
}


def _loop_bound_probe(out_ptr, n, BLOCK: tl.constexpr):
    """Counts to ``n`` in a loop bounded by a kernel argument, as the split kernel's reduction loop is."""
    total = tl.full((BLOCK,), 0.0, tl.float32)
    for _ in range(0, n, 1):
        total += 1.0
    tl.store(out_ptr + tl.arange(0, BLOCK), total)


@pytest.fixture(scope="module", autouse=True)
def interpreter_runs_the_kernels():
    """Skip the module where this triton's interpreter cannot run a loop bounded by a kernel argument: triton 3.6's
    (the release torch 2.11 pins) converts the bound with ``int()`` of a one-element array, which numpy 2.4 and later
    refuse. The GPU compiles the kernels and never meets it; triton 3.8, or numpy before 2.4, runs them here."""
    out = torch.zeros(16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        try:
            triton.jit(_loop_bound_probe)[(1,)](out, 3, BLOCK=16)
        except triton.runtime.errors.InterpreterError as exc:
            if "only 0-dimensional arrays can be converted" not in str(exc):
                raise
            pytest.skip(
                f"triton {triton.__version__}'s CPU interpreter cannot run a loop bounded by a kernel argument under "
                f"numpy {np.__version__} ({exc}); the split kernels' tests need triton 3.8 or numpy < 2.4 "
                "(the GPU compiles them and is unaffected)"
            )
    assert torch.equal(out, torch.full((16,), 3.0))


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Triton's CPU interpreter, float16 parts (for the dispatch, which names no part)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(split_kernels, "PART_DTYPE", PART)


def values(*shape: int, seed: int) -> torch.Tensor:
    """float32 values of magnitude 1/4 to 8, random signs."""
    g = torch.Generator().manual_seed(seed)
    magnitude = 2.0 ** (torch.rand(shape, generator=g) * 5 - 2)
    return torch.where(torch.rand(shape, generator=g) < 0.5, -magnitude, magnitude)


def parts(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` in float32, as the kernel splits: ``hi = fp16(t)``, ``lo = fp16(t - hi)``."""
    hi = t.to(PART).float()
    return hi, (t - hi).to(PART).float()


def check_product(got: torch.Tensor, d: torch.Tensor, w: torch.Tensor, product, reduction: int) -> None:
    """``got`` (the kernel's ``W d`` on ``d``, ``w`` split into float16 parts) against float64 references, with
    ``product(x, w)`` the layer's map and ``reduction`` the length of its sums."""
    d64, w64 = d.double(), w.double()
    (d_hi, d_lo), (w_hi, w_lo) = ((a.double(), b.double()) for a, b in (parts(d), parts(w)))
    got = got.double()

    # the same three products: exact products of the parts, so only float32's accumulation of 3 * reduction terms
    # (in any order) separates the kernel from them
    three = product(d_hi, w_hi) + product(d_lo, w_hi) + product(d_hi, w_lo)
    magnitude = product(d_hi.abs(), w_hi.abs()) + product(d_lo.abs(), w_hi.abs()) + product(d_hi.abs(), w_lo.abs())
    accumulation = (3 * reduction + 2) * FLOAT32_UNIT * magnitude
    assert ((got - three).abs() <= accumulation).all(), float(((got - three).abs() / accumulation).max())

    # the exact product: each of d and w keeps hi + lo to UNIT^2 (plus what a subnormal lo loses), and the dropped
    # lo*lo term is at most UNIT^2 |d||w|
    exact = product(d64, w64)
    split = 4 * UNIT**2 * product(d64.abs(), w64.abs())
    split += HALF_SUBNORMAL * (product(torch.ones_like(d64), w64.abs()) + product(d64.abs(), torch.ones_like(w64)))
    bound = split + accumulation
    error = (got - exact).abs()
    assert (error <= bound).all(), float((error / bound).max())
    # one part alone (hi*hi) fails that bound, so the check can tell
    hi_only = (product(d_hi, w_hi) - exact).abs()
    assert (hi_only > bound).any()
    assert hi_only.max() > 10 * error.max()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_split3_conv2d(name, layout):
    in_channels, out_channels, kernel, stride, padding, dilation, side = GEOMETRIES[name]
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=False)
    d = values(3, in_channels, side, side, seed=1)
    w = values(*conv.weight.shape, seed=2)
    if layout == "channels_last":
        d = d.to(memory_format=torch.channels_last)
    geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    got = split_kernels.split3_conv2d(d, *parts(w), **geometry, part=PART)

    want_layout = F.conv2d(d, w, **geometry)
    assert got.shape == want_layout.shape and got.dtype == torch.float32
    assert got.stride() == want_layout.stride()  # the input's memory format, as F.conv2d gives it
    reduction = in_channels * w.shape[2] * w.shape[3]
    check_product(got, d, w, partial(F.conv2d, **geometry), reduction)


@pytest.mark.parametrize("features", [9, 70])
def test_split3_linear(features):
    d = values(features, 5, seed=3).t()  # (5, features), not contiguous
    w = values(19, features, seed=4)
    got = split_kernels.split3_linear(d, *parts(w), part=PART)
    assert got.shape == (5, 19) and got.dtype == torch.float32
    check_product(got, d, w, F.linear, features)


def test_kernels_refuse_what_they_do_not_run(monkeypatch):
    d, w = values(2, 8, 9, 9, seed=5), values(8, 4, 3, 3, seed=6)
    with pytest.raises(ValueError, match="groups=1"):
        split_kernels.split3_conv2d(d, *parts(w), groups=2)
    with pytest.raises(ValueError, match="part must be"):
        split_kernels.split3_conv2d(d, *parts(values(4, 8, 3, 3, seed=6)), part=torch.float32)
    with pytest.raises(ValueError, match="input features or channels"):
        split_kernels.split3_conv2d(d, *parts(w))
    with pytest.raises(ValueError, match="float32"):
        split_kernels.split3_linear(d[:, :, 0, 0].double(), *parts(values(3, 8, seed=7)))
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="CUDA tensors"):
        split_kernels.split3_linear(d[:, :, 0, 0], *parts(values(3, 8, seed=7)))


class Spy:
    """Stands in for a kernel: records each call and returns the real kernel's result."""

    def __init__(self, kernel):
        self.kernel, self.calls, self.results = kernel, [], []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        self.results.append(self.kernel(*args, **kwargs))
        return self.results[-1]


@pytest.fixture
def spies(monkeypatch):
    conv, linear = Spy(split_kernels.split3_conv2d), Spy(split_kernels.split3_linear)
    monkeypatch.setattr(split_kernels, "split3_conv2d", conv)
    monkeypatch.setattr(split_kernels, "split3_linear", linear)
    return conv, linear


def layer_product(layer: nn.Module, d: torch.Tensor) -> torch.Tensor:
    """``W d`` as delta propagation computes a layer's product in bfloat16x3."""
    linear = delta._linear(layer, None, "bfloat16x3", torch.float32)
    return linear_product(d, linear.delta_weights, linear.apply, "bfloat16x3")


def test_dispatch_conv2d(spies):
    conv_spy, linear_spy = spies
    layer = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    d = values(2, 8, 11, 11, seed=8)
    emulated = layer_product(layer, d)
    assert not conv_spy.calls  # "torch", the default
    with use_split_kernel("triton"):
        got = layer_product(layer, d)
    assert len(conv_spy.calls) == 1 and not linear_spy.calls
    args, kwargs = conv_spy.calls[0]
    assert args[0].shape == d.shape and kwargs == dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1))
    assert got is conv_spy.results[0]
    # the kernel's float16 parts and the emulation's bfloat16 parts both give W d to about bfloat16x3's precision
    exact = F.conv2d(d.double(), layer.weight.detach().double(), stride=2, padding=1)
    scale = float(exact.abs().max())
    assert float((got - exact).abs().max()) < 1e-5 * scale
    assert float((emulated - exact).abs().max()) < 1e-4 * scale
    with use_split_kernel("torch"):
        assert torch.equal(layer_product(layer, d), emulated)
    assert len(conv_spy.calls) == 1


def test_dispatch_linear(spies):
    conv_spy, linear_spy = spies
    layer = nn.Linear(40, 24)
    d = values(3, 40, seed=9)
    with use_split_kernel("triton"):
        got = layer_product(layer, d)
    assert len(linear_spy.calls) == 1 and not conv_spy.calls
    assert linear_spy.calls[0][0][0].shape == (3, 40)
    result = linear_spy.results[0]
    assert got.shape == (3, 24) and got.data_ptr() == result.data_ptr() and torch.equal(got, result)
    exact = F.linear(d.double(), layer.weight.detach().double())
    assert float((got - exact).abs().max()) < 1e-5 * float(exact.abs().max())
    with use_split_kernel("torch"):
        layer_product(layer, d)
    assert len(linear_spy.calls) == 1


def test_dispatch_keeps_the_emulation_where_the_kernels_do_not_apply(spies, monkeypatch):
    conv_spy, linear_spy = spies
    grouped, same = nn.Conv2d(8, 16, 3, groups=2), nn.Conv2d(8, 16, 3, padding="same")
    d = values(2, 8, 9, 9, seed=10)
    emulated = layer_product(grouped, d), layer_product(same, d)
    with use_split_kernel("triton"):
        assert torch.equal(layer_product(grouped, d), emulated[0])  # groups=2: the kernels run groups=1 only
        assert torch.equal(layer_product(same, d), emulated[1])  # padding by name
        monkeypatch.delenv("TRITON_INTERPRET")  # CPU tensors outside the interpreter
        plain = nn.Conv2d(8, 16, 3)
        with use_split_kernel("torch"):
            want = layer_product(plain, d)
        assert torch.equal(layer_product(plain, d), want)
    assert not conv_spy.calls and not linear_spy.calls


def test_use_split_kernel_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown split kernel 'cuda'"):
        with use_split_kernel("cuda"):
            pass
    assert delta._split_kernel == "torch"
    with pytest.raises(RuntimeError), use_split_kernel("triton"):
        raise RuntimeError("the choice is restored on the way out")
    assert delta._split_kernel == "torch"
