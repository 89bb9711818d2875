"""How faithful a saliency map is to what the agent does: deletion/insertion curves, sanity checks by cascading
model randomisation, object agreement and stability. Plain functions on tensors, batched, on the agent's device.

- :func:`deletion_insertion` (Petsiuk et al. 2018, RISE): observation pixels are removed (replaced by the blurred
  observation, the same blur as the perturbation) or revealed (on the blurred observation) in order of saliency in
  ``K`` steps, and the policy's response is measured at each step: the probability of the action taken, the KL
  divergence from the unperturbed policy, and the value. All steps of all frames run as batched forward passes,
  each with its frame's restored recurrent state; ``2K`` passes per frame (the curves share their end points).
- :func:`sanity_check` (Adebayo et al. 2018, as Huber et al. 2021 apply them to Atari agents): the agent's layers
  are re-initialised from the output down, cumulatively, maps are recomputed after each stage (the randomised
  agent's recurrent states from replaying the recorded observations through it) and compared with the trained
  agent's by Spearman rank correlation and SSIM. A method is flagged when its maps keep a Spearman correlation
  >= 0.5 after the output layer *and* after all layers are randomised.
- :func:`object_agreement`: the share of a map's mass on each object against the object's share of the screen,
  and the pointing game (is the map's peak on an object); objects from :mod:`engine.metrics.regions`.
- :func:`rank_stability`, :func:`temporal_stability`: Spearman correlation of a frame's maps under two settings,
  and of consecutive frames' maps.

Maps are ``(N, H, W)`` on the observation's grid (a map of a ``(C, H, W)`` observation applies to all C channels);
score grids of a coarser grid ``(N, Gh, Gw)`` are upsampled as the engine does (:func:`upsample_maps`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..core.batching import chunk_bounds
from ..core.blur import gaussian_blur
from ..core.device import float32_matmul_precision
from ..core.errors import EngineError
from ..core.inputs import agent_device_dtype, prepare_inputs, prepare_observations, prepare_states
from ..core.masks import grid_shape
from ..core.perturbation import resolve_perturbations_per_eval, upsample_exact
from ..core.policy import Policy, State, index_state
from ..core.replay import replay_states

__all__ = [
    "BASELINES",
    "Curves",
    "DeletionInsertion",
    "MetricsSummary",
    "ObjectAgreement",
    "SanityResult",
    "auc",
    "cascade_stages",
    "deletion_insertion",
    "object_agreement",
    "randomize_modules",
    "random_maps",
    "rank_stability",
    "sanity_check",
    "scalar_columns",
    "spearman",
    "ssim",
    "temporal_stability",
    "upsample_maps",
]

BASELINES = ("blur", "black")
SANITY_THRESHOLD = 0.5


# --- maps --------------------------------------------------------------------------------------------------------


def upsample_maps(maps: torch.Tensor, size: tuple[int, int], density: int | None = None) -> torch.Tensor:
    """Maps (N, H, W) are returned as they are; score grids (N, Gh, Gw) of a perturbation grid are upsampled to
    (N, H, W) like the engine's maps (:func:`engine.core.perturbation.upsample_exact`, node (a, b) at pixel
    (a*d, b*d)). ``density`` is inferred from the grid's shape when it is the only one that gives it.

    Example: a 2x2 grid of density 2 on a 4x4 observation has nodes at pixels 0 and 2; pixel 1 lies halfway
    between them and pixel 3, past the last node, takes its value.

    >>> import torch
    >>> grid = torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])
    >>> upsample_maps(grid, (4, 4), density=2)[0].tolist()
    [[0.0, 1.0, 2.0, 2.0], [0.0, 1.0, 2.0, 2.0], [0.0, 1.0, 2.0, 2.0], [0.0, 1.0, 2.0, 2.0]]
    >>> upsample_maps(grid, (4, 4))  # densities 2 and 3 both give 2x2 grids on 4x4
    Traceback (most recent call last):
    ...
    engine.core.errors.EngineError: maps of shape (2, 2) are neither ... (fits: [2, 3]): pass density= ...
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise EngineError(
            f"maps must be a tensor (N, H, W), got {type(maps).__name__} of shape {tuple(getattr(maps, 'shape', ()))}"
        )
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    grid = tuple(maps.shape[1:])
    if density is None:
        fits = [d for d in range(1, max(size) + 1) if grid_shape(d, size) == grid]
        if len(fits) != 1:
            raise EngineError(
                f"maps of shape {grid} are neither the observation's {tuple(size)} nor the score grid of exactly one "
                f"density (fits: {fits or 'none'}): pass density= (the grid step in pixels) or maps of shape {tuple(size)}"
            )
        density = fits[0]
    if grid_shape(density, size) != grid:
        raise EngineError(
            f"score grids of density {density} on {size[0]}x{size[1]} are {grid_shape(density, size)}, got {grid}"
        )
    return upsample_exact(maps, density, cast(tuple[int, int], tuple(size)))


