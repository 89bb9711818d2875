"""Occlusion sensitivity (Zeiler & Fergus; captum's ``Occlusion``) for any agent, every occluded copy of every
observation in one tensor program.

Square windows of side ``window`` slide over the observation (all channels at once) with step ``stride``, placed
as captum places them: ``ceil((H - window) / stride) + 1`` starts ``0, stride, 2 * stride, ...`` along the rows
(the same along the columns), the last one clipped at the far border where it runs past it. Inside a window the
observation is replaced by the baseline: a constant, the frame's mean (over all its pixels and channels) or its
Gaussian blur (sigma 3). A pixel's attribution is the mean, over the windows that cover it, of
``f(x) - f(x_occluded)``: ``f`` is the softmax probability of the action taken (``response="action_prob"``) or
the critic's value (``"value"``); for ``"logits"`` a window's score is ``0.5 * ||L - l||^2`` over the action
preferences (the 2017 method's score). The critic map is always the value's. One forward pass per occluded copy
serves both maps; copies beyond ``perturbations_per_eval`` (or the memory budget) are split into passes, and a
pass boundary never changes a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .batching import pad_rows
from .blur import gaussian_blur
from .device import float32_matmul_precision
from .inputs import Actions, Observations, StatesLike, agent_device_dtype, check_finite_maps, prepare_inputs
from .perturbation import _check_actions, incremental_plan, perturbation_scores, resolve_perturbations_per_eval
from .policy import Policy, PolicyOutput
from .settings import check_incremental, plain_number

BASELINES = ("constant", "mean", "blur")
RESPONSES = ("action_prob", "logits", "value")
BLUR_SIGMA = 3.0


@dataclass(frozen=True)
class OcclusionResult:
    """Result of :func:`occlusion_sensitivity` for N observations (C, H, W) and Gh x Gw windows.

    Attributes:
        actor, critic: attribution maps (N, H, W).
        actor_scores, critic_scores: each window's score (N, Gh, Gw); cell (a, b) is the window whose top-left
            pixel is ``(row_starts[a], col_starts[b])``.
        row_starts, col_starts: the windows' first row (Gh,) and first column (Gw,).
        settings: the parameters that produced the maps.
    """

    actor: torch.Tensor
    critic: torch.Tensor
    actor_scores: torch.Tensor
    critic_scores: torch.Tensor
    row_starts: torch.Tensor
    col_starts: torch.Tensor
    settings: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_finite_maps("occlusion", self.actor_scores, self.critic_scores)

    def __len__(self) -> int:
        return self.actor.shape[0]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """captum's window starts along an axis of ``length``: ``ceil((length - window) / stride) + 1`` of them."""
    return [k * stride for k in range(math.ceil((length - window) / stride) + 1)]


