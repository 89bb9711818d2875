"""Fast precision's split product as three float32 products (``use_split_kernel("tf32")``,
engine.core.delta.split_products_tf32): on CUDA they run on TF32 tensor cores, which hold bfloat16 parts exactly;
here, on the CPU, they are float32 products, and what is checked is the algebra: the three products of the
bfloat16 parts, accumulated in float32, for a convolution and a linear layer, and the dispatch from
``linear_product``. Whether cuDNN's TF32 algorithms keep the parts exact is the GPU check's
``fast_tf32_vs_emulation``."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from engine.core import delta
from engine.core.delta import linear_product, prepare_weight, split_bfloat16, use_split_kernel
from engine.core.perturbation import perturbation_saliency
from engine.policies.greydanus2017 import ActorCritic

BF16_UNIT = 2.0**-8  # bfloat16's unit roundoff (8 significant bits)
FLOAT32_UNIT = 2.0**-24
CONV = partial(F.conv2d, stride=2, padding=1)


def values(*shape: int, seed: int) -> torch.Tensor:
    """float32 values of magnitude 1/8 to 4, random signs."""
    g = torch.Generator().manual_seed(seed)
    magnitude = 2.0 ** (torch.rand(shape, generator=g) * 5 - 3)
    return torch.where(torch.rand(shape, generator=g) < 0.5, -magnitude, magnitude)


@pytest.mark.parametrize(
    "product,d_shape,w_shape",
    [(CONV, (3, 12, 21, 21), (24, 12, 3, 3)), (F.linear, (5, 70), (19, 70))],
    ids=["conv2d", "linear"],
)
def test_three_products_of_the_bfloat16_parts(product, d_shape, w_shape):
    d, w = values(*d_shape, seed=1), values(*w_shape, seed=2)
    w_hi, w_lo = prepare_weight(w, "bfloat16x3")
    got = delta.split_products_tf32(d, w_hi, w_lo, product).double()

    d_hi, d_lo = (t.double() for t in split_bfloat16(d))
    w_hi64, w_lo64 = w_hi.double(), w_lo.double()
    three = product(d_hi, w_hi64) + product(d_lo, w_hi64) + product(d_hi, w_lo64)
    terms = product(d_hi.abs(), w_hi64.abs()) + product(d_lo.abs(), w_hi64.abs()) + product(d_hi.abs(), w_lo64.abs())
    reduction = w[0].numel()
    accumulation = (3 * reduction + 2) * FLOAT32_UNIT * terms  # float32 sums of exact products, in any order
    assert ((got - three).abs() <= accumulation).all()
    # against the exact product: hi + lo keeps 16 bits of each factor, the dropped lo*lo term is below 2^-16 |d||w|
    exact = product(d.double(), w.double())
    bound = 4 * BF16_UNIT**2 * product(d.double().abs(), w.double().abs()) + accumulation
    error = (got - exact).abs()
    assert (error <= bound).all()
    hi_only = (product(d_hi, w_hi64) - exact).abs()  # one part alone fails the bound: the check can tell
    assert (hi_only > bound).any() and hi_only.max() > 10 * error.max()


def test_linear_product_runs_the_three_products_under_the_tf32_kernel(monkeypatch):
    calls = []
    split_products = delta.split_products_tf32
    monkeypatch.setattr(delta, "split_products_tf32", lambda *args: calls.append(args) or split_products(*args))
    d, w = values(2, 12, 21, 21, seed=3), values(24, 12, 3, 3, seed=4)
    weights = prepare_weight(w, "bfloat16x3")
    emulated = linear_product(d, weights, CONV, "bfloat16x3")
    assert not calls
    with use_split_kernel("tf32"):
        got = linear_product(d, weights, CONV, "bfloat16x3")
        linear_product(d, prepare_weight(w, "float32"), CONV, "float32")  # other arithmetics are untouched
    assert len(calls) == 1 and calls[0][3] is CONV
    assert torch.equal(got, split_products(d, *weights, CONV))
    # the emulation's two products and these three differ by float32 sums only
    scale = CONV(d.abs(), w.abs())
    assert ((got - emulated).abs() <= 3 * w[0].numel() * FLOAT32_UNIT * scale).all()
    with pytest.raises(ValueError, match="unknown split kernel"):
        with use_split_kernel("tf16"):
            pass


def test_fast_maps_under_the_tf32_kernel_are_the_emulations():
    """The whole fast walk (the 2017 agent: four convolutions, the GRU's input product, two heads) under either
    kernel: both as far from float64 as fast precision is (their difference is float32 sums of the same products)."""
    torch.manual_seed(0)
    agent = ActorCritic(6).eval()
    obs = torch.rand(2, 1, 80, 80).mul_(torch.rand(2, 1, 1, 1))
    state = (torch.randn(2, 256) * 0.3,)
    settings = dict(radius=5, density=10, precision="fast")
    emulated = perturbation_saliency(agent, obs, state, **settings)
    with use_split_kernel("tf32"):
        got = perturbation_saliency(agent, obs, state, **settings)
    want = perturbation_saliency(agent.double(), obs.double(), tuple(s.double() for s in state), radius=5, density=10)
    for name in ("actor_scores", "critic_scores"):
        top = getattr(want, name).abs().max()
        error = float((getattr(got, name).double() - getattr(want, name)).abs().max() / top)
        emulation_error = float((getattr(emulated, name).double() - getattr(want, name)).abs().max() / top)
        assert error < 1e-4, (name, error)  # the bound for fast mode
        assert error <= 2 * emulation_error + 1e-6, (name, error, emulation_error)
