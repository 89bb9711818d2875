"""LIME, local interpretable model-agnostic explanations (Ribeiro, Singh and Guestrin, KDD 2016), for any agent:
every sample of every observation in one tensor program, and one weighted ridge fit per observation, batched.

As the ``lime`` package's ``LimeImageExplainer`` does it, with a documented segmentation:

- superpixels: a fixed grid of square cells of side ``cell`` pixels (the last row and column of cells clipped at
  the border), numbered row-major: pixel ``(r, c)`` belongs to superpixel ``(r // cell) * ceil(W / cell) +
  c // cell``; all channels of a pixel go together;
- samples: ``num_samples`` on/off vectors ``z`` over the F superpixels, ``randint(0, 2)`` draws of a numpy
  ``RandomState`` seeded by ``(seed, frame index)`` (:func:`lime_seed`; lime's own draws when it is given that
  ``RandomState``), the first sample all on (the observation itself), as lime sets it;
- a sample's observation keeps the pixels of the superpixels that are on and sets the others to ``hide_value``
  (lime's constant ``hide_color``);
- weights: lime's exponential kernel ``sqrt(exp(-d^2 / width^2))`` (width 0.25) of the cosine distance ``d``
  between ``z`` and the all-on vector, ``1 - sqrt(|z| / F)``;
- the fit: ridge regression (``alpha = 1``, with an intercept: lime's ``Ridge(alpha=1)``) of the response on
  ``z`` with those weights, on all features (lime's ``feature_selection="none"``), in closed form:
  ``c = (Zc^T W Zc + alpha I)^-1 Zc^T W yc`` with ``Zc``, ``yc`` centered on their weighted means.

A superpixel's coefficient is its attribution; the map paints it on the superpixel's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import chunk_bounds, concatenated
from .device import float32_matmul_precision
from .inputs import (
    Actions,
    Observations,
    StatesLike,
    agent_device_dtype,
    check_finite_maps,
    check_outputs,
    float_bytes,
    prepare_inputs,
)
from .perturbation import _check_actions, resolve_perturbations_per_eval
from .policy import Policy, index_state
from .rise import _frame_indices
from .settings import draw_group, grid_cells, plain_number

RESPONSES = ("action_prob", "action_logit", "value")
DRAW_NAMES = {"count": "num_samples", "budget": "memory_budget_mb"}


@dataclass(frozen=True)
class LimeResult:
    """Result of :func:`lime_saliency` for N observations (C, H, W) and F superpixels.

    Attributes:
        actor, critic: maps (N, H, W): each superpixel's coefficient on its pixels, of the response and the value.
        actor_weights, critic_weights: the coefficients (N, F); actor_intercept, critic_intercept: (N,).
        segments: (H, W) each pixel's superpixel (:func:`grid_segments`).
        settings: the parameters that produced the maps.
    """

    actor: torch.Tensor
    critic: torch.Tensor
    actor_weights: torch.Tensor
    critic_weights: torch.Tensor
    actor_intercept: torch.Tensor
    critic_intercept: torch.Tensor
    segments: torch.Tensor
    settings: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_finite_maps("LIME", self.actor_weights, self.critic_weights)

    def __len__(self) -> int:
        return self.actor.shape[0]


def grid_segments(size: tuple[int, int], cell: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) int64: the superpixel of each pixel, square cells of side ``cell`` numbered row-major."""
    h, w = size
    rows = torch.arange(h, device=device) // cell
    cols = torch.arange(w, device=device) // cell
    return rows[:, None] * math.ceil(w / cell) + cols[None, :]


def lime_seed(seed: int, frame_index: int) -> int:
    """The seed of one frame's numpy ``RandomState``: ``SeedSequence([seed, frame_index])``, one 32-bit word."""
    return int(np.random.SeedSequence([seed, frame_index]).generate_state(1, np.uint32)[0])


def lime_samples(num_samples: int, features: int, seed: int, frame_index: int) -> torch.Tensor:
    """One frame's on/off samples (num_samples, F), bool on the CPU: lime's draws (``randint(0, 2, K * F)``
    of the frame's ``RandomState``), the first all on."""
    draws = np.random.RandomState(lime_seed(seed, frame_index)).randint(0, 2, num_samples * features)
    samples = torch.from_numpy(draws.reshape(num_samples, features) == 1)
    samples[0] = True
    return samples


def _check_settings(
    num_samples: int,
    cell: int,
    seed: int,
    hide_value: float,
    kernel_width: float,
    alpha: float,
    response: str,
    size: tuple[int, int],
) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if isinstance(cell, bool) or not isinstance(cell, int) or not 1 <= cell <= max(size):
        raise ValueError(f"cell must be an integer side in 1..{max(size)} pixels, got {cell!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(hide_value, bool) or not isinstance(hide_value, (int, float)) or not 0 <= hide_value <= 1:
        raise ValueError(f"hide_value must be in 0..1, the observations' scale (0 black, 1 white), got {hide_value!r}")
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, float)) or not 0 < kernel_width < math.inf:
        raise ValueError(f"kernel_width must be a positive number, got {kernel_width!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a non-negative number, got {alpha!r}")
    features = math.prod(grid_cells(size, cell))
    if alpha == 0 and num_samples <= features:
        raise ValueError(
            f"alpha=0 (no ridge penalty) fits {features} superpixels ({cell}-pixel cells on {size[0]}x{size[1]}) and "
            f"an intercept, which needs num_samples > {features}, got {num_samples}: draw more samples or set alpha > 0"
        )
    if response not in RESPONSES:
        raise ValueError(f"response must be one of {RESPONSES}, got {response!r}")