def random_maps(n: int, size: tuple[int, int], seed: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """(N, H, W) uniform random maps from a seeded CPU generator: the random-order reference of the curves.

    >>> import torch
    >>> maps = random_maps(2, (3, 3), seed=1)
    >>> tuple(maps.shape), torch.equal(maps, random_maps(2, (3, 3), seed=1)), bool(((maps >= 0) & (maps < 1)).all())
    ((2, 3, 3), True, True)
    """
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *size, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based, float64) along dim 1 of (N, M), tied values sharing their average rank (as scipy's rankdata)."""
    s, order = v.sort(dim=1, stable=True)
    s = s.contiguous()
    left = torch.searchsorted(s, s, right=False)  # first position of each value's tie group
    right = torch.searchsorted(s, s, right=True)  # one past its last
    ranks = torch.empty(v.shape, dtype=torch.float64, device=v.device)
    return ranks.scatter_(1, order, (left + right - 1).to(torch.float64) / 2)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: a, b (N, ...) -> (N,) float64; NaN where either map is
    constant (no ranking to compare).

    Only the ranks count: a map against itself or any increasing function of itself is 1, against its
    negative -1.

    >>> import torch
    >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> spearman(a, a).tolist(), spearman(a, a**3).tolist(), spearman(a, -a).tolist(), spearman(a, 0 * a).tolist()
    ([1.0], [1.0], [-1.0], [nan])
    >>> spearman(torch.tensor([[1.0, 1.0, 2.0]]), torch.tensor([[0.0, 0.0, 5.0]])).tolist()  # ties share their rank
    [1.0]
    """
    if a.shape != b.shape or a.ndim < 2:
        raise EngineError(
            f"maps to correlate must have the same shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    ra, rb = _average_ranks(a.flatten(1).double()), _average_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(denom > 0, (ra * rb).sum(1) / denom.clamp(min=1e-300), torch.full_like(denom, float("nan")))


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Mean structural similarity of each pair of maps (N, H, W) -> (N,), each map scaled to [0, 1] first (min-max,
    as Huber et al. normalise maps); ``kornia.metrics.ssim`` with a Gaussian window of ``window_size``.

    Maps are compared after the min-max scaling, so a map and any positive affine transform of it score 1 (to the
    constants that keep SSIM finite); maps need more than ``window_size // 2`` pixels along each side.

    >>> import torch
    >>> maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> [round(v, 6) for v in ssim(maps, 3 * maps + 1).tolist()]
    [1.0, 1.0]
    >>> bool((ssim(maps, 1 - maps) < 0).all())  # the reversed map is anti-correlated
    True
    """
    import kornia

    if a.shape != b.shape or a.ndim != 3:
        raise EngineError(f"maps must both be (N, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = _unit_range(a.double()), _unit_range(b.double())
    return kornia.metrics.ssim(a[:, None], b[:, None], window_size, max_val=1.0).mean(dim=(1, 2, 3))


# --- deletion and insertion ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curves:
    """The policy's response along one kind of curve, N frames x (K+1) steps; step k has the top
    ``floor(k * H * W / K)`` pixels of the saliency order changed (``fractions`` (K+1,) of the pixels).

    Attributes:
        prob: probability of the action taken (softmax of the action preferences; for a Q-network, of the Q-values).
        kl: KL divergence ``KL(pi_unperturbed || pi_step)``.
        value: the critic's value (``max_a Q`` for a Q-network).
    """

    prob: torch.Tensor
    kl: torch.Tensor
    value: torch.Tensor
    fractions: torch.Tensor

    def aucs(self) -> dict[str, torch.Tensor]:
        """Area under each curve over the fraction of pixels changed: ``{"prob", "kl", "value"}`` -> (N,)."""
        return {"prob": auc(self.prob), "kl": auc(self.kl), "value": auc(self.value)}


@dataclass(frozen=True)
class DeletionInsertion:
    """:func:`deletion_insertion`'s result: ``deletion`` starts at the observation and removes the most salient
    pixels first (a faithful map makes ``prob`` fall fast: low AUC, and ``kl`` rise fast: high AUC); ``insertion``
    starts at the baseline and reveals them first (``prob`` rises fast: high AUC)."""

    deletion: Curves
    insertion: Curves
    actions: torch.Tensor

    def aucs(self) -> dict[str, torch.Tensor]:
        """``deletion_prob``, ``deletion_kl``, ``deletion_value``, ``insertion_prob``, ... -> (N,)."""
        return {f"{kind}_{k}": v for kind in ("deletion", "insertion") for k, v in getattr(self, kind).aucs().items()}


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under curves (..., K+1) sampled at K+1 evenly spaced points of [0, 1] -> (...).

    >>> import torch
    >>> auc(torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).tolist()  # y = x, y = 1, a drop
    [0.5, 1.0, 0.25]
    """
    k = curves.shape[-1] - 1
    if k < 1:
        raise EngineError(f"a curve needs at least 2 points, got {curves.shape[-1]}")
    return (curves[..., :-1] + curves[..., 1:]).sum(-1) / (2 * k)


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise EngineError(
            f"steps must be a positive integer (pixels are changed in that many equal steps; 32 is typical), got {steps!r}"
        )
    return steps


def _check_actions(actions, n: int, num_actions: int, device) -> torch.Tensor:
    from ..core.jacobian import _check_actions as check  # one check for every function that takes actions

    return check(actions, n, num_actions, device)


def deletion_insertion(
    agent: Policy,
    observations,
    states,
    maps: torch.Tensor,
    actions=None,
    steps: int = 32,
    baseline: str = "blur",
    blur_sigma: float = 3.0,
    density: int | None = None,
    inputs_per_eval: int | None = None,
    memory_budget_mb: float | None = None,
) -> DeletionInsertion:
    """Deletion and insertion curves of N observations under their saliency maps, in batched forward passes.

    Args:
        agent: any :class:`engine.core.policy.Policy`; everything runs on its device and dtype.
        observations: uint8 bytes or [0, 1] floats (N, C, H, W) (raw (N, 210, 160, 3) frames for the 2017 agents).
        states: the recurrent state the agent used on each observation (tuple of batch-first tensors).
        maps: (N, H, W) saliency maps (a map applies to all C channels), or score grids (N, Gh, Gw) of a
            perturbation grid (upsampled as the engine does, see :func:`upsample_maps`). Pixels are ranked by
            descending saliency, ties by position (row-major).
        actions: (N,) the action taken on each observation; ``None``: the unperturbed policy's most likely action.
        steps: K; step k changes the top ``floor(k * H * W / K)`` pixels.
        baseline: ``"blur"`` (the observation blurred with ``blur_sigma``, each channel alone: the perturbation's
            own blur) or ``"black"`` (zeros).
        inputs_per_eval: perturbed inputs per forward pass; None derives it from ``memory_budget_mb`` as the
            perturbation does. It never changes a result (the forward passes are batch-invariant).

    Returns:
        :class:`DeletionInsertion` with curves (N, K+1) on the agent's device.

    Example: a policy that reads one pixel, the top-left one (value ``x``, logits ``(10 x, 0)``), on a white 4x4
    observation with the black baseline, in K = 4 steps of 4 pixels. A faithful map ranks that pixel first: the
    first deletion step removes it (value 1 -> 0, probability of action 0 ``sigmoid(10)`` -> 1/2) and the first
    insertion step reveals it; a map that ranks it last changes nothing until the last step.

    >>> import torch
    >>> from engine.policies.module import wrap_policy
    >>> def top_left(obs):
    ...     x = obs[:, 0, 0, 0]
    ...     return torch.stack([10 * x, 0 * x], dim=1), x
    >>> policy = wrap_policy(top_left, observation_shape=(1, 4, 4), pipeline="gymnasium_atari", dtype=torch.float64)
    >>> white = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    >>> faithful = -torch.arange(16.0).view(1, 4, 4)  # pixels in row-major order, the top-left one first
    >>> result = deletion_insertion(policy, white, (), faithful, steps=4, baseline="black")
    >>> result.deletion.fractions.tolist(), result.actions.tolist()
    ([0.0, 0.25, 0.5, 0.75, 1.0], [0])
    >>> result.deletion.value.tolist(), result.insertion.value.tolist()
    ([[1.0, 0.0, 0.0, 0.0, 0.0]], [[0.0, 1.0, 1.0, 1.0, 1.0]])
    >>> [round(p, 4) for p in result.deletion.prob[0].tolist()]
    [1.0, 0.5, 0.5, 0.5, 0.5]
    >>> {k: round(float(v), 4) for k, v in result.aucs().items() if k.endswith("value")}
    {'deletion_value': 0.125, 'insertion_value': 0.875}
    >>> unfaithful = deletion_insertion(policy, white, (), -faithful, steps=4, baseline="black")
    >>> unfaithful.deletion.value.tolist(), round(float(unfaithful.aucs()["deletion_value"]), 4)
    ([[1.0, 1.0, 1.0, 1.0, 0.0]], 0.875)
    """
    steps = _check_steps(steps)
    if baseline not in BASELINES:
        raise EngineError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    x, state = prepare_inputs(agent, observations, states)
    n, (h, w) = x.shape[0], x.shape[2:]
    device, dtype = agent_device_dtype(agent)
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or maps.shape[0] != n:
        raise EngineError(
            f"maps must be a tensor (N, H, W) with N = {n} (one map per observation), got {tuple(getattr(maps, 'shape', ()))}"
        )
    maps = upsample_maps(maps.to(device), (h, w), density)
    if not bool(torch.isfinite(maps).all()):
        raise EngineError("maps hold NaN or infinite values: there is no saliency order to follow")
    if baseline == "blur":
        with float32_matmul_precision(device, False):  # a convolution: as the passes below
            base = gaussian_blur(x, blur_sigma).to(dtype)
    else:
        base = torch.zeros_like(x)
    pixels = h * w
    order = maps.flatten(1).sort(dim=1, descending=True, stable=True).indices  # (N, P)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=device).expand(n, -1))
    counts = torch.arange(steps + 1, device=device) * pixels // steps  # pixels changed at step k
    # One job per (frame, step): deletion k = 0..K, then insertion k = 1..K-1 (insertion's ends are deletion's
    # K and 0: the baseline and the observation). 2K forward passes per frame.
    kinds_per_frame = 2 * steps
    job_count = torch.cat([counts, counts[1:steps]])  # (2K,)
    job_insert = torch.cat([torch.zeros(steps + 1, dtype=torch.bool), torch.ones(steps - 1, dtype=torch.bool)]).to(
        device
    )
    total = n * kinds_per_frame
    chunk = resolve_perturbations_per_eval(agent, dtype, total, inputs_per_eval, memory_budget_mb)
    logp = x.new_empty(total, agent.num_actions)
    value = x.new_empty(total)
    # the curves are differences of nearly equal outputs, as the maps are: the process's reduced float32 modes
    # (bfloat16 products on a CPU, TF32 on CUDA) are off here (and for the blur above) as in every saliency call
    with torch.inference_mode(), float32_matmul_precision(device, False):
        for start, stop in chunk_bounds(total, chunk):
            flat = torch.arange(start, stop, device=device)
            frame, kind = flat // kinds_per_frame, flat % kinds_per_frame
            changed = rank.index_select(0, frame) < job_count.index_select(0, kind)[:, None]  # (B, P)
            use_base = (changed ^ job_insert.index_select(0, kind)[:, None]).view(-1, 1, h, w)
            inputs = torch.where(use_base, base.index_select(0, frame), x.index_select(0, frame))
            out = agent(inputs, index_state(state, frame))
            logp[start:stop] = torch.log_softmax(out.logits, dim=-1)
            value[start:stop] = out.value
    logp = logp.view(n, kinds_per_frame, -1)
    value = value.view(n, kinds_per_frame)
    taken = logp[:, 0].argmax(dim=1) if actions is None else _check_actions(actions, n, agent.num_actions, device)
    prob = logp.gather(2, taken.view(n, 1, 1).expand(n, kinds_per_frame, 1))[..., 0].exp()
    p0 = logp[:, :1]
    kl = (p0.exp() * (p0 - logp)).sum(-1).clamp(min=0)  # rounding can make a zero divergence slightly negative

    def curve(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        deletion = t[:, : steps + 1]
        insertion = torch.cat([t[:, steps : steps + 1], t[:, steps + 1 :], t[:, :1]], dim=1)
        return deletion, insertion

    fractions = counts.double() / pixels
    (dp, ip), (dk, ik), (dv, iv) = curve(prob), curve(kl), curve(value)
    return DeletionInsertion(Curves(dp, dk, dv, fractions), Curves(ip, ik, iv, fractions), taken)


# --- objects and stability ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectAgreement:
    """Per frame and object: ``share`` of the map's mass on the object's cells, ``area`` the share of the screen
    those cells cover (both (N,) per name; NaN where the object is not on screen or the map is all zero);
    ``pointing`` (N,) whether the map's peak cell is on any object (NaN where no object is on screen)."""

    share: dict[str, torch.Tensor]
    area: dict[str, torch.Tensor]
    pointing: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Means over the frames where each applies: ``<name>_share``, ``<name>_area``, ``<name>_ratio``
        (share / area), ``objects_share`` and ``objects_area`` (all objects together), ``pointing``."""
        out = {}
        for name in self.share:
            if name == "objects":
                continue
            s, a = _nanmean(self.share[name]), _nanmean(self.area[name])
            out.update({f"{name}_share": s, f"{name}_area": a, f"{name}_ratio": s / a if a > 0 else float("nan")})
        out["objects_share"], out["objects_area"] = _nanmean(self.share["objects"]), _nanmean(self.area["objects"])
        out["pointing"] = _nanmean(self.pointing)
        return out


def _nanmean(t: torch.Tensor) -> float:
    kept = t[~torch.isnan(t)]
    return float(kept.double().mean()) if kept.numel() else float("nan")


def object_agreement(maps: torch.Tensor, objects: Mapping[str, torch.Tensor]) -> ObjectAgreement:
    """maps (N, H, W) saliency; objects ``{name: bool (N, H, W)}`` (the cells of each object, e.g.
    :func:`engine.metrics.regions.game_object_cells`) -> :class:`ObjectAgreement`; ``"objects"`` is their union.

    A share is the part of the map's positive mass on the object's cells (a signed map, as occlusion, RISE and LIME
    give, counts its evidence for the output; a non-negative map, all of it); it is NaN where the object is off
    screen or the map has no positive mass. Pointing: whether the map's peak is on an object, NaN where no object is
    on screen or the map is constant (it has no peak).

    Example: three quarters of a 2x2 map's mass on the ball's cell, a quarter of the screen:

    >>> import torch
    >>> maps = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])
    >>> ball = torch.tensor([[[True, False], [False, False]]])
    >>> object_agreement(maps, {"ball": ball}).summary()
    {'ball_share': 0.75, 'ball_area': 0.25, 'ball_ratio': 3.0,
     'objects_share': 0.75, 'objects_area': 0.25, 'pointing': 1.0}
    """
    if maps.ndim != 3:
        raise EngineError(f"maps must be (N, H, W), got {tuple(maps.shape)}")
    if not objects:
        raise EngineError(
            "no objects given: pass {name: bool (N, H, W)} cells, e.g. engine.metrics.regions.game_object_cells"
        )
    for name, given in objects.items():
        if tuple(given.shape) != tuple(maps.shape) or given.dtype != torch.bool:
            raise EngineError(
                f"object {name!r} must be a bool tensor of the maps' shape {tuple(maps.shape)}, "
                f"got {given.dtype} {tuple(given.shape)}"
            )
    if "objects" in objects:
        raise EngineError("'objects' is the union of the objects given: name them otherwise")
    maps = maps.double()
    cells = dict(objects)
    union = torch.stack([c.to(maps.device) for c in objects.values()]).any(dim=0)
    cells["objects"] = union
    positive = maps.clamp(min=0)
    total = positive.sum(dim=(1, 2))
    nan = torch.full_like(total, float("nan"))
    share, area = {}, {}
    for name, c in cells.items():
        c = c.to(maps.device)
        present = c.any(dim=2).any(dim=1)
        share[name] = torch.where(present & (total > 0), (positive * c).sum(dim=(1, 2)) / total.clamp(min=1e-300), nan)
        area[name] = torch.where(present, c.double().mean(dim=(1, 2)), nan)
    peak = maps.flatten(1).argmax(dim=1)
    hit = union.flatten(1).gather(1, peak[:, None])[:, 0].double()
    flat = maps.flatten(1)
    has_peak = flat.amax(dim=1) > flat.amin(dim=1)
    pointing = torch.where(union.flatten(1).any(dim=1) & has_peak, hit, nan)
    return ObjectAgreement(share, area, pointing)


def rank_stability(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each frame's maps under two settings: (N, H, W) x 2 -> (N,).

    >>> import torch
    >>> maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    >>> rank_stability(maps, 10 * maps).tolist(), rank_stability(maps, maps.flip(2)).tolist()
    ([1.0], [0.6])
    """
    return spearman(maps_a, maps_b)


