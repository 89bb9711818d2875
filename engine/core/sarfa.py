"""SARFA, specific and relevant feature attribution (Puri et al., "Explain your move", ICLR 2020), for any agent:
every perturbed copy of every observation in one tensor program.

For the action ``a`` the agent finds most likely on the unperturbed observation (the argmax of its action
preferences, not the action it took), a perturbation that changes ``pi = softmax(preferences)`` scores

    dP = pi(a | s) - pi(a | s')                        (specificity: how much a's probability fell)
    K  = 1 / (1 + KL(P_rem(s) || P_rem(s')))           (relevance: how little the other actions were disturbed)
    S  = 2 K dP / (K + dP)  where dP > 0, else 0       (their harmonic mean)

``P_rem`` is the softmax over the other actions' preferences (``a`` left out). Only the actor gets a map. The KL
runs from the unperturbed to the perturbed state, as in the authors' code (nikaashpuri/sarfa-saliency:
``entropy(p, new_p)`` in ``visualize_atari/saliency.py``, ``entropy(Q_q, Q_p)`` in ``sarfa_saliency.py``, scipy's
``entropy(pk, qk)`` being ``KL(pk || qk)``); its printed formula does not say.

Two perturbations: ``"blur"`` (Puri et al.'s code builds on the 2017 method's blur) perturbs exactly as
:func:`engine.core.perturbation.perturbation_saliency` does, with the same masks and the same plain or incremental
forward passes (:func:`engine.core.perturbation.perturbation_scores` computes SARFA's score from each pass's
logits: no pass of its own); ``"disc"`` (Huber, Limmer and André's benchmark) paints a black disc, every pixel
within ``radius`` of a center set to 0 on all channels, with centers every ``density`` pixels (2 and 2 by
default), in passes of its own (incremental too: a disc changes only a small box).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import cast

import torch

from .device import float32_matmul_precision
from .inputs import Observations, StatesLike, agent_device_dtype, check_finite_maps, prepare_inputs
from .masks import center_coords, grid_shape, perturbation_masks
from .perturbation import incremental_plan, perturbation_scores, resolve_perturbations_per_eval, upsample_exact
from .policy import Policy
from .settings import SARFA_RADIUS_IS, check_incremental, plain_number, validate_settings

PERTURBATIONS = ("blur", "disc")
# (radius, density) when none is given: the 2017 method's for the blur, Huber et al.'s for the disc
DEFAULT_GEOMETRY = {"blur": (5.0, 5), "disc": (2.0, 2)}


@dataclass(frozen=True)
class SarfaResult:
    """Result of :func:`sarfa_saliency` for N observations (C, H, W) on a Gh x Gw grid of perturbation centers.

    Attributes:
        actor: saliency maps (N, H, W), the score grids upsampled as :func:`perturbation_saliency` upsamples them.
        actor_scores: SARFA's score S of each perturbation (N, Gh, Gw); cell (a, b) is the perturbation centered
            at pixel ``(centers[a], centers[b])``.
        centers: pixel coordinates of the centers along the rows, (Gh,).
        settings: the parameters that produced the maps.
    """

    actor: torch.Tensor
    actor_scores: torch.Tensor
    centers: torch.Tensor
    settings: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_finite_maps("SARFA", self.actor_scores)

    def __len__(self) -> int:
        return self.actor.shape[0]


def sarfa_scores(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """SARFA's score (B,) of perturbed copies: ``base_logits`` (B, A) the unperturbed preferences of each copy's
    observation, ``logits`` (B, A) the copy's own. The action explained is ``base_logits.argmax(-1)``."""
    a = base_logits.argmax(dim=-1, keepdim=True)
    d_p = (torch.softmax(base_logits, dim=-1).gather(1, a) - torch.softmax(logits, dim=-1).gather(1, a))[:, 0]
    others = torch.ones_like(base_logits, dtype=torch.bool).scatter(1, a, False)
    log_p = torch.log_softmax(torch.where(others, base_logits, float("-inf")), dim=-1)  # P_rem(s), a left out
    log_q = torch.log_softmax(torch.where(others, logits, float("-inf")), dim=-1)  # P_rem(s')
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    kl = torch.where(others, log_p.exp() * (log_p - log_q), zero).sum(dim=-1)
    k = 1 / (1 + kl)
    positive = d_p > 0
    score = torch.where(positive, 2 * k * d_p / torch.where(positive, k + d_p, 1), zero)
    # a NaN preference would read as "no effect" (its comparisons are false): it stays NaN, and the result says so
    finite = torch.isfinite(base_logits).all(dim=-1) & torch.isfinite(logits).all(dim=-1)
    return torch.where(finite, score, float("nan"))


