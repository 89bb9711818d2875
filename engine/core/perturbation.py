"""Batched perturbation saliency (spec, sections 3-7, and its extension to any agent and observation): every
blurred copy of every observation in one tensor program.

For N observations (C, H, W) and Gh x Gw mask centers, the N * Gh * Gw perturbed inputs are built on the device
from the observations, their blur (once per observation, each channel alone) and the cached masks (one mask on
every channel), and run through the policy with each observation's restored recurrent state repeated along the
batch. One forward pass serves both heads. The actor score of a perturbation is ``0.5 * sum_k (L_k - l_k)^2``
over the action preferences (``score="logit_l2"``, the paper's) or ``|log pi(a|I) - log pi(a|I')|`` for the
action ``a`` the agent took (``score="action_logprob"``); the critic score is ``0.5 * (V - V')^2``; ``L`` and
``V`` are the unperturbed outputs, computed once per observation. Inputs beyond ``perturbations_per_eval`` (or
the memory budget) are split into passes; a pass boundary never changes a result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import cast

import torch
from tqdm.auto import tqdm

from .batching import chunk_bounds, pad_rows
from .blur import gaussian_blur
from .compiled import CompiledPass, compile_mode
from .delta import delta_scores, delta_unsupported
from .device import float32_matmul_precision
from .incremental import (
    UnsupportedTrunk,
    WindowPlan,
    conv_trunk_of,
    perturbed_outputs,
    shared_activations,
    trunk_geometry,
    window_plan,
    worthwhile,
)
from .inputs import (
    Actions,
    Observations,
    StatesLike,
    agent_device_dtype,
    check_finite_maps,
    check_outputs,
    prepare_inputs,
)
from .masks import center_coords, grid_shape, perturb, perturbation_masks
from .policy import ConvTrunk, IncrementalPolicy, Policy, PolicyOutput, State, index_state
from .preprocessing import SIZE, byte_scale, resize_uint8
from .settings import (
    SCORES,
    check_incremental,
    check_perturbations_per_eval,
    memory_budget,
    plain_number,
    validate_settings,
)

# a score of perturbed copies from the unperturbed logits of each copy's observation and the copy's own, (B, A) -> (B,)
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (unperturbed outputs, copies' outputs, each copy's observation index) -> (actor scores, critic scores) of the copies
OutputScoresFn = Callable[[PolicyOutput, PolicyOutput, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

PRECISIONS = ("exact", "fast")
FAST_ARITHMETIC = "bfloat16x3"  # engine.core.delta: measured ~1e-5 of the map max on every agent (docs/method.md)
_log = logging.getLogger(__name__)
_fast_refusals_logged: set[str] = set()

# On the CPU, passes whose activations stay in cache are fastest, so the memory budget alone would choose
# passes far too large there (the README's benchmark tables show the sweep).
DEFAULT_CPU_CHUNK = 64


@dataclass(frozen=True)
class PerturbationResult:
    """Result of :func:`perturbation_saliency` for N observations (C, H, W) on a Gh x Gw grid of mask centers.

    Attributes:
        actor, critic: saliency maps (N, H, W).
        actor_scores, critic_scores: raw scores S(i, j) (N, Gh, Gw); cell (a, b) is the mask centered at
            pixel ``(centers[a], centers[b])`` (rows, then columns; the same along both axes of a square grid).
        centers: pixel coordinates of the centers along the rows, (Gh,).
        settings: the parameters that produced the maps.
        extra_scores: the score grids (N, Gh, Gw) of ``extra_actor_scores``, by name.
    """

    actor: torch.Tensor
    critic: torch.Tensor
    actor_scores: torch.Tensor
    critic_scores: torch.Tensor
    centers: torch.Tensor
    settings: dict[str, float | str] = field(default_factory=dict)
    extra_scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_finite_maps("perturbation", self.actor_scores, self.critic_scores)

    def __len__(self) -> int:
        return self.actor.shape[0]


def bytes_per_input(agent: Policy, dtype: torch.dtype) -> int:
    """Rough peak memory of one perturbed input in a forward pass (input, activations, gates, scores).

    The policy's own ``activation_elements`` (per input, besides the observation) where it declares it (the 2017
    agents give their exact layer sizes), else five observations' worth (a Nature CNN's activations are about 1.1
    observations of 4x84x84)."""
    c, h, w = agent.observation_shape
    elements = 3 * c * h * w + getattr(agent, "activation_elements", 5 * c * h * w) + 4 * agent.num_actions
    return elements * torch.finfo(dtype).bits // 8


def _fast_path(agent: Policy, score: str, extra: Mapping[str, ScoreFn] | None, mode: str | None) -> bool:
    """Whether ``precision="fast"`` can run delta propagation here; if not, say why once per reason (the exact path
    runs instead)."""
    reason = delta_unsupported(agent)
    if reason is None and agent.dtype not in (torch.float32, torch.float64):
        reason = f"the agent computes in {agent.dtype} (the deltas are exact in float32 or float64 agents only)"
    if reason is None and score != "logit_l2":
        reason = f"score={score!r} (delta propagation gives the logit_l2 score only)"
    if reason is None and extra:
        reason = "extra actor scores (SARFA beside the 2017 method) have no delta form"
    if reason is None and mode is not None:
        reason = "compile is for the exact path"
    if reason is not None and reason not in _fast_refusals_logged:
        _fast_refusals_logged.add(reason)
        _log.warning("precision='fast' runs the exact path: %s", reason)
    return reason is None


def incremental_plan(
    agent: Policy, masks: torch.Tensor, incremental: bool | str, fast: bool = False
) -> WindowPlan | None:
    """The windows of incremental inference for ``masks`` (None: plain passes): with ``incremental="auto"`` where
    the agent declares its conv trunk and the windows pay, with ``True`` always (a ValueError for an agent that
    declares no trunk); ``fast``: chosen for fast precision's delta propagation, whose cost differs."""
    trunk = conv_trunk_of(agent) if incremental is not False else None
    if incremental is True and trunk is None:
        raise ValueError(
            f"incremental inference needs a policy that declares its conv trunk (conv_trunk() and from_trunk(), "
            f"engine.core.policy.IncrementalPolicy); this agent ({type(agent).__name__}) runs plain batched passes: "
            "use incremental='auto' or False"
        )
    try:
        plan = window_plan(trunk_geometry(agent, trunk), masks, fast=fast) if trunk is not None else None
    except UnsupportedTrunk:
        if incremental is True:
            raise
        plan = None  # "auto": the planner has no windows for this trunk, so plain passes are the choice
    if plan is not None and incremental == "auto" and not worthwhile(plan):
        plan = None
    return plan