def _check_settings(
    window: int, stride: int, baseline: str, value: float, response: str, size: tuple[int, int]
) -> None:
    h, w = size
    for name, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if window > min(h, w):
        raise ValueError(f"window {window} is larger than the {h}x{w} observation")
    if stride > window and window < max(h, w):
        raise ValueError(
            f"stride {stride} is larger than window {window}: pixels between windows would have no attribution"
        )
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if response not in RESPONSES:
        raise ValueError(f"response must be one of {RESPONSES}, got {response!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"value must be in 0..1, the observations' scale (0 black, 1 white), got {value!r}")


def _covers(length: int, starts: list[int], window: int, device: torch.device) -> torch.Tensor:
    """(G, length) booleans: row g is True on the pixels window g covers (clipped at the border)."""
    pixels = torch.arange(length, device=device)
    first = torch.tensor(starts, device=device)[:, None]
    return (pixels >= first) & (pixels < first + window)


def _spread(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Window scores (N, Gh, Gw) -> per-pixel means (N, H, W) over the windows covering each pixel.

    Two plain 2-D products with padded rows (as in ``upsample_exact``), so a frame's map does not depend on the
    other frames."""
    n, gh, gw = scores.shape
    h, w = rows.shape[1], cols.shape[1]
    wy, wx = rows.to(scores.dtype), cols.to(scores.dtype)
    along_x = (pad_rows(scores.reshape(n * gh, gw)) @ wx)[: n * gh].view(n, gh, w)
    along_y = (pad_rows(along_x.transpose(1, 2).reshape(n * w, gh)) @ wy)[: n * w].view(n, w, h).transpose(1, 2)
    count = wy.sum(0)[:, None] * wx.sum(0)[None, :]  # windows covering each pixel, >= 1 (stride <= window)
    return (along_y / count).contiguous()


def occlusion_sensitivity(
    agent: Policy,
    frames: Observations,
    states: StatesLike,
    window: int = 8,
    stride: int = 4,
    baseline: str = "constant",
    value: float = 0.0,
    response: str = "action_prob",
    actions: Actions | None = None,
    perturbations_per_eval: int | None = None,
    memory_budget_mb: float | None = None,
    incremental: bool | str = "auto",
    progress: bool = False,
) -> OcclusionResult:
    """Occlusion sensitivity (captum's ``Occlusion``) of many observations at once, actor and critic together.

    Args:
        agent: a :class:`engine.core.policy.Policy`; all work runs on its device and dtype.
        frames: the observations the agent saw (see :func:`engine.core.inputs.prepare_observations`).
        states: the recurrent state the agent used on each observation (``rollout.states``).
        window, stride: side and step of the square windows, in observation pixels (``stride <= window``).
        baseline: what fills a window: ``"constant"`` (``value``, in the [0, 1] observation scale), ``"mean"``
            (the frame's mean) or ``"blur"`` (the frame's Gaussian blur, sigma 3, each channel alone).
        response: the actor's output attributed: ``"action_prob"`` (softmax probability of the action taken,
            needs ``actions``), ``"logits"`` (``0.5 * ||L - l||^2`` over the action preferences) or ``"value"``.
        actions: (N,) the action the agent took on each observation (``rollout.actions``).
        perturbations_per_eval: most occluded inputs per forward pass; ``None`` derives it from
            ``memory_budget_mb`` (default 1024 MB). Results do not depend on it.
        incremental: run the convolutional trunk only on each window's receptive field, the rest of its
            activations shared with the observation's (``engine.core.incremental``), as
            :func:`engine.core.perturbation.perturbation_saliency` does: ``"auto"`` where the agent declares its
            trunk and the windows pay, ``True`` always, ``False`` never. The maps equal the plain passes' to
            float rounding.
        progress: show a progress bar over passes (where stderr is a terminal).

    Returns:
        :class:`OcclusionResult` with maps (N, H, W) and window scores (N, Gh, Gw).

    Example: a policy that reads the top-left pixel (value ``x``, logits ``(x, -x)``) on a 20x20 observation that
    is white there and black elsewhere. Windows of side 10 at stride 5 start at 0, 5 and 10; only window (0, 0)
    covers the pixel, so its value map is ``1 - 0`` there and 0 wherever no window covering it changes ``x``.

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
    >>> result = occlusion_sensitivity(TopLeftPixel(), frames, (), window=10, stride=5, response="value")
    >>> result.row_starts.tolist(), tuple(result.critic_scores.shape)
    ([0, 5, 10], (1, 3, 3))
    >>> float(result.critic[0, 0, 0]), float(result.critic[0, 7, 7]), float(result.critic[0, 19, 19])
    (1.0, 0.25, 0.0)
    """
    incremental = check_incremental(incremental)
    window, stride, value = plain_number(window), plain_number(stride), plain_number(value)
    x, state = prepare_inputs(agent, frames, states)
    n, c, h, w = x.shape
    _check_settings(window, stride, baseline, value, response, (h, w))
    device, dtype = agent_device_dtype(agent)
    taken = None
    if response == "action_prob":
        if actions is None:
            raise ValueError(
                "response='action_prob' needs the action taken on each frame: pass actions=rollout.actions"
            )
        taken = _check_actions(actions, n, agent.num_actions, device)
    row_starts, col_starts = window_starts(h, window, stride), window_starts(w, window, stride)
    rows, cols = _covers(h, row_starts, window, device), _covers(w, col_starts, window, device)
    gh, gw = len(row_starts), len(col_starts)
    m = gh * gw
    # each window as a 0/1 mask: lerp(x, fill, mask) is x outside it and the fill inside it, exactly
    masks = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(m, h, w).to(dtype)
    chunk = resolve_perturbations_per_eval(agent, dtype, n * m, perturbations_per_eval, memory_budget_mb)

    with torch.inference_mode(), float32_matmul_precision(device, False):
        if baseline == "blur":
            fill = gaussian_blur(x, BLUR_SIGMA).to(x.dtype)
        elif baseline == "mean":
            fill = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
        else:
            fill = x.new_full((1, 1, 1, 1), float(value)).expand_as(x)
        base_prob: torch.Tensor | None = None

        def scores(base: PolicyOutput, out: PolicyOutput, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal base_prob
            critic = base.value.index_select(0, frame) - out.value
            if taken is not None:  # response == "action_prob"
                if base_prob is None:  # the unoccluded probabilities, once per call
                    base_prob = torch.softmax(base.logits, dim=-1).gather(1, taken.view(-1, 1))[:, 0]
                at = taken.index_select(0, frame).view(-1, 1)
                return base_prob.index_select(0, frame) - torch.softmax(out.logits, dim=-1).gather(1, at)[:, 0], critic
            if response == "logits":
                return 0.5 * (base.logits.index_select(0, frame) - out.logits).pow(2).sum(dim=-1), critic
            return critic, critic

        actor, critic = perturbation_scores(
            agent,
            x,
            state,
            masks,
            "occlude",
            BLUR_SIGMA,
            chunk,
            plan=incremental_plan(agent, masks, incremental),
            progress=progress,
            fill=fill,
            output_scores=scores,
        )
        actor_scores, critic_scores = actor.view(n, gh, gw), critic.view(n, gh, gw)
        settings: dict[str, float | str] = dict(
            window=window, stride=stride, baseline=str(baseline), value=float(value), response=str(response)
        )
        return OcclusionResult(
            actor=_spread(actor_scores, rows, cols),
            critic=_spread(critic_scores, rows, cols),
            actor_scores=actor_scores,
            critic_scores=critic_scores,
            row_starts=torch.tensor(row_starts, device=device),
            col_starts=torch.tensor(col_starts, device=device),
            settings=settings,
        )
