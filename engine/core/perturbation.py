"""Batched perturbation saliency (spec, sections 3-7): every blurred copy of every frame in one tensor program.

For N frames and G x G mask centers, the N * G * G perturbed inputs are built on the device from the
frames, their blur (once per frame) and the cached masks, and run through the agent with each frame's
restored recurrent state repeated along the batch. One forward pass serves both heads: the actor score
of a perturbation is ``0.5 * sum_k (L_k - l_k)^2`` over the logits, the critic score the same over the
value, against the unperturbed outputs ``L`` computed once per frame. Inputs beyond ``perturbations_per_eval`` (or
the memory budget) are split in chunks of perturbations; a chunk boundary never changes a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .blur import gaussian_blur
from .device import float32_matmul_precision
from .batching import chunk_bounds, pad_rows
from .inputs import agent_device_dtype, prepare_inputs
from .incremental import INPUT_PAD, FrameActivations, WindowPlan, frame_activations, perturbed_outputs, window_plan, worthwhile
from .masks import center_coords, perturb, perturbation_masks
from .policy import ActorCritic, index_state
from .preprocessing import SIZE, byte_scale, resize_uint8
from .settings import COMPATS, validate_settings  # noqa: F401  (COMPATS: the choices, for callers)

DEFAULT_MEMORY_BUDGET_MB = 1024.0
# On the CPU, passes whose activations stay in cache are fastest, so the memory budget alone would choose
# passes far too large there (the README's benchmark tables show the sweep).
DEFAULT_CPU_CHUNK = 64


@dataclass(frozen=True)
class PerturbationResult:
    """Result of :func:`perturbation_saliency` for N frames on a G x G grid of mask centers.

    Attributes:
        actor, critic: saliency maps (N, 80, 80).
        actor_scores, critic_scores: raw scores S(i, j) (N, G, G); cell (a, b) is the mask centered at
            pixel ``(centers[a], centers[b])``.
        centers: pixel coordinates of the centers along one axis, (G,).
        settings: the parameters that produced the maps.
    """

    actor: torch.Tensor
    critic: torch.Tensor
    actor_scores: torch.Tensor
    critic_scores: torch.Tensor
    centers: torch.Tensor
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.actor.shape[0]


def bytes_per_input(agent: ActorCritic, dtype: torch.dtype) -> int:
    """Rough peak memory of one perturbed input in a forward pass (input, activations, gates, scores)."""
    conv = 32 * (40 * 40 + 20 * 20 + 10 * 10 + 5 * 5)  # each conv output and its ELU
    elements = 3 * SIZE * SIZE + 2 * conv + 8 * agent.hidden_size + 4 * agent.num_actions
    return elements * torch.finfo(dtype).bits // 8


def resolve_perturbations_per_eval(agent, dtype, total: int, perturbations_per_eval: int | None, memory_budget_mb: float | None) -> int:
    """``perturbations_per_eval`` if given, else as many inputs as fit the memory budget (at least 1, at most ``total``),
    and on the CPU at most ``DEFAULT_CPU_CHUNK`` unless a budget was given."""
    if perturbations_per_eval is not None:
        if isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be a positive integer or None (use the memory budget), got {perturbations_per_eval!r}")
        return min(perturbations_per_eval, total)
    budget = DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else memory_budget_mb
    if not budget > 0:
        raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb!r}")
    fits = int(budget * 2**20) // bytes_per_input(agent, dtype)
    if memory_budget_mb is None and agent.actor_linear.weight.device.type == "cpu":
        fits = min(fits, DEFAULT_CPU_CHUNK)
    return max(1, min(total, fits))


def perturbation_scores(
    agent: ActorCritic,
    x: torch.Tensor,
    state: tuple,
    masks: torch.Tensor,
    interp: str,
    blur_sigma: float,
    perturbations_per_eval: int,
    plan: WindowPlan | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Actor and critic scores (N, M) of every mask on every frame.

    Args:
        x: preprocessed frames (N, 1, 80, 80) on the agent's device/dtype.
        state: tuple of (N, hidden): the state restored for each frame.
        masks: (M, 80, 80).
        plan: windows for exact incremental inference (``engine.incremental``), or None for plain passes.
    """
    n, m = x.shape[0], masks.shape[0]
    base = agent(x, state)  # the unperturbed outputs, once per frame
    blurred = gaussian_blur(x, blur_sigma).to(x.dtype)  # once per frame (autocast may lower the conv)
    if plan is None:
        images, blurred = x[:, 0], blurred[:, 0]

        def evaluate(frame, mask):
            # index_select: several times faster than advanced indexing on the CPU
            perturbed = perturb(images.index_select(0, frame), blurred.index_select(0, frame), masks.index_select(0, mask), interp)
            return agent(perturbed[:, None], index_state(state, frame))

    else:
        # Outside its mask's box a perturbed copy is the frame itself (occlude) or its blur (searchlight):
        # their layer-2 and layer-3 activations, once per frame, are shared by all of the frame's masks.
        outside = x if interp == "occlude" else blurred
        shared = FrameActivations(*(a[:n] for a in frame_activations(agent, pad_rows(outside))))
        pad = (INPUT_PAD, 0, INPUT_PAD, 0)
        images, blurred = F.pad(x[:, 0], pad), F.pad(blurred[:, 0], pad)

        def evaluate(frame, mask):
            return perturbed_outputs(agent, plan, images, blurred, shared, state, frame, mask, interp)

    actor = x.new_empty(n * m)
    critic = x.new_empty(n * m)
    bounds = chunk_bounds(n * m, perturbations_per_eval)
    for start, stop in tqdm(bounds, desc="perturbations", unit="chunk", disable=True if not progress or len(bounds) < 2 else None):
        flat = torch.arange(start, stop, device=x.device)
        frame, mask = flat // m, flat % m
        out = evaluate(frame, mask)
        actor[start:stop] = 0.5 * (base.logits[frame] - out.logits).pow(2).sum(dim=-1)
        critic[start:stop] = 0.5 * (base.value[frame] - out.value).pow(2)
    return actor.view(n, m), critic.view(n, m)