def temporal_stability(maps: torch.Tensor, dones=None) -> torch.Tensor:
    """Spearman correlation of consecutive frames' maps, (N, H, W) -> (N-1,): entry t compares frames t and t+1;
    NaN where ``dones[t]`` (N,) says an episode ended at frame t (the next frame starts another game).

    >>> import torch
    >>> a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> maps = torch.stack([a, a, -a])  # the same map twice, then its reverse
    >>> temporal_stability(maps).tolist(), temporal_stability(maps, dones=[False, True, False]).tolist()
    ([1.0, -1.0], [1.0, nan])
    """
    if maps.ndim != 3 or maps.shape[0] < 2:
        raise EngineError(f"maps must be (N, H, W) with N >= 2 consecutive frames, got {tuple(maps.shape)}")
    rho = spearman(maps[:-1], maps[1:])
    if dones is not None:
        ended = torch.as_tensor(dones).to(torch.bool).flatten()
        if ended.shape[0] != maps.shape[0]:
            raise EngineError(f"dones must be (N,) = ({maps.shape[0]},), one per frame, got {tuple(ended.shape)}")
        rho = torch.where(ended[:-1].to(rho.device), torch.full_like(rho, float("nan")), rho)
    return rho


# --- sanity checks ---------------------------------------------------------------------------------------------------