def weighted_ridge(
    z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge fits with an intercept, one per row of the batch: ``z`` (N, K, F), ``y`` (N, K), ``weights`` (N, K)
    -> coefficients (N, F) and intercepts (N,), minimising ``sum_k w_k (y_k - b - z_k . c)^2 + alpha |c|^2``."""
    total = weights.sum(dim=1, keepdim=True)  # (N, 1)
    z_mean = (weights[:, :, None] * z).sum(dim=1) / total  # (N, F)
    y_mean = (weights * y).sum(dim=1) / total[:, 0]  # (N,)
    zc, yc = z - z_mean[:, None, :], y - y_mean[:, None]
    weighted = zc * weights[:, :, None]
    if alpha == 0:  # no penalty: the samples alone must determine every coefficient
        rank = int(torch.linalg.matrix_rank(zc * weights[:, :, None].sqrt()).min())
        if rank < z.shape[2]:
            raise ValueError(
                f"the LIME fit has no single solution: its samples determine {rank} of the {z.shape[2]} superpixels' "
                "coefficients (some superpixel is on in every sample, or some move together); draw more samples or "
                "set alpha > 0"
            )
    gram = weighted.transpose(1, 2) @ zc + alpha * torch.eye(z.shape[2], dtype=z.dtype, device=z.device)
    coef = torch.linalg.solve(gram, (weighted.transpose(1, 2) @ yc[:, :, None]))[:, :, 0]
    return coef, y_mean - (z_mean * coef).sum(dim=1)


def lime_saliency(
    agent: Policy,
    frames: Observations,
    states: StatesLike,
    num_samples: int = 1000,
    cell: int = 10,
    seed: int = 0,
    response: str = "action_prob",
    actions: Actions | None = None,
    hide_value: float = 0.0,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    frame_indices: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    perturbations_per_eval: int | None = None,
    memory_budget_mb: float | None = None,
    progress: bool = False,
) -> LimeResult:
    """LIME saliency (Ribeiro et al. 2016, as the ``lime`` package's image explainer) of many observations at once.

    Args:
        agent: a :class:`engine.core.policy.Policy`; all work runs on its device and dtype.
        frames: the observations the agent saw (see :func:`engine.core.inputs.prepare_observations`).
        states: the recurrent state the agent used on each observation (``rollout.states``).
        num_samples: samples per observation (lime's ``num_samples``; the first is the observation itself).
        cell: side of the square superpixels, in observation pixels (:func:`grid_segments`).
        seed: with each frame's index, seeds that frame's samples (:func:`lime_samples`).
        response: what the actor map explains: ``"action_prob"`` (softmax probability of the action taken, lime's
            class probability), ``"action_logit"`` (its preference: a Q-network's Q-value) or ``"value"``;
            ``action_*`` need ``actions``. The critic map is always the value's.
        actions: (N,) the action the agent took on each observation (``rollout.actions``).
        hide_value: what a hidden superpixel's pixels become (lime's constant ``hide_color``), in [0, 1] scale.
        kernel_width, alpha: lime's kernel width (0.25) and ridge penalty (1).
        frame_indices: (N,) each frame's index in its rollout, which seeds its samples (default ``0..N-1``).
        perturbations_per_eval, memory_budget_mb: most samples per forward pass, as in
            :func:`perturbation_saliency`. Results do not depend on them.
        progress: show a progress bar over passes (where stderr is a terminal).

    Returns:
        :class:`LimeResult` with maps (N, H, W), coefficients (N, F) and intercepts (N,), in the agent's dtype (in
        float32 for a half-precision agent, whose responses are fitted in float32).

    Example: a policy whose value is the top-left pixel ``x`` of a 20x20 observation, white there. With cells of
    10 pixels (4 superpixels) and black hidden superpixels, a sample's value is 1 where superpixel 0 is on, else
    0: a linear model, which the fit finds exactly without a penalty (``alpha=0``).

    >>> import torch
    >>> from engine.core.policy import PolicyOutput
    >>> class TopLeftPixel:
    ...     observation_shape, num_actions, pipeline, frame_stack = (1, 20, 20), 2, "gymnasium_atari", 1
    ...     device, dtype = torch.device("cpu"), torch.float64
    ...     def __call__(self, obs, state):
    ...         x = obs[:, 0, 0, 0]
    ...         return PolicyOutput(x, torch.stack([x, -x], dim=1), ())
    ...     def initial_state(self, batch=1):
    ...         return ()
    ...     def reset_state(self, state, done):
    ...         return state
    >>> frames = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    >>> frames[0, 0, 0, 0] = 255
    >>> result = lime_saliency(TopLeftPixel(), frames, (), num_samples=30, cell=10, response="value", alpha=0.0)
    >>> result.segments[::10, ::10].tolist()
    [[0, 1], [2, 3]]
    >>> torch.allclose(result.critic_weights[0], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    True
    """
    numbers = (num_samples, cell, seed, hide_value, kernel_width, alpha)
    num_samples, cell, seed, hide_value, kernel_width, alpha = (plain_number(v) for v in numbers)
    x, state = prepare_inputs(agent, frames, states)
    n, c, h, w = x.shape
    size = (h, w)
    _check_settings(num_samples, cell, seed, hide_value, kernel_width, alpha, response, size)
    device, dtype = agent_device_dtype(agent)
    indices = _frame_indices(frame_indices, n)
    taken = None
    if response != "value":
        if actions is None:
            raise ValueError(
                f"response={response!r} needs the action taken on each frame: pass actions=rollout.actions"
            )
        taken = _check_actions(actions, n, agent.num_actions, device)
    segments = grid_segments(size, cell, device)
    features = math.prod(grid_cells(size, cell))
    k = num_samples
    itemsize = float_bytes(dtype)
    group = draw_group("lime", k, n, size, cell, memory_budget_mb, DRAW_NAMES, itemsize)
    if group < n:  # the frames' samples and fits do not fit at once: groups of frames, the same maps
        parts = [
            lime_saliency(
                agent,
                x[a:b],
                index_state(state, slice(a, b)),
                num_samples,
                cell,
                seed,
                response,
                None if taken is None else taken[a:b],
                hide_value,
                kernel_width,
                alpha,
                indices[a:b],
                perturbations_per_eval,
                memory_budget_mb,
                progress,
            )
            for a, b in chunk_bounds(n, group)
        ]

        return concatenated(
            parts,
            ("actor", "critic", "actor_weights", "critic_weights", "actor_intercept", "critic_intercept"),
            segments=parts[0].segments,
            settings=parts[0].settings,
        )
    # the random draws, per frame on the CPU (a frame's samples never depend on the others), then on the device
    samples = torch.stack([lime_samples(k, features, seed, index) for index in indices]).to(device)  # (N, K, F)
    chunk = resolve_perturbations_per_eval(agent, dtype, n * k, perturbations_per_eval, memory_budget_mb)
    pixel_segments = segments.flatten()

    with torch.inference_mode(), float32_matmul_precision(device, False):
        hide = torch.full((1, 1, 1, 1), float(hide_value), dtype=dtype, device=device)
        actor = x.new_empty(n * k)
        critic = x.new_empty(n * k)
        flat_samples = samples.view(n * k, features)
        bounds = chunk_bounds(n * k, chunk)
        for start, stop in tqdm(
            bounds, desc="LIME samples", unit="chunk", disable=True if not progress or len(bounds) < 2 else None
        ):
            flat = torch.arange(start, stop, device=device)
            frame = flat // k
            kept = flat_samples.index_select(0, flat).index_select(1, pixel_segments).view(-1, 1, h, w)
            out = check_outputs(
                agent, agent(torch.where(kept, x.index_select(0, frame), hide), index_state(state, frame)), stop - start
            )
            if taken is None:
                actor[start:stop] = out.value
            else:
                chosen = taken.index_select(0, frame).view(-1, 1)
                prefs = torch.softmax(out.logits, dim=-1) if response == "action_prob" else out.logits
                actor[start:stop] = prefs.gather(1, chosen)[:, 0]
            critic[start:stop] = out.value
        fit = torch.promote_types(dtype, torch.float32)  # a half-precision agent's responses fitted in float32
        actor, critic, z = actor.to(fit), critic.to(fit), samples.to(fit)
        distance = 1 - torch.sqrt(z.sum(dim=2) / features)  # cosine distance to the all-on sample
        weights = torch.sqrt(torch.exp(-(distance**2) / kernel_width**2))
        # both fits at once: the actor's response and the value, over the same samples and weights
        coef, intercept = weighted_ridge(
            z.repeat(2, 1, 1), torch.cat([actor.view(n, k), critic.view(n, k)]), weights.repeat(2, 1), float(alpha)
        )
        maps = coef.index_select(1, pixel_segments).view(2 * n, h, w)
        settings: dict[str, float | str] = dict(
            num_samples=num_samples,
            cell=cell,
            seed=seed,
            response=str(response),
            hide_value=float(hide_value),
            kernel_width=float(kernel_width),
            alpha=float(alpha),
        )
        return LimeResult(
            actor=maps[:n],
            critic=maps[n:],
            actor_weights=coef[:n],
            critic_weights=coef[n:],
            actor_intercept=intercept[:n],
            critic_intercept=intercept[n:],
            segments=segments,
            settings=settings,
        )