@lru_cache(maxsize=16)
def _discs_float64(radius: float, density: int, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    ci, cj = torch.meshgrid(center_coords(density, h).double(), center_coords(density, w).double(), indexing="ij")
    yy = torch.arange(h, dtype=torch.float64).view(1, h, 1)  # center (i, j) is mask number i * Gw + j
    xx = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    inside = (yy - ci.reshape(-1, 1, 1)) ** 2 + (xx - cj.reshape(-1, 1, 1)) ** 2 <= radius**2
    return inside.to(torch.float64)


def disc_masks(
    radius: float, density: int, size: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Binary disc masks ``(Gh * Gw, H, W)``: 1 on the pixels within ``radius`` of each center (centers as the
    2017 method's, row-major). Cached on the CPU; treat the result as read-only."""
    return _discs_float64(float(radius), density, (int(size[0]), int(size[1]))).to(device=device, dtype=dtype)


def sarfa_saliency(
    agent: Policy,
    frames: Observations,
    states: StatesLike,
    radius: float | None = None,
    density: int | None = None,
    interp: str = "occlude",
    blur_sigma: float = 3,
    perturbation: str = "blur",
    perturbations_per_eval: int | None = None,
    memory_budget_mb: float | None = None,
    incremental: bool | str = "auto",
    progress: bool = False,
    tf32: bool = False,
) -> SarfaResult:
    """SARFA saliency (Puri et al. 2020) of many observations at once (actor only).

    Args:
        agent: a :class:`engine.core.policy.Policy`; all work runs on its device and dtype.
        frames: the observations the agent saw (see :func:`engine.core.inputs.prepare_observations`).
        states: the recurrent state the agent used on each observation (``rollout.states``).
        radius, density: in observation pixels. ``"blur"``: the 2017 method's mask sigma and grid step (default
            5 and 5); ``"disc"``: the disc's radius and the step between centers (default 2 and 2, Huber et al.'s).
        interp: ``"occlude"`` (perturb inside the mask) or ``"searchlight"`` (outside it).
        blur_sigma: sigma of the image blur (``"blur"`` only).
        perturbation: ``"blur"`` (the 2017 method's masks and blur, and its forward passes: the same count and
            cost as :func:`perturbation_saliency`) or ``"disc"`` (black discs).
        perturbations_per_eval, memory_budget_mb, incremental, progress, tf32: as in :func:`perturbation_saliency`.
            Results do not depend on ``perturbations_per_eval``.

    Returns:
        :class:`SarfaResult` with maps (N, H, W) and score grids (N, Gh, Gw). The action explained on each
        observation is ``agent(x, state).logits.argmax(-1)`` (not computed here: it would cost a pass).

    Example: a policy that reads the top-left pixel ``x`` of a 20x20 observation (logits ``(x, 0, -x)``), on an
    observation white there and black elsewhere: action 0 is explained, ``pi(s) = (0.665, 0.245, 0.090)``. Of
    the black discs (radius 1, every 10 pixels) only the one centred on the pixel changes it, to 0:
    ``pi(s') = (1/3, 1/3, 1/3)``, so ``dP = 0.332``; the other actions go from ``(0.731, 0.269)`` to
    ``(0.5, 0.5)``: ``KL = 0.111``, ``K = 0.900`` and ``S = 2 K dP / (K + dP) = 0.485``.

    >>> import torch
    >>> from engine.core.policy import PolicyOutput
    >>> class TopLeftPixel:
    ...     observation_shape, num_actions, pipeline, frame_stack = (1, 20, 20), 3, "gymnasium_atari", 1
    ...     device, dtype = torch.device("cpu"), torch.float64
    ...     def __call__(self, obs, state):
    ...         x = obs[:, 0, 0, 0]
    ...         return PolicyOutput(x, torch.stack([x, 0 * x, -x], dim=1), ())
    ...     def initial_state(self, batch=1):
    ...         return ()
    ...     def reset_state(self, state, done):
    ...         return state
    >>> frames = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    >>> frames[0, 0, 0, 0] = 255
    >>> result = sarfa_saliency(TopLeftPixel(), frames, (), radius=1, density=10, perturbation="disc")
    >>> result.actor_scores[0].round(decimals=3).tolist()
    [[0.485, 0.0], [0.0, 0.0]]
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    incremental = check_incremental(incremental)
    default_radius, default_density = DEFAULT_GEOMETRY[perturbation]
    radius = plain_number(default_radius if radius is None else radius)
    density = plain_number(default_density if density is None else density)
    blur_sigma = plain_number(blur_sigma)
    x, state = prepare_inputs(agent, frames, states)
    n, size = x.shape[0], cast(tuple[int, int], tuple(x.shape[2:]))
    validate_settings(radius, density, interp, blur_sigma, "exact", size, SARFA_RADIUS_IS[perturbation])
    check_sarfa_agent(agent)
    device, dtype = agent_device_dtype(agent)
    if perturbation == "blur":
        masks = perturbation_masks(radius, density, device, dtype, size)
    else:
        masks = disc_masks(radius, density, size, device, dtype)
    chunk = resolve_perturbations_per_eval(agent, dtype, n * masks.shape[0], perturbations_per_eval, memory_budget_mb)
    plan = incremental_plan(agent, masks, incremental)  # as perturbation_saliency chooses them
    with torch.inference_mode(), float32_matmul_precision(device, tf32):
        fill = None if perturbation == "blur" else torch.zeros_like(x)
        scores, _ = perturbation_scores(
            agent,
            x,
            state,
            masks,
            interp,
            blur_sigma,
            chunk,
            plan,
            progress,
            fill=fill,
            actor_score=sarfa_scores,
        )
        gh, gw = grid_shape(density, size)
        return sarfa_result(scores.view(-1, gh, gw), radius, density, interp, blur_sigma, perturbation, size)


def check_sarfa_agent(agent: Policy) -> None:
    """SARFA needs at least two actions (its specificity compares the explained action with the others)."""
    if agent.num_actions < 2:
        raise ValueError(f"SARFA compares an action with the others: this agent has {agent.num_actions} action")


def sarfa_result(
    grid: torch.Tensor,
    radius: float,
    density: int,
    interp: str,
    blur_sigma: float,
    perturbation: str,
    size: tuple[int, int],
) -> SarfaResult:
    """A :class:`SarfaResult` from its score grid (N, Gh, Gw): also for a grid computed from the 2017 method's own
    passes (``perturbation_saliency(..., extra_actor_scores={"sarfa": sarfa_scores})``)."""
    with torch.inference_mode():
        settings: dict[str, float | str] = dict(
            radius=radius, density=density, interp=str(interp), blur_sigma=blur_sigma, perturbation=str(perturbation)
        )
        return SarfaResult(
            actor=upsample_exact(grid, density, size),
            actor_scores=grid,
            centers=center_coords(density, size[0]).to(grid.device),
            settings=settings,
        )