def _network(agent) -> nn.Module:
    if isinstance(agent, nn.Module):
        return agent
    fn = getattr(agent, "fn", None)  # engine.policies.module.ModulePolicy wraps its network as .fn
    if isinstance(fn, nn.Module):
        return fn
    raise EngineError(
        f"sanity checks re-initialise the agent's layers, so the policy must be a torch nn.Module (or wrap one, as "
        f"wrap_policy(net, ...) does); got {type(agent).__name__}"
    )


def _parameterised_leaves(module: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in module.named_modules() if next(m.parameters(recurse=False), None) is not None}


def cascade_stages(agent: Policy) -> list[tuple[str, ...]]:
    """The order of cascading randomisation: stages of module names (of the network, ``named_modules``), from the
    output down. The modules that hold parameters themselves are ordered by when one forward pass runs them,
    last first; the first stage holds all the output layers, every other stage one module. The output layers are
    those whose outputs the policy returns as its logits or value (the actor and critic heads, wherever each sits
    in the order: separate actor and critic paths run one head well before the other); where the policy returns
    tensors of its own making, the last modules run that read the same tensor."""
    net = _network(agent)
    leaves = _parameterised_leaves(net)
    seen: list[tuple[str, object]] = []
    outputs: dict[str, list[torch.Tensor]] = {}  # kept alive: no later tensor can reuse their memory
    handles = []
    for name, m in leaves.items():

        def hook(mod, inputs, name=name):
            if name not in {s for s, _ in seen}:
                first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                key = None if first is None else (first.data_ptr(), tuple(first.shape))
                seen.append((name, key))

        def keep(mod, inputs, output, name=name):
            tensors = output if isinstance(output, tuple) else (output,)
            outputs.setdefault(name, []).extend(t for t in tensors if isinstance(t, torch.Tensor))

        handles.append(m.register_forward_pre_hook(hook))
        handles.append(m.register_forward_hook(keep))
    try:
        x = torch.zeros(2, *agent.observation_shape, device=agent.device, dtype=agent.dtype)
        with torch.inference_mode():
            out = agent(x, agent.initial_state(2))
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise EngineError(
            f"no layer with parameters ran in a forward pass of {type(agent).__name__}: nothing to randomise"
        )
    returned = {_storage(t) for t in (out.logits, out.value)}
    heads = [name for name, _ in seen if any(_storage(t) in returned for t in outputs.get(name, ()))]
    if not heads:
        last_key = seen[-1][1]
        count = 1
        while count < len(seen) and last_key is not None and seen[-1 - count][1] == last_key:
            count += 1
        heads = [name for name, _ in seen[len(seen) - count :]]
    stages = [tuple(heads)]
    stages += [(name,) for name, _ in reversed(seen) if name not in heads]
    return stages


