"""Saliency of a policy that looks at one white pixel on black, computed by hand from the spec's formulas.

The policy's logits are ``(w * p, 0)`` and its value ``v * p`` with ``p`` the pixel's value. Blurring the frame
(sigma 3, scipy's kernel truncated at 4 sigma) leaves ``k0**2`` of the pixel, ``k0`` the kernel's centre weight,
so occluding with mask ``M`` changes ``p`` by ``M_here * (1 - k0**2)``; a mask is the blurred plus of its centre
(the centre and its 4 neighbours; sigma = radius) divided by its maximum. Hence the actor score
``0.5 * (w * M_here * (1 - k0**2))**2`` and the critic score ``0.5 * (v * M_here * (1 - k0**2))**2``.
"""

import math

import pytest
import torch

import engine
from engine.core.perturbation import perturbation_saliency

RADIUS, DENSITY, SIGMA = 5, 5, 3.0


def kernel(sigma: float) -> dict[int, float]:
    """scipy's 1-D Gaussian kernel (truncated at 4 sigma, normalised), offset -> weight."""
    half = int(4 * sigma + 0.5)
    raw = {j: math.exp(-j * j / (2 * sigma * sigma)) for j in range(-half, half + 1)}
    total = sum(raw.values())
    return {j: r / total for j, r in raw.items()}


def mask_value(dy: int, dx: int, radius: float) -> float:
    """The mask centred ``(dy, dx)`` away, at this pixel, far from the border: blurred plus / its maximum."""
    g = kernel(radius)
    plus = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
    at = lambda y, x: sum(g.get(y - py, 0.0) * g.get(x - px, 0.0) for py, px in plus)  # noqa: E731
    return at(dy, dx) / at(0, 0)


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_scores_equal_the_hand_computed_ones(single_pixel_policy, single_pixel_frame, chunk):
    policy = single_pixel_policy
    result = perturbation_saliency(
        policy, single_pixel_frame, (), radius=RADIUS, density=DENSITY, blur_sigma=SIGMA, perturbations_per_eval=chunk
    )
    change = 1 - kernel(SIGMA)[0] ** 2
    r, c = policy.pixel
    centres = range(0, policy.observation_shape[1], DENSITY)
    checked = 0
    for i, cy in enumerate(centres):
        for j, cx in enumerate(centres):
            interior = all(21 <= q <= policy.observation_shape[1] - 22 for q in (cy, cx))  # no border reflection
            far = abs(cy - r) > 21 or abs(cx - c) > 21  # beyond the mask's truncated support: exactly nothing
            if not (interior or far):
                continue
            m = 0.0 if far else mask_value(r - cy, c - cx, RADIUS)
            assert float(result.actor_scores[0, i, j]) == pytest.approx(
                0.5 * (policy.w * m * change) ** 2, rel=1e-12, abs=0
            )
            assert float(result.critic_scores[0, i, j]) == pytest.approx(
                0.5 * (policy.v * m * change) ** 2, rel=1e-12, abs=0
            )
            checked += 1
    assert checked >= 16 + 4
    assert float(result.actor_scores[0, r // DENSITY, c // DENSITY]) == pytest.approx(
        0.5 * (policy.w * change) ** 2, rel=1e-12
    )


def test_jacobian_is_the_hand_computed_gradient(single_pixel_policy, single_pixel_frame):
    """Actor: the gradient of ``sum_k c_k logit_k`` (``c`` the logits held constant) is ``w * (w * p)`` at the
    pixel; critic: ``v``. Everywhere else zero."""
    policy = single_pixel_policy
    result = engine.jacobian_saliency(policy, single_pixel_frame, ())
    r, c = policy.pixel
    expected_actor = torch.zeros(policy.observation_shape, dtype=torch.float64)
    expected_actor[0, r, c] = policy.w * policy.w
    expected_critic = torch.zeros_like(expected_actor)
    expected_critic[0, r, c] = policy.v
    torch.testing.assert_close(result.actor_grad[0], expected_actor, rtol=0, atol=0)
    torch.testing.assert_close(result.critic_grad[0], expected_critic, rtol=0, atol=0)
    assert float(result.actor[0, r, c]) == policy.w**4 and float(result.critic[0, r, c]) == policy.v**2
