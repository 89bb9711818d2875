"""The settings of a saliency computation, as plain data (no torch: the app checks them before importing it).

Choices are string enums, so plain strings compare equal to them and Hydra's structured configs accept them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SIZE = 80  # side of the 2017 agents' square observation, in pixels


class Method(StrEnum):
    perturbation = "perturbation"
    jacobian = "jacobian"
    both = "both"  # perturbation maps, with the Jacobian maps beside them


class Interp(StrEnum):
    occlude = "occlude"  # blur inside the mask
    searchlight = "searchlight"  # blur outside the mask


class Compat(StrEnum):
    exact = "exact"
    paper = "paper"  # byte-scaled upsampling with the zero row/column (spec section 7)


class Score(StrEnum):
    logit_l2 = "logit_l2"  # the paper's 0.5 * ||L - l||^2 over the action preferences
    action_logprob = "action_logprob"  # |log pi(a|I) - log pi(a|I')| for the action the agent took


class StateAlignment(StrEnum):
    exact = "exact"
    paper = "paper"  # the original code's off-by-one recurrent state


class JacobianBackend(StrEnum):
    autograd = "autograd"  # one autograd.grad per head
    func = "func"  # torch.func.vjp, its pullback vmapped over the heads


class Incremental(StrEnum):
    """Exact incremental inference on conv windows: ``auto`` decides from radius and density."""

    auto = "auto"
    true = "true"
    false = "false"

    @property
    def setting(self) -> bool | str:
        """The value :func:`engine.core.perturbation.perturbation_saliency` takes: True, False or "auto"."""
        settings: dict[str, bool | str] = {"auto": "auto", "true": True, "false": False}
        return settings[self.value]


@dataclass
class SaliencyConfig:
    """Settings of :func:`compute_saliency`; also the schema of the app's ``saliency`` config group (the
    choices are string enums, so plain strings compare equal to them)."""

    method: Method = Method.perturbation
    radius: float = 5.0  # mask sigma, in observation pixels
    density: int = 5  # grid step in observation pixels: 16x16 = 256 perturbations per 80x80 frame, 17x17 on 84x84
    interp: Interp = Interp.occlude
    score: Score = Score.logit_l2
    blur_sigma: float = 3.0
    compat: Compat = Compat.exact
    state_alignment: StateAlignment = StateAlignment.exact
    perturbations_per_eval: int | None = None  # perturbed inputs per forward pass; None: device default / memory budget
    memory_budget_mb: float | None = None
    incremental: Incremental = Incremental.auto  # or, from Python, True | False | "auto"
    frames_per_batch: int = 32  # frames scored together (progress and memory granularity)
    jacobian_backend: JacobianBackend = JacobianBackend.autograd
    tf32: bool = False  # CUDA only: TF32 convolutions and products (faster, ~6e-4 relative error)
    compile: bool = False  # torch.compile each perturbed forward pass (inductor; a C++ compiler on the CPU)


INTERPS = tuple(Interp)
SCORES = tuple(Score)
COMPATS = tuple(Compat)


def validate_radius_density(radius: float, density: int, size: tuple[int, int] = (SIZE, SIZE)) -> None:
    """Raise ``ValueError`` unless ``0 < radius <= max(H, W)`` and ``density`` is an integer in 1..max(H, W)
    (80 for the 2017 observation), in observation pixels."""
    side = max(size)
    if isinstance(density, bool) or not isinstance(density, int):
        raise ValueError(f"density must be an integer grid step in 1..{side}, got {density!r}")
    if not 1 <= density <= side:
        raise ValueError(f"density must be in 1..{side} (pixels between mask centers; the paper uses 5), got {density}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 < radius <= side:
        raise ValueError(
            f"radius must be a number in (0, {side:g}] (the mask blur sigma; the paper uses 5), got {radius!r}"
        )


def validate_settings(
    radius: float, density: int, interp: str, blur_sigma: float, compat: str, size: tuple[int, int] = (SIZE, SIZE)
) -> None:
    """Raise ``ValueError`` naming the bad setting and its allowed values (sizes in pixels of an (H, W) observation)."""
    validate_radius_density(radius, density, size)
    if interp not in INTERPS:
        raise ValueError(f"interp must be one of {tuple(str(i) for i in INTERPS)}, got {interp!r}")
    if compat not in COMPATS:
        raise ValueError(f"compat must be one of {tuple(str(c) for c in COMPATS)}, got {compat!r}")
    if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)) or not 0 < blur_sigma <= max(size):
        raise ValueError(f"blur_sigma must be a number in (0, {max(size)}] (the paper uses 3), got {blur_sigma!r}")