@lru_cache(maxsize=32)
def _interpolation_matrix(density: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Row y holds the bilinear weights of pixel y on the grid whose node k sits at pixel k * density;
    # pixels past the last node take its value (clamped), so node values are reproduced exactly.
    g = len(range(0, SIZE, density))
    t = (torch.arange(SIZE, dtype=torch.float64) / density).clamp(max=g - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=g - 1)
    w = t - lo
    mat = torch.zeros(SIZE, g, dtype=torch.float64)
    rows = torch.arange(SIZE)
    mat.index_put_((rows, lo), 1 - w, accumulate=True)
    mat.index_put_((rows, hi), w, accumulate=True)
    return mat.to(device=device, dtype=dtype)


def upsample_exact(scores: torch.Tensor, density: int) -> torch.Tensor:
    """Score grids (N, G, G) -> maps (N, 80, 80): bilinear in float, grid node (a, b) at pixel (a*d, b*d).

    The engine's default: no byte quantisation and no shift from a zero row/column (spec, section 7).
    Two plain 2-D products with padded rows, so a frame's map does not depend on the other frames.
    """
    w = _interpolation_matrix(density, scores.device, scores.dtype)
    n, g = scores.shape[0], w.shape[1]
    if scores.shape[1:] != (g, g):
        raise ValueError(f"score grids of density {density} must be (N, {g}, {g}), got {tuple(scores.shape)}")
    cols = (pad_rows(scores.reshape(n * g, g)) @ w.T)[: n * g].view(n, g, SIZE)  # (N, G, 80): along x
    rows = pad_rows(cols.transpose(1, 2).reshape(n * SIZE, g)) @ w.T  # (N * 80, 80): along y, transposed
    return rows[: n * SIZE].view(n, SIZE, SIZE).transpose(1, 2).contiguous()


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
    agent: ActorCritic,
    frames,
    states,
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
) -> PerturbationResult:
    """Perturbation saliency of the 2017 paper for many frames at once.

    Args:
        agent: an :class:`ActorCritic`; all work runs on its device and dtype.
        frames: raw uint8 frames (N, 210, 160, 3), or preprocessed (N, 1, 80, 80) floats.
        states: the recurrent state the agent used on each frame: tuple of (N, hidden)
            (``rollout.states``); ``(hx, cx)`` for LSTM agents, ``(hx,)`` for GRU agents.
        radius: mask blur sigma (0 < radius <= 80). density: grid step in pixels (1..80).
        interp: ``"occlude"`` (blur inside the mask, the paper's) or ``"searchlight"``.
        blur_sigma: sigma of the image blur. compat: ``"exact"`` (float upsampling at the true centers) or
            ``"paper"`` (the original byte-scaled upsampling with its zero row/column).
        perturbations_per_eval: most perturbed inputs per forward pass; ``None`` derives it from ``memory_budget_mb``
            (default 1024 MB). Results do not depend on it.
        incremental: compute the first three convolutions only inside each mask's window and reuse the
            frame's own activations elsewhere (``engine.incremental``; equal to the plain pass up to float
            rounding). ``"auto"`` uses it where the windows are small enough to pay (radius up to ~6).
        progress: show a progress bar over chunks (where stderr is a terminal).
        tf32: let CUDA run float32 convolutions and products in TF32 (faster, about 6e-4 relative error);
            off by default, so float32 maps on a GPU equal the CPU's to float rounding.

    Returns:
        :class:`PerturbationResult` with maps (N, 80, 80) and score grids (N, G, G).
    """
    validate_settings(radius, density, interp, blur_sigma, compat)
    if incremental not in (True, False, "auto"):
        raise ValueError(f"incremental must be True, False or 'auto', got {incremental!r}")
    x, state = prepare_inputs(agent, frames, states)
    device, dtype = agent_device_dtype(agent)
    masks = perturbation_masks(radius, density, device, dtype)
    chunk = resolve_perturbations_per_eval(agent, dtype, x.shape[0] * masks.shape[0], perturbations_per_eval, memory_budget_mb)
    use_windows = worthwhile(radius, density) if incremental == "auto" else incremental
    plan = window_plan(float(radius), density, masks) if use_windows else None
    with torch.inference_mode(), float32_matmul_precision(device, tf32):
        actor, critic = perturbation_scores(agent, x, state, masks, interp, blur_sigma, chunk, plan, progress)
        g = len(range(0, SIZE, density))
        actor, critic = actor.view(-1, g, g), critic.view(-1, g, g)
        upsample = upsample_paper if compat == "paper" else upsample_exact
        settings = dict(radius=radius, density=density, interp=interp, blur_sigma=blur_sigma, compat=compat)
        return PerturbationResult(
            actor=upsample(actor, density),
            critic=upsample(critic, density),
            actor_scores=actor,
            critic_scores=critic,
            centers=center_coords(density).to(device),
            settings=settings,
        )
