"""Fixtures of the unit tests: tiny analytic policies whose saliency is known by hand (in the manner of captum's
``BasicModel_ConvNet_One_Conv``), so a unit test checks the algebra of a method, not a trained agent's numbers."""

from __future__ import annotations

import pytest
import torch

from engine.core.policy import PolicyOutput


class SinglePixelPolicy:
    """A feed-forward policy that looks at one pixel: logits ``(w * x[0, r, c], 0)``, value ``v * x[0, r, c]``.

    Implements :class:`engine.core.policy.Policy` and nothing else (no conv trunk, no features), so the engine
    runs its plain batched passes on it.
    """

    pipeline = "gymnasium_atari"
    frame_stack = 1
    num_actions = 2

    def __init__(
        self,
        size: int = 64,
        pixel: tuple[int, int] = (30, 30),
        w: float = 3.0,
        v: float = -2.0,
        dtype: torch.dtype = torch.float64,
    ):
        self.observation_shape = (1, size, size)
        self.pixel, self.w, self.v = pixel, w, v
        self.device, self.dtype = torch.device("cpu"), dtype

    def __call__(self, obs: torch.Tensor, state: tuple) -> PolicyOutput:
        p = obs[:, 0, self.pixel[0], self.pixel[1]]
        logits = torch.stack([self.w * p, torch.zeros_like(p)], dim=1)
        return PolicyOutput(self.v * p, logits, ())

    def initial_state(self, batch: int = 1) -> tuple:
        return ()

    def reset_state(self, state: tuple, done: torch.Tensor) -> tuple:
        return state


@pytest.fixture
def single_pixel_policy() -> SinglePixelPolicy:
    return SinglePixelPolicy()


@pytest.fixture
def single_pixel_frame(single_pixel_policy) -> torch.Tensor:
    """One uint8 observation (1, 1, H, W), black but for a white pixel where the policy looks."""
    frame = torch.zeros(1, *single_pixel_policy.observation_shape, dtype=torch.uint8)
    frame[0, 0, single_pixel_policy.pixel[0], single_pixel_policy.pixel[1]] = 255
    return frame
