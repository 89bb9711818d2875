"""Saliency of many frames with one set of settings: the engine's own entry point over perturbation and
Jacobian saliency, used by the app, the stores and the benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .jacobian import jacobian_saliency
from .perturbation import perturbation_saliency
from .policy import Policy, State, index_state
from .settings import Incremental, Method, SaliencyConfig

__all__ = ["SaliencyConfig", "compute_saliency", "paper_shift"]


def paper_shift(states: State, previous: State | None = None) -> State:
    """The original code's off-by-one (spec, section 7): frame t gets the state the agent had one step
    earlier than the one it used (``states[t-1]``). ``previous`` is the state before the first frame (a
    chunk's predecessor); without one, the first frame gets the zero state of an episode start."""
    if previous is None:
        previous = tuple(torch.zeros_like(s[:1]) for s in states)
    return tuple(torch.cat([p.to(s.device, s.dtype), s[:-1]]) for p, s in zip(previous, states))


def compute_saliency(
    agent: Policy,
    frames: np.ndarray | torch.Tensor,
    states: State,
    s: SaliencyConfig,
    progress: bool = False,
    actions: np.ndarray | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Maps (and score grids) of every frame, scored ``s.frames_per_batch`` frames at a time (CPU tensors).

    ``actions`` (N,): the action taken on each frame, needed by ``score="action_logprob"``."""
    if s.method not in tuple(Method):
        raise ValueError(f"method must be one of {', '.join(str(m) for m in Method)}, got {s.method!r}")
    if isinstance(s.frames_per_batch, bool) or not isinstance(s.frames_per_batch, int) or s.frames_per_batch < 1:
        raise ValueError(
            f"frames_per_batch must be an integer >= 1 (frames scored together), got {s.frames_per_batch!r}"
        )
    n = frames.shape[0]
    rows = (
        sorted({int(part.shape[0]) for part in states}) if isinstance(states, (tuple, list)) else [int(states.shape[0])]
    )
    if rows and rows != [n]:  # () is a feed-forward agent's state
        raise ValueError(
            f"state/frame count mismatch: {n} frames but state rows {rows}; pass the state the agent used on each "
            "frame (e.g. rollout.states for rollout.frames)"
        )
    incremental = s.incremental.setting if isinstance(s.incremental, Incremental) else s.incremental
    batches = [(a, min(a + s.frames_per_batch, n)) for a in range(0, n, s.frames_per_batch)]
    parts: dict[str, list[torch.Tensor]] = {}
    bar = tqdm(total=n, desc="saliency", unit="frame", disable=None if progress else True)
    for a, b in batches:
        state = index_state(states, slice(a, b))
        if s.method in ("perturbation", "both"):
            result = perturbation_saliency(
                agent,
                frames[a:b],
                state,
                radius=s.radius,
                density=s.density,
                interp=s.interp,
                blur_sigma=s.blur_sigma,
                compat=s.compat,
                perturbations_per_eval=s.perturbations_per_eval,
                memory_budget_mb=s.memory_budget_mb,
                incremental=incremental,
                tf32=s.tf32,
                score=str(s.score),
                compile=s.compile,
                actions=None if actions is None else actions[a:b],
            )
            for key in ("actor", "critic", "actor_scores", "critic_scores"):
                parts.setdefault(key, []).append(getattr(result, key).cpu())
        if s.method in ("jacobian", "both"):
            jac = jacobian_saliency(agent, frames[a:b], state, backend=s.jacobian_backend, tf32=s.tf32)
            prefix = "" if s.method == "jacobian" else "jacobian_"
            parts.setdefault(prefix + "actor", []).append(jac.actor.detach().cpu())
            parts.setdefault(prefix + "critic", []).append(jac.critic.detach().cpu())
        bar.update(b - a)
    bar.close()
    return {k: torch.cat(v) for k, v in parts.items()}
