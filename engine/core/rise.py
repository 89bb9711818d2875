"""RISE, randomized input sampling for explanation (Petsiuk, Das and Saenko, BMVC 2018), for any agent: every
masked copy of every observation in one tensor program.

Masks, as the paper's code (and xaitk-saliency's ``RISEGrid``) makes them: a binary grid of ``s_h x s_w`` cells,
each 1 with probability ``p``, where ``s = ceil(H / cell)`` along each axis; bilinearly upsampled (half-pixel
centers, mirrored at the border: skimage's ``resize(order=1, mode="reflect", anti_aliasing=False)``) to
``((s_h + 1) * cell, (s_w + 1) * cell)``; an ``H x W`` crop from a random offset in ``0..cell-1`` along each axis.
One mask applies to every channel. Each observation's masks are drawn on the CPU by a ``torch.Generator`` seeded
by ``(seed, frame index)`` (:func:`mask_draws`), so a frame's masks do not depend on the frames scored beside it;
only the small grids and offsets travel to the device, where each pass builds its masks.

A masked copy is ``M * x + (1 - M) * baseline``; its response ``f`` is the probability (or preference) of the
action taken, or the value; the map is the paper's Monte Carlo estimate ``sum_i f(M_i x) M_i / (N p)``. The
critic map (the value's) comes from the same passes. xaitk-saliency's ``RISEScoring`` (``p1=0``) computes
``sum_i f_i M_i`` and then divides each map by its largest absolute value (scikit-learn's ``maxabs_scale``): the
same map up to that positive factor per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

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
from .settings import draw_group, grid_cells, memory_budget, plain_number

RESPONSES = ("action_prob", "action_logit", "value")
DRAW_NAMES = {"count": "num_masks", "budget": "memory_budget_mb"}
MASK_BLOCK = 64  # masks per frame weighed together when the map is summed (fixed: results never depend on chunks)
SUM_COPIES = 7  # a block of masks, the gathers and lerps that build it, and its two products (peak memory, measured)


@dataclass(frozen=True)
class RiseResult:
    """Result of :func:`rise_saliency` for N observations (C, H, W) and ``num_masks`` masks each.

    Attributes:
        actor, critic: saliency maps (N, H, W): ``sum_i f(M_i x) M_i / (N p)`` of the response and of the value.
        actor_responses, critic_responses: ``f(M_i x)`` of each mask (N, num_masks), in the order of
            :func:`rise_masks`.
        settings: the parameters that produced the maps.
    """

    actor: torch.Tensor
    critic: torch.Tensor
    actor_responses: torch.Tensor
    critic_responses: torch.Tensor
    settings: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_finite_maps("RISE", self.actor_responses, self.critic_responses)

    def __len__(self) -> int:
        return self.actor.shape[0]


def frame_seed(seed: int, frame_index: int) -> int:
    """The seed of one frame's generator: numpy's ``SeedSequence([seed, frame_index])``, one 63-bit word."""
    return int(np.random.SeedSequence([seed, frame_index]).generate_state(1, np.uint64)[0]) >> 1


def mask_draws(
    num_masks: int, p: float, cell: int, size: tuple[int, int], seed: int, frame_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame's random draws, on the CPU: the binary grids (num_masks, s_h, s_w) (``rand < p``, float64
    uniforms) and the crop offsets (num_masks, 2) (rows, columns; each in ``0..cell-1``), in that order from a
    ``torch.Generator`` seeded with :func:`frame_seed`."""
    generator = torch.Generator().manual_seed(frame_seed(seed, frame_index))
    sh, sw = grid_cells(size, cell)
    grids = torch.rand(num_masks, sh, sw, generator=generator, dtype=torch.float64) < p
    offsets = torch.randint(0, cell, (num_masks, 2), generator=generator)
    return grids, offsets