def resolve_perturbations_per_eval(
    agent: Policy, dtype: torch.dtype, total: int, perturbations_per_eval: int | None, memory_budget_mb: float | None
) -> int:
    """``perturbations_per_eval`` if given, else as many inputs as fit the memory budget (at least 1, at most ``total``),
    and on the CPU at most ``DEFAULT_CPU_CHUNK`` unless a budget was given."""
    perturbations_per_eval = check_perturbations_per_eval(perturbations_per_eval)
    if perturbations_per_eval is not None:
        return min(perturbations_per_eval, total)
    fits = int(memory_budget(memory_budget_mb) * 2**20) // bytes_per_input(agent, dtype)
    if memory_budget_mb is None and torch.device(agent.device).type == "cpu":
        fits = min(fits, DEFAULT_CPU_CHUNK)
    return max(1, min(total, fits))


def perturbation_scores(
    agent: Policy,
    x: torch.Tensor,
    state: State,
    masks: torch.Tensor,
    interp: str,
    blur_sigma: float,
    perturbations_per_eval: int,
    plan: WindowPlan | None = None,
    progress: bool = False,
    score: str = "logit_l2",
    actions: torch.Tensor | None = None,
    compile: str | None = None,
    fill: torch.Tensor | None = None,
    actor_score: ScoreFn | None = None,
    extra_scores: Mapping[str, ScoreFn] | None = None,
    extra_out: dict[str, torch.Tensor] | None = None,
    output_scores: OutputScoresFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Actor and critic scores (N, M) of every mask on every observation.

    Args:
        x: observations (N, C, H, W) in [0, 1] on the agent's device/dtype.
        state: tuple of batch-first tensors: the state restored for each observation.
        masks: (M, H, W), each applied to every channel.
        plan: windows for exact incremental inference (``engine.core.incremental``; policies that declare a conv
            trunk, :class:`engine.core.policy.IncrementalPolicy`), or None.
        score: ``"logit_l2"`` or ``"action_logprob"`` (then ``actions`` (N,) holds the action taken on each).
        compile: an inductor mode (``engine.core.compiled``): each pass compiled, all passes of one size; or None.
        fill: (N, C, H, W) what the masks blend in instead of the observations' blur (SARFA's black disc: zeros).
        actor_score: replaces ``score``: a function of the unperturbed logits of each copy's observation and the
            copy's logits, both (B, A), giving its actor score (B,) (SARFA, ``engine.core.sarfa``).
        extra_scores: more such functions, by name, computed from the same passes; their scores (N, M) are put
            into ``extra_out[name]`` (SARFA beside the 2017 method: no pass of its own).
        output_scores: replaces both scores: a function of the unperturbed outputs (N rows), the copies' outputs
            (B rows) and each copy's observation index (B,), giving the actor and critic scores (B,) each
            (occlusion sensitivity's responses, ``engine.core.occlusion``).
    """
    extra = dict(extra_scores or {})
    if extra and extra_out is None:
        raise ValueError("extra_scores needs extra_out, the dict their scores are put into")
    n, m = x.shape[0], masks.shape[0]
    base = check_outputs(agent, agent(x, state), n)  # the unperturbed outputs, once per observation
    # once per observation (autocast may lower the conv)
    blurred = gaussian_blur(x, blur_sigma).to(x.dtype) if fill is None else fill
    if plan is None:
        plane_masks = masks[:, None]  # (M, 1, H, W): one mask on every channel

        def evaluate(frame: torch.Tensor, mask: torch.Tensor) -> PolicyOutput:
            # index_select: several times faster than advanced indexing on the CPU
            perturbed = perturb(
                x.index_select(0, frame), blurred.index_select(0, frame), plane_masks.index_select(0, mask), interp
            )
            return agent(perturbed, index_state(state, frame))

    else:
        # Outside its mask's box a perturbed copy is the observation itself (occlude) or its blur (searchlight):
        # their trunk activations, once per observation, are shared by all of the observation's masks.
        # a plan is made only for an agent that declares a conv trunk
        incremental_agent = cast(IncrementalPolicy, agent)
        trunk = cast(ConvTrunk, conv_trunk_of(agent))
        outside = x if interp == "occlude" else blurred
        shared = shared_activations(trunk, plan, pad_rows(outside), n)
        images, padded_blur = plan.pad_input(x), plan.pad_input(blurred)

        def evaluate(frame: torch.Tensor, mask: torch.Tensor) -> PolicyOutput:
            return perturbed_outputs(
                incremental_agent, trunk, plan, images, padded_blur, shared, state, frame, mask, interp
            )

    if score == "action_logprob":
        if actions is None:
            raise ValueError("score='action_logprob' needs the action taken on each observation: pass actions=")
        taken = actions
        base_logp = torch.log_softmax(base.logits, dim=-1).gather(1, taken.view(-1, 1))[:, 0]  # (N,)

    def pass_scores(frame: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the perturbed copies (frame[k], mask[k]): their actor and critic scores, then the extra ones; one pass
        out = evaluate(frame, mask)
        extras = tuple(fn(base.logits.index_select(0, frame), out.logits) for fn in extra.values())
        if output_scores is not None:
            return *output_scores(base, out, frame), *extras
        if actor_score is not None:
            actor_scores = actor_score(base.logits.index_select(0, frame), out.logits)
        elif score == "action_logprob":
            logp = torch.log_softmax(out.logits, dim=-1).gather(1, taken.index_select(0, frame).view(-1, 1))[:, 0]
            actor_scores = (base_logp.index_select(0, frame) - logp).abs()
        else:
            actor_scores = 0.5 * (base.logits.index_select(0, frame) - out.logits).pow(2).sum(dim=-1)
        return actor_scores, 0.5 * (base.value.index_select(0, frame) - out.value).pow(2), *extras

    run_pass = CompiledPass(pass_scores, compile) if compile is not None else pass_scores
    actor = x.new_empty(n * m)
    critic = x.new_empty(n * m)
    extra_scores_ = [x.new_empty(n * m) for _ in extra]
    bounds = chunk_bounds(n * m, perturbations_per_eval)
    for start, stop in tqdm(
        bounds, desc="perturbations", unit="chunk", disable=True if not progress or len(bounds) < 2 else None
    ):
        # compiled passes all have one size (the last one padded with copies of its last row): compiled once per job
        size = perturbations_per_eval if compile is not None else stop - start
        flat = torch.arange(start, start + size, device=x.device).clamp_(max=stop - 1)
        frame, mask = flat // m, flat % m
        for into, scores in zip((actor, critic, *extra_scores_), run_pass(frame, mask), strict=True):
            into[start:stop] = scores[: stop - start]
    if extra_out is not None:
        extra_out.update({name: t.view(n, m) for name, t in zip(extra, extra_scores_, strict=True)})
    return actor.view(n, m), critic.view(n, m)


@lru_cache(maxsize=32)
def _interpolation_matrix(density: int, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Row y holds the bilinear weights of pixel y on the grid whose node k sits at pixel k * density;
    # pixels past the last node take its value (clamped), so node values are reproduced exactly.
    g = len(range(0, length, density))
    t = (torch.arange(length, dtype=torch.float64) / density).clamp(max=g - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=g - 1)
    w = t - lo
    mat = torch.zeros(length, g, dtype=torch.float64)
    rows = torch.arange(length)
    mat.index_put_((rows, lo), 1 - w, accumulate=True)
    mat.index_put_((rows, hi), w, accumulate=True)
    return mat.to(device=device, dtype=dtype)


def upsample_exact(scores: torch.Tensor, density: int, size: tuple[int, int] = (SIZE, SIZE)) -> torch.Tensor:
    """Score grids (N, Gh, Gw) -> maps (N, H, W): bilinear in float, grid node (a, b) at pixel (a*d, b*d).

    The engine's default: no byte quantisation and no shift from a zero row/column (spec, section 7).
    Two plain 2-D products with padded rows, so a frame's map does not depend on the other frames.
    """
    h, w = size
    wy = _interpolation_matrix(density, h, scores.device, scores.dtype)
    wx = _interpolation_matrix(density, w, scores.device, scores.dtype)
    n, gh, gw = scores.shape[0], wy.shape[1], wx.shape[1]
    if tuple(scores.shape[1:]) != (gh, gw):
        raise ValueError(
            f"score grids of density {density} on {h}x{w} must be (N, {gh}, {gw}), got {tuple(scores.shape)}"
        )
    cols = (pad_rows(scores.reshape(n * gh, gw)) @ wx.T)[: n * gh].view(n, gh, w)  # (N, Gh, W): along x
    rows = pad_rows(cols.transpose(1, 2).reshape(n * w, gh)) @ wy.T  # (N * W, H): along y, transposed
    return rows[: n * w].view(n, w, h).transpose(1, 2).contiguous()


def upsample_paper(scores: torch.Tensor, density: int) -> torch.Tensor:
    """The original upsampling (spec, section 6): grid in an array of side ``int(80/d) + 1`` (cells no center
    reaches stay 0), byte-scaled, Pillow-bilinear resized to 80x80, rescaled to the grid's max."""
    n, g = scores.shape[0], scores.shape[-1]
    side = SIZE // density + 1
    padded = scores.new_zeros(n, side, side)
    padded[:, :g, :g] = scores
    pmax = padded.amax(dim=(1, 2), keepdim=True)
    up = resize_uint8(byte_scale(padded), (SIZE, SIZE)).to(scores.dtype)
    upmax = up.amax(dim=(1, 2), keepdim=True)
    # An all-constant grid byte-scales to zeros; the original divides 0 by 0 there, we return zeros.
    return torch.where(upmax > 0, pmax * up / upmax.clamp(min=1), torch.zeros_like(up))


def perturbation_saliency(
    agent: Policy,
    frames: Observations,
    states: StatesLike,
    radius: float = 5,
    density: int = 5,
    interp: str = "occlude",
    blur_sigma: float = 3,
    compat: str = "exact",
    perturbations_per_eval: int | None = None,
    memory_budget_mb: float | None = None,
    incremental: bool | str = "auto",
    progress: bool = False,
    tf32: bool = False,
    score: str = "logit_l2",
    actions: Actions | None = None,
    compile: bool | str = False,
    extra_actor_scores: Mapping[str, ScoreFn] | None = None,
    precision: str = "exact",
) -> PerturbationResult:
    """Perturbation saliency (the 2017 paper's method, for any policy) of many observations at once.

    Args:
        agent: a :class:`engine.core.policy.Policy`; all work runs on its device and dtype.
        frames: the observations the agent saw: uint8 bytes or [0, 1] floats ``(N, C, H, W)``
            (``rollout.observations``); for the 2017 agents also raw uint8 frames (N, 210, 160, 3).
        states: the recurrent state the agent used on each observation: a tuple of batch-first tensors
            (``rollout.states``; ``(hx, cx)`` for LSTM agents, ``(hx,)`` for GRU agents, ``()`` for feed-forward).
        radius: mask blur sigma; density: grid step; both in observation pixels.
        interp: ``"occlude"`` (blur inside the mask, the paper's) or ``"searchlight"``.
        blur_sigma: sigma of the image blur (each channel alone). compat: ``"exact"`` (float upsampling at the true
            centers) or ``"paper"`` (the original byte-scaled upsampling with its zero row/column; 80x80 only).
        perturbations_per_eval: most perturbed inputs per forward pass; ``None`` derives it from ``memory_budget_mb``
            (default 1024 MB). Results do not depend on it.
        incremental: compute the first convolutions only inside each mask's windows and reuse the observation's
            own activations elsewhere (``engine.core.incremental``; policies that declare their conv trunk, as the
            2017 agents do; equal to the plain pass up to float rounding). ``"auto"`` uses it where the windows
            pay (2017 agents: radius up to ~6) and the agent declares a trunk; ``True`` on another agent is a
            ValueError.
        progress: show a progress bar over chunks (where stderr is a terminal).
        tf32: let CUDA run float32 convolutions and products in TF32 (faster, about 6e-4 relative error);
            off by default, so float32 maps on a GPU equal the CPU's to float rounding.
        score: ``"logit_l2"`` (the paper's ``0.5 * ||L - l||^2`` over the action preferences) or
            ``"action_logprob"`` (``|log pi(a|I) - log pi(a|I')|`` for the action taken, softmax of the
            preferences; needs ``actions``). The critic score is the paper's either way.
        actions: (N,) the action the agent took on each observation (``rollout.actions``), for ``action_logprob``.
        compile: compile each forward pass with ``torch.compile`` (``True`` or an inductor mode of
            ``engine.core.compiled.COMPILE_MODES``; ``"reduce-overhead"`` adds CUDA graphs). All passes then have
            one size, so it compiles once; maps equal the eager ones to float32 rounding.
        extra_actor_scores: more actor scores from the same forward passes, by name: functions of the
            unperturbed and the perturbed logits, (B, A) -> (B,) (``engine.core.sarfa.sarfa_scores``); their grids
            are in ``extra_scores``.
        precision: ``"exact"`` (float32 forward passes of the perturbed copies) or ``"fast"``: delta propagation
            (``engine.core.delta``: the frame's own activations once in float32, only the perturbations' differences
            through the network, each linear product as three bfloat16 products with float32 accumulation), about
            1e-5 of the map max from float64 maps; for agents that declare their whole network
            (:class:`engine.core.policy.DeltaPolicy`) and the ``logit_l2`` score, else the exact path with one log
            line. With ``incremental`` it runs on the same windows (the first convolutions' deltas only there).
            Made for GPUs' bfloat16 units: on a CPU it is slower than the exact path.

    Returns:
        :class:`PerturbationResult` with maps (N, H, W) and score grids (N, Gh, Gw).

    Example: a policy that reads one pixel, the top-left one (value ``x``, logits ``(x, -x)``), on a 20x20
    observation that is black but for that pixel. With radius 1 and density 10 only the mask centred on the pixel
    reaches it, and there the mask is 1: that perturbed copy holds the blurred observation's value ``b`` at the
    pixel, so its critic score is ``0.5 * (1 - b)^2`` and its actor score ``0.5 * ((1 - b)^2 + (b - 1)^2)``, twice
    that; every other score is 0.

    >>> import math
    >>> import torch
    >>> from scipy.ndimage import gaussian_filter
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
    >>> result = perturbation_saliency(TopLeftPixel(), frames, (), radius=1, density=10)
    >>> result.centers.tolist(), tuple(result.critic_scores.shape), tuple(result.critic.shape)
    ([0, 10], (1, 2, 2), (1, 20, 20))
    >>> (result.critic_scores[0] > 0).int().tolist()
    [[1, 0], [0, 0]]
    >>> b = gaussian_filter(frames[0, 0].double().numpy() / 255, sigma=3)[0, 0]  # the spec's blur (sigma 3)
    >>> math.isclose(float(result.critic_scores[0, 0, 0]), 0.5 * (1 - b) ** 2, rel_tol=1e-9)
    True
    >>> torch.allclose(result.actor_scores, 2 * result.critic_scores)
    True
    >>> int(result.critic[0].argmax())  # the map peaks on the pixel the policy reads
    0
    """
    incremental = check_incremental(incremental)
    radius, density, blur_sigma = plain_number(radius), plain_number(density), plain_number(blur_sigma)
    if score not in SCORES:
        raise ValueError(f"score must be one of {tuple(str(s) for s in SCORES)}, got {score!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    mode = compile_mode(compile)
    x, state = prepare_inputs(agent, frames, states)
    n, size = x.shape[0], cast(tuple[int, int], tuple(x.shape[2:]))  # observations are (N, C, H, W)
    validate_settings(radius, density, interp, blur_sigma, compat, size)
    if compat == "paper" and size != (SIZE, SIZE):
        raise ValueError(
            f"compat='paper' reproduces the 2017 upsampling of 80x80 maps; this agent's maps are {size[0]}x{size[1]}: use compat='exact'"
        )
    device, dtype = agent_device_dtype(agent)
    taken = _check_actions(actions, n, agent.num_actions, device) if score == "action_logprob" else None
    masks = perturbation_masks(radius, density, device, dtype, size)
    chunk = resolve_perturbations_per_eval(agent, dtype, n * masks.shape[0], perturbations_per_eval, memory_budget_mb)
    fast = precision == "fast" and _fast_path(agent, str(score), extra_actor_scores, mode)
    plan = incremental_plan(agent, masks, incremental, fast)
    if fast and perturbations_per_eval is None:
        chunk = max(1, chunk // 2)  # a copy holds its frame's activations and the split parts too
    extra: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), float32_matmul_precision(device, tf32):
        if fast:
            actor, critic = delta_scores(
                agent, x, state, masks, interp, blur_sigma, chunk, arithmetic=FAST_ARITHMETIC, plan=plan
            )
        else:
            actor, critic = perturbation_scores(
                agent,
                x,
                state,
                masks,
                interp,
                blur_sigma,
                chunk,
                plan,
                progress,
                str(score),
                taken,
                mode,
                extra_scores=extra_actor_scores,
                extra_out=extra,
            )
        gh, gw = grid_shape(density, size)
        actor, critic = actor.view(-1, gh, gw), critic.view(-1, gh, gw)
        if compat == "paper":
            up_actor, up_critic = upsample_paper(actor, density), upsample_paper(critic, density)
        else:
            up_actor, up_critic = upsample_exact(actor, density, size), upsample_exact(critic, density, size)
        settings: dict[str, float | str] = dict(
            radius=radius,
            density=density,
            interp=str(interp),
            blur_sigma=blur_sigma,
            compat=str(compat),
            score=str(score),
        )
        return PerturbationResult(
            actor=up_actor,
            critic=up_critic,
            actor_scores=actor,
            critic_scores=critic,
            centers=center_coords(density, size[0]).to(device),
            settings=settings,
            extra_scores={name: grid.view(-1, gh, gw) for name, grid in extra.items()},
        )


def _check_actions(actions: Actions | None, n: int, num_actions: int, device: torch.device) -> torch.Tensor:
    """Per-observation action indices -> an int64 tensor (n,) on ``device``, or a ValueError saying what is wrong."""
    if actions is None:
        raise ValueError("score='action_logprob' needs the action taken on each frame: pass actions=rollout.actions")
    actions = torch.as_tensor(actions)
    if actions.dtype.is_floating_point or actions.dtype == torch.bool or actions.shape != (n,):
        raise ValueError(
            f"actions must be {n} integer action indices (one per frame), got {actions.dtype} {tuple(actions.shape)}"
        )
    if n and (int(actions.min()) < 0 or int(actions.max()) >= num_actions):
        raise ValueError(
            f"actions must lie in 0..{num_actions - 1}, got values in {int(actions.min())}..{int(actions.max())}"
        )
    return actions.to(device=device, dtype=torch.long)