def _storage(t: torch.Tensor) -> int:
    """Where ``t``'s memory starts: the same for a tensor and every view of it (``value[:, 0]``, ``logits[:n]``)."""
    return t.untyped_storage().data_ptr()


def randomize_modules(agent: Policy, names: Sequence[str], seed: int) -> None:
    """Re-initialise, in place, the parameters of the network's modules ``names`` with their own
    ``reset_parameters`` (PyTorch's default initialisation), drawn in float32 from the CPU generator seeded with
    ``seed`` (the same weights on every device and dtype); a module without one gets normal weights of its parameters' own std."""
    net = _network(agent)
    modules = dict(net.named_modules())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name in names:
            if name not in modules:
                raise EngineError(
                    f"the network has no module {name!r}: stages name modules of named_modules(), e.g. {cascade_stages(agent)[:2]}"
                )
            m = modules[name]
            own = dict(m.named_parameters(recurse=False))
            if hasattr(m, "reset_parameters"):
                fresh = copy.deepcopy(m).to(device="cpu", dtype=torch.float32)  # the same draws on every device/dtype
                fresh.reset_parameters()
                new = dict(fresh.named_parameters(recurse=False))
                for key, p in own.items():
                    p.copy_(new[key])
            else:
                for p in own.values():
                    std = float(p.double().std()) if p.numel() > 1 else 0.0
                    p.copy_(torch.randn(p.shape, dtype=torch.float64) * std)