@lru_cache(maxsize=32)
def _axis_table(
    cells: int, cell: int, length: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each offset (cell,) and pixel (length,): the two grid cells a pixel reads and the weight of the second.

    The upsampled axis has ``(cells + 1) * cell`` pixels; pixel ``o`` sits at grid coordinate
    ``(o + 0.5) * cells / ((cells + 1) * cell) - 0.5``, cells beyond the grid mirrored (``d c b | a b c d``)."""
    o = torch.arange(cell, dtype=torch.float64)[:, None] + torch.arange(length, dtype=torch.float64)[None, :]
    src = (o + 0.5) * cells / ((cells + 1) * cell) - 0.5
    lo = src.floor()
    weight = src - lo

    def mirror(i: torch.Tensor) -> torch.Tensor:
        if cells == 1:
            return torch.zeros_like(i, dtype=torch.long)
        period = 2 * (cells - 1)
        i = i.long() % period
        return torch.where(i > cells - 1, period - i, i)

    return mirror(lo).to(device), mirror(lo + 1).to(device), weight.to(device=device, dtype=dtype)


def build_masks(
    grids: torch.Tensor, offsets: torch.Tensor, cell: int, size: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """Masks (B, H, W) in ``dtype`` on the grids' device from binary grids (B, s_h, s_w) and offsets (B, 2):
    elementwise gathers and lerps, so a mask does not depend on the others built with it."""
    b, sh, sw = grids.shape
    h, w = size
    row_lo, row_hi, row_w = _axis_table(sh, cell, h, grids.device, dtype)
    col_lo, col_hi, col_w = _axis_table(sw, cell, w, grids.device, dtype)
    g = grids.to(dtype)
    oy, ox = offsets[:, 0], offsets[:, 1]
    lo, hi = row_lo.index_select(0, oy)[:, :, None].expand(b, h, sw), row_hi.index_select(0, oy)[:, :, None]
    rows = torch.lerp(g.gather(1, lo), g.gather(1, hi.expand(b, h, sw)), row_w.index_select(0, oy)[:, :, None])
    lo, hi = col_lo.index_select(0, ox)[:, None, :].expand(b, h, w), col_hi.index_select(0, ox)[:, None, :]
    return torch.lerp(rows.gather(2, lo), rows.gather(2, hi.expand(b, h, w)), col_w.index_select(0, ox)[:, None, :])


def rise_masks(
    num_masks: int,
    p: float,
    cell: int,
    size: tuple[int, int],
    seed: int = 0,
    frame_index: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The masks (num_masks, H, W) :func:`rise_saliency` uses on the frame of index ``frame_index``."""
    num_masks, p, cell, seed = (plain_number(v) for v in (num_masks, p, cell, seed))
    _check_settings(num_masks, p, cell, seed, 0.0, "value", size)
    grids, offsets = mask_draws(num_masks, p, cell, size, seed, frame_index)
    device = torch.device(device)
    return build_masks(grids.to(device), offsets.to(device), cell, size, dtype)


def _check_settings(
    num_masks: int, p: float, cell: int, seed: int, baseline: float, response: str, size: tuple[int, int]
) -> None:
    if isinstance(num_masks, bool) or not isinstance(num_masks, int) or num_masks < 1:
        raise ValueError(f"num_masks must be a positive integer, got {num_masks!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p (the probability that a cell is kept) must be in (0, 1], got {p!r}")
    if isinstance(cell, bool) or not isinstance(cell, int) or not 1 <= cell <= max(size):
        raise ValueError(f"cell must be an integer side in 1..{max(size)} pixels, got {cell!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not 0 <= baseline <= 1:
        raise ValueError(f"baseline must be in 0..1, the observations' scale (0 black, 1 white), got {baseline!r}")
    if response not in RESPONSES:
        raise ValueError(f"response must be one of {RESPONSES}, got {response!r}")


def _frame_indices(frame_indices: Sequence[int] | torch.Tensor | np.ndarray | None, n: int) -> list[int]:
    if frame_indices is None:
        return list(range(n))
    try:
        indices = torch.as_tensor(frame_indices)
    except (OverflowError, RuntimeError, TypeError, ValueError) as exc:  # 2**64, strings, ragged lists
        raise ValueError(
            f"frame_indices must be {n} integer frame indices in 0..2**63-1, got {frame_indices!r} ({exc})"
        ) from None
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.shape != (n,):
        raise ValueError(
            f"frame_indices must be {n} integer frame indices (one per frame), got {indices.dtype} {tuple(indices.shape)}"
        )
    if n and int(indices.min()) < 0:
        raise ValueError(f"frame_indices must be non-negative, got {int(indices.min())}")
    return [int(i) for i in indices.tolist()]


def rise_saliency(
    agent: Policy,
    frames: Observations,
    states: StatesLike,
    num_masks: int = 1000,
    p: float = 0.5,
    cell: int = 8,
    seed: int = 0,
    response: str = "action_prob",
    actions: Actions | None = None,
    baseline: float = 0.0,
    frame_indices: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    perturbations_per_eval: int | None = None,
    memory_budget_mb: float | None = None,
    progress: bool = False,
) -> RiseResult:
    """RISE saliency (Petsiuk et al. 2018) of many observations at once, actor and critic from the same passes.

    Args:
        agent: a :class:`engine.core.policy.Policy`; all work runs on its device and dtype.
        frames: the observations the agent saw (see :func:`engine.core.inputs.prepare_observations`).
        states: the recurrent state the agent used on each observation (``rollout.states``).
        num_masks: masks per observation (N in the paper). p: the probability that a cell is kept, in (0, 1].
        cell: side of a grid cell in observation pixels (the paper's C; the grid has ``ceil(H / cell)`` cells).
        seed: with each frame's index, seeds that frame's masks (:func:`mask_draws`).
        response: what the actor map explains: ``"action_prob"`` (softmax probability of the action taken, the
            paper's class probability), ``"action_logit"`` (its preference: a Q-network's Q-value) or ``"value"``;
            ``action_*`` need ``actions``. The critic map is always the value's.
        actions: (N,) the action the agent took on each observation (``rollout.actions``).
        baseline: what a masked-out pixel becomes (in the [0, 1] observation scale; 0: black, the paper's).
        frame_indices: (N,) each frame's index in its rollout, which seeds its masks (default ``0..N-1``): pass
            the indices to score a rollout's frames in several calls with the masks of one call.
        perturbations_per_eval, memory_budget_mb: most masked inputs per forward pass, as in
            :func:`perturbation_saliency`. Results do not depend on them.
        progress: show a progress bar over passes (where stderr is a terminal).

    Returns:
        :class:`RiseResult`: maps ``sum_i f(M_i x) M_i / (N p)`` (N, H, W) and the responses (N, num_masks).
        (xaitk-saliency's ``RISEScoring`` divides ``sum_i f_i M_i`` by its largest absolute value instead.) The
        maps are in the agent's dtype, in float32 for a half-precision agent (its sums are made in float32).

    Example: a policy whose value is the top-left pixel ``x`` of a 20x20 observation, white there. With ``p = 1``
    every mask keeps everything, so the map is ``N f(x) / N = 1`` everywhere; with ``p = 0.5`` the copy's value
    is its mask's value at that pixel, and the map is ``sum_i M_i(0, 0) M_i / (N p)``.

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
    >>> kept = rise_saliency(TopLeftPixel(), frames, (), num_masks=4, p=1.0, cell=5, response="value")
    >>> float(kept.critic.min()), float(kept.critic.max())
    (1.0, 1.0)
    >>> result = rise_saliency(TopLeftPixel(), frames, (), num_masks=50, p=0.5, cell=5, response="value")
    >>> masks = rise_masks(50, 0.5, 5, (20, 20))  # the masks of frame index 0, seed 0
    >>> torch.allclose(result.critic[0], (masks[:, :1, :1] * masks).sum(0) / 25)
    True
    """
    num_masks, p, cell, seed, baseline = (plain_number(v) for v in (num_masks, p, cell, seed, baseline))
    x, state = prepare_inputs(agent, frames, states)
    n, c, h, w = x.shape
    size = (h, w)
    _check_settings(num_masks, p, cell, seed, baseline, response, size)
    budget = memory_budget(memory_budget_mb)
    device, dtype = agent_device_dtype(agent)
    indices = _frame_indices(frame_indices, n)
    taken = None
    if response != "value":
        if actions is None:
            raise ValueError(
                f"response={response!r} needs the action taken on each frame: pass actions=rollout.actions"
            )
        taken = _check_actions(actions, n, agent.num_actions, device)
    itemsize = float_bytes(dtype)
    group = draw_group("rise", num_masks, n, size, cell, memory_budget_mb, DRAW_NAMES, itemsize)
    if group < n:  # the frames' draws do not fit at once: groups of frames, the same maps (each frame's own draws)
        parts = [
            rise_saliency(
                agent,
                x[a:b],
                index_state(state, slice(a, b)),
                num_masks,
                p,
                cell,
                seed,
                response,
                None if taken is None else taken[a:b],
                baseline,
                indices[a:b],
                perturbations_per_eval,
                memory_budget_mb,
                progress,
            )
            for a, b in chunk_bounds(n, group)
        ]

        return concatenated(
            parts, ("actor", "critic", "actor_responses", "critic_responses"), settings=parts[0].settings
        )
    # the random draws, per frame on the CPU (a frame's masks never depend on the others), then on the device
    draws = [mask_draws(num_masks, p, cell, size, seed, index) for index in indices]
    grids = torch.stack([g for g, _ in draws]).to(device)  # (N, num_masks, s_h, s_w)
    offsets = torch.stack([o for _, o in draws]).to(device)  # (N, num_masks, 2)
    sh, sw = grids.shape[2:]
    m = num_masks
    chunk = resolve_perturbations_per_eval(agent, dtype, n * m, perturbations_per_eval, memory_budget_mb)

    with torch.inference_mode(), float32_matmul_precision(device, False):
        fill = torch.full((1, 1, 1, 1), float(baseline), dtype=dtype, device=device)
        actor = x.new_empty(n * m)
        critic = x.new_empty(n * m)
        flat_grids, flat_offsets = grids.view(n * m, sh, sw), offsets.view(n * m, 2)
        bounds = chunk_bounds(n * m, chunk)
        for start, stop in tqdm(
            bounds, desc="RISE masks", unit="chunk", disable=True if not progress or len(bounds) < 2 else None
        ):
            flat = torch.arange(start, stop, device=device)
            frame = flat // m
            masks = build_masks(flat_grids.index_select(0, flat), flat_offsets.index_select(0, flat), cell, size, dtype)
            masked = torch.lerp(fill.expand(stop - start, c, h, w), x.index_select(0, frame), masks[:, None])
            out = check_outputs(agent, agent(masked, index_state(state, frame)), stop - start)
            if taken is None:
                actor[start:stop] = out.value
            else:
                chosen = taken.index_select(0, frame).view(-1, 1)
                prefs = torch.softmax(out.logits, dim=-1) if response == "action_prob" else out.logits
                actor[start:stop] = prefs.gather(1, chosen)[:, 0]
            critic[start:stop] = out.value
        # sum_i f_i M_i, in blocks of a fixed number of masks (the same sums whatever the chunks and frames), for
        # as many frames at once as the memory budget holds; a half-precision agent's sums in float32
        sums = torch.promote_types(dtype, torch.float32)
        actor_responses, critic_responses = actor.view(n, m).to(sums), critic.view(n, m).to(sums)
        actor_map, critic_map = x.new_zeros(n, h, w, dtype=sums), x.new_zeros(n, h, w, dtype=sums)
        per_frame = SUM_COPIES * MASK_BLOCK * h * w * torch.finfo(sums).bits // 8
        frames_at_once = max(1, int(budget * 2**20) // per_frame)
        for a in range(0, n, frames_at_once):
            b = min(a + frames_at_once, n)
            for first in range(0, m, MASK_BLOCK):
                last = min(first + MASK_BLOCK, m)
                block = build_masks(
                    grids[a:b, first:last].reshape(-1, sh, sw),
                    offsets[a:b, first:last].reshape(-1, 2),
                    cell,
                    size,
                    sums,
                ).view(b - a, last - first, h, w)
                actor_map[a:b] += (actor_responses[a:b, first:last, None, None] * block).sum(dim=1)
                critic_map[a:b] += (critic_responses[a:b, first:last, None, None] * block).sum(dim=1)
        scale = 1 / (m * p)
        settings: dict[str, float | str] = dict(
            num_masks=num_masks, p=float(p), cell=cell, seed=seed, response=str(response), baseline=float(baseline)
        )
        return RiseResult(
            actor=actor_map * scale,
            critic=critic_map * scale,
            actor_responses=actor_responses,
            critic_responses=critic_responses,
            settings=settings,
        )