MapsFn = Callable[[Policy, torch.Tensor, State], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class SanityResult:
    """Cascading randomisation of one method: ``stages`` (the module names randomised at each stage, cumulative),
    and per map kind (``actor``, ``critic``, ...) ``spearman`` and ``ssim`` of shape (S, n): stage s, frame i.
    ``frames``: the indices of the frames compared."""

    stages: list[tuple[str, ...]]
    spearman: dict[str, torch.Tensor]
    ssim: dict[str, torch.Tensor]
    frames: torch.Tensor
    threshold: float = SANITY_THRESHOLD
    seed: int = 0

    def flagged(self, kind: str) -> bool:
        """The method fails the check for ``kind``: mean Spearman >= threshold after the output layer and after
        all layers are randomised (its maps do not depend on what the network learned)."""
        rho = self.spearman[kind]
        return bool(_nanmean(rho[0]) >= self.threshold and _nanmean(rho[-1]) >= self.threshold)

    def summary(self) -> dict[str, float | bool]:
        """``<kind>_spearman_output``, ``<kind>_spearman_all``, ``<kind>_ssim_output``, ``<kind>_ssim_all``
        (means over the frames) and ``<kind>_flagged``."""
        out: dict[str, float | bool] = {}
        for kind in self.spearman:
            out[f"{kind}_spearman_output"] = _nanmean(self.spearman[kind][0])
            out[f"{kind}_spearman_all"] = _nanmean(self.spearman[kind][-1])
            out[f"{kind}_ssim_output"] = _nanmean(self.ssim[kind][0])
            out[f"{kind}_ssim_all"] = _nanmean(self.ssim[kind][-1])
            out[f"{kind}_flagged"] = self.flagged(kind)
        return out


def sanity_check(
    agent: Policy,
    observations,
    maps_fn: MapsFn,
    dones=None,
    frames=None,
    states=None,
    stages: Sequence[Sequence[str]] | None = None,
    seed: int = 0,
    threshold: float = SANITY_THRESHOLD,
) -> SanityResult:
    """Cascading model randomisation (Adebayo et al. 2018) of a saliency method on recorded observations.

    Args:
        agent: a policy that is (or wraps, as ``wrap_policy`` does) an ``nn.Module``; it is not changed (a deep
            copy is randomised).
        observations: the recorded observations (T, C, H, W) in the order played (uint8 or [0, 1] floats).
        maps_fn: ``maps_fn(policy, observations (n, C, H, W), states) -> {kind: maps (n, H, W)}``, the method
            under test (e.g. ``lambda p, o, s: {"actor": perturbation_saliency(p, o, s).actor}``).
        dones: (T,) episode ends of the recording (the state is reset after them).
        frames: indices of the frames whose maps are compared (default all T); every T observation is replayed.
        states: the trained agent's states on each of the T observations (default: replayed like the randomised
            agents', from the episode-start state).
        stages: module names per stage (default :func:`cascade_stages`: output layers first).
        seed: stage s draws its weights from ``seed * 1000 + s``.

    Returns:
        :class:`SanityResult` with Spearman and SSIM (S, n) per map kind.

    Example: a "method" that returns the observation itself ignores the network, so its maps keep a Spearman
    correlation of exactly 1 whatever is randomised, and it is flagged; the Jacobian maps change with the weights.

    >>> import torch
    >>> from torch import nn
    >>> from engine.core.jacobian import jacobian_saliency
    >>> from engine.policies.module import wrap_policy
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))  # 2 logits, then the value
    >>> policy = wrap_policy(net, observation_shape=(1, 8, 8), outputs=lambda y: (y[:, :2], y[:, 2]),
    ...                      pipeline="gymnasium_atari")
    >>> observations = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    >>> brightness = sanity_check(policy, observations, lambda p, o, s: {"actor": o[:, 0]})
    >>> brightness.stages  # the output layer first, then the one below it
    [('3',), ('1',)]
    >>> brightness.spearman["actor"].tolist(), brightness.flagged("actor")
    ([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], True)
    >>> jacobian = sanity_check(policy, observations, lambda p, o, s: {"actor": jacobian_saliency(p, o, s).actor})
    >>> jacobian.flagged("actor")
    False
    """
    _network(agent)
    x = prepare_observations(agent, observations)
    t = x.shape[0]
    index = torch.arange(t) if frames is None else torch.as_tensor(frames, dtype=torch.long).flatten()
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= t:
        raise EngineError(f"frames must be indices in 0..{t - 1} of the observations, got {index.tolist()[:8]}")
    index = index.to(x.device)
    trained_states = replay_states(agent, x, dones) if states is None else prepare_states(agent, states, t)
    reference = dict(maps_fn(agent, x.index_select(0, index), index_state(trained_states, index)))
    stage_names = [tuple(s) for s in (cascade_stages(agent) if stages is None else stages)]
    if not stage_names:
        raise EngineError("stages is empty: nothing to randomise")
    randomized = copy.deepcopy(agent)
    rho: dict[str, list[torch.Tensor]] = {kind: [] for kind in reference}
    sim: dict[str, list[torch.Tensor]] = {kind: [] for kind in reference}
    for s, names in enumerate(stage_names):
        randomize_modules(randomized, names, seed * 1000 + s)
        replayed = replay_states(randomized, x, dones)
        maps = maps_fn(randomized, x.index_select(0, index), index_state(replayed, index))
        for kind, ref in reference.items():
            rho[kind].append(spearman(ref.detach(), maps[kind].detach()).cpu())
            sim[kind].append(ssim(ref.detach(), maps[kind].detach()).cpu())
    return SanityResult(
        stage_names,
        {k: torch.stack(v) for k, v in rho.items()},
        {k: torch.stack(v) for k, v in sim.items()},
        index.cpu(),
        threshold,
        seed,
    )


# --- streaming summary (the app's metrics=..., chunk by chunk) -----------------------------------------------------


class MetricsSummary:
    """Faithfulness metrics of a job's maps, accumulated chunk by chunk so memory stays bounded by one chunk.

    Args:
        kinds: which maps to score (``"actor"``, ``"critic"``, ``"jacobian_actor"``, ...; those absent are skipped).
        steps: deletion/insertion steps K; ``deletion_insertion``, ``random_baseline``, ``objects``, ``stability``
            switch each metric; ``objects`` needs ``game`` (a key of ``engine.metrics.regions.GAME_OBJECTS``) and raw
            frames; ``rows``: the frame rows a map covers (the 2017 crop) or None (the whole frame).
        curve_every: the deletion/insertion curves (2 K forward passes a frame, the costly metric) on the frames
            whose index is a multiple of it only (1: every frame); the other metrics on every frame.
    """

    def __init__(
        self,
        kinds=("actor", "critic"),
        steps: int = 32,
        deletion_insertion: bool = True,
        random_baseline: bool = True,
        objects: bool = True,
        stability: bool = True,
        game: str | None = None,
        rows: tuple[int, int] | None = None,
        distance: float = 4.0,
        seed: int = 0,
        curve_every: int = 1,
    ):
        if isinstance(curve_every, bool) or not isinstance(curve_every, int) or curve_every < 1:
            raise ValueError(f"curve_every must be an integer >= 1, got {curve_every!r}")
        self.curve_every = curve_every
        self.kinds, self.steps = tuple(kinds), _check_steps(steps)
        self.use_curves, self.use_random, self.use_objects, self.use_stability = (
            deletion_insertion,
            random_baseline,
            objects,
            stability,
        )
        self.game, self.rows, self.distance, self.seed = game, rows, distance, seed
        self.sums: dict[str, dict[str, torch.Tensor | float]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.last: dict[str, tuple[torch.Tensor, bool]] = {}  # previous chunk's last map and whether its episode ended
        self.seconds, self.frames = 0.0, 0

    def _add(self, kind: str, key: str, values: torch.Tensor) -> None:
        values = values.detach().double().cpu()
        total: torch.Tensor | float
        if values.ndim == 1:
            values = values[~torch.isnan(values)]
            total, count = float(values.sum()), values.numel()
        else:  # curves (n, K+1): summed per step
            total, count = values.sum(0), values.shape[0]
        sums, counts = self.sums.setdefault(kind, {}), self.counts.setdefault(kind, {})
        sums[key] = sums.get(key, 0.0) + total
        counts[key] = counts.get(key, 0) + count

    def update(
        self,
        agent: Policy,
        observations,
        states,
        maps: Mapping[str, torch.Tensor],
        actions=None,
        frames=None,
        dones=None,
        first: int = 0,
    ) -> None:
        """One chunk: observations (n, C, H, W), the states used on them, maps ``{kind: (n, H, W)}``, actions (n,),
        raw frames (n, 210, 160, 3) for the objects, dones (n,) for the temporal stability; ``first``: the index
        of the chunk's first frame (which frames ``curve_every`` picks)."""
        import time

        from .regions import game_object_cells

        started = time.perf_counter()
        n = None
        for kind in self.kinds:
            if kind not in maps:
                continue
            m = torch.as_tensor(maps[kind]).float()
            n = m.shape[0]
            picked = [i for i in range(n) if (first + i) % self.curve_every == 0]
            if self.use_curves and picked:
                obs, curved, on, acts = observations, m, states, actions
                if len(picked) < n:  # every curve_every-th frame of the rollout
                    rows = torch.tensor(picked)
                    obs, curved = torch.as_tensor(observations)[rows], m[rows]
                    parts = () if states is None else (states,) if hasattr(states, "shape") else tuple(states)
                    on = index_state(tuple(torch.as_tensor(t) for t in parts), rows)
                    acts = None if actions is None else torch.as_tensor(actions)[rows]
                result = deletion_insertion(agent, obs, on, curved, acts, steps=self.steps)
                for key, values in result.aucs().items():
                    self._add(kind, f"{key}_auc", values)
                for name in ("deletion", "insertion"):
                    for key in ("prob", "kl", "value"):
                        self._add(kind, f"{name}_{key}_curve", getattr(getattr(result, name), key))
                if self.use_random and kind == self.kinds[0]:
                    # one seeded random order for every frame, so chunking cannot change the reference
                    rand = random_maps(1, cast(tuple[int, int], tuple(m.shape[1:])), seed=self.seed).expand(
                        len(picked), -1, -1
                    )
                    for key, values in deletion_insertion(agent, obs, on, rand, acts, steps=self.steps).aucs().items():
                        self._add("random", f"{key}_auc", values)
            if self.use_objects and self.game is not None and frames is not None:
                map_size = cast(tuple[int, int], tuple(m.shape[1:]))  # maps are (n, H, W)
                cells = game_object_cells(frames, self.game, map_size, self.rows, self.distance)
                agreement = object_agreement(m, cells)
                self._add(kind, "objects_share", agreement.share["objects"])
                self._add(kind, "objects_area", agreement.area["objects"])
                self._add(kind, "pointing", agreement.pointing)
            if self.use_stability:
                ended = (
                    torch.zeros(n, dtype=torch.bool)
                    if dones is None
                    else torch.as_tensor(dones).to(torch.bool).flatten().cpu()
                )
                if kind in self.last:  # the pair across the chunk boundary
                    previous, previous_end = self.last[kind]
                    if not previous_end:
                        self._add(kind, "stability_temporal", spearman(previous[None], m[:1]))
                if n > 1:
                    self._add(kind, "stability_temporal", temporal_stability(m, ended))
                self.last[kind] = (m[-1].clone(), bool(ended[-1]))
        self.frames += n or 0
        self.seconds += time.perf_counter() - started

    def state_dict(self) -> dict:
        """What the chunks so far added (sums, counts, the last map of each kind, frames and seconds): plain dicts of
        tensors and numbers, which ``torch.load(..., weights_only=True)`` reads back."""
        return dict(
            sums={kind: dict(sums) for kind, sums in self.sums.items()},
            counts={kind: dict(counts) for kind, counts in self.counts.items()},
            last={kind: [m, ended] for kind, (m, ended) in self.last.items()},
            frames=self.frames,
            seconds=self.seconds,
        )

    def load_state_dict(self, state: Mapping) -> None:
        """Go on from :meth:`state_dict`'s ``state``: the next :meth:`update` gives what it would have given after
        the chunks that made it."""
        self.sums = {kind: dict(sums) for kind, sums in state["sums"].items()}
        self.counts = {kind: {key: int(c) for key, c in counts.items()} for kind, counts in state["counts"].items()}
        self.last = {kind: (m, bool(ended)) for kind, (m, ended) in state["last"].items()}
        self.frames, self.seconds = int(state["frames"]), float(state["seconds"])

    def result(self) -> dict:
        """``{kind: {metric: mean over frames, <curve>: [K+1 means]}, "frames": n, "seconds_per_frame": s}``."""
        out: dict = {}
        for kind, sums in self.sums.items():
            out[kind] = {}
            for key, total in sums.items():
                count = self.counts[kind][key]
                mean = total / count if count else float("nan")
                out[kind][key] = mean.tolist() if isinstance(mean, torch.Tensor) else mean
        out["frames"] = self.frames
        out["seconds_per_frame"] = self.seconds / self.frames if self.frames else None
        return out


def scalar_columns(result: Mapping, prefix: str = "metrics") -> dict[str, float]:
    """The scalars of a nested metrics result (curves left out) as flat columns ``metrics_<kind>_<metric>``.

    >>> scalar_columns({"actor": {"pointing": 0.5, "deletion_prob_curve": [1.0, 0.5]}, "frames": 10})
    {'metrics_actor_pointing': 0.5, 'metrics_frames': 10}
    """
    flat = {}
    for key, value in result.items():
        name = f"{prefix}_{key}"
        if isinstance(value, Mapping):
            flat.update(scalar_columns(value, name))
        elif isinstance(value, (int, float, bool)) and value is not None:
            flat[name] = value
    return flat
