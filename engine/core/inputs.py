"""Checking and preparing the (frames, states) pair that every saliency method takes."""

from __future__ import annotations

import numpy as np
import torch

from .batching import chunk_bounds  # noqa: F401  (re-exported for saliency modules)
from .device import to_device
from .policy import ActorCritic, State
from .preprocessing import SIZE, preprocess_frames


def agent_device_dtype(agent: ActorCritic) -> tuple[torch.device, torch.dtype]:
    p = agent.actor_linear.weight
    return p.device, p.dtype


def prepare_inputs(agent: ActorCritic, frames, states) -> tuple[torch.Tensor, State]:
    """Validate and move saliency inputs to the agent's device and dtype.

    Args:
        agent: the policy.
        frames: raw uint8 frames ``(N, 210, 160, 3)`` (numpy or torch), or already preprocessed floating
            inputs ``(N, 1, 80, 80)``.
        states: the recurrent state the agent used on each frame: a tuple of ``(N, hidden)`` tensors
            (``(hx, cx)`` for LSTM agents, ``(hx,)`` for GRU agents); a bare tensor is taken as ``(hx,)``.

    Returns:
        ``x`` of shape ``(N, 1, 80, 80)`` and the state tuple, both on the agent's device and dtype.
    """
    device, dtype = agent_device_dtype(agent)
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if isinstance(frames, torch.Tensor) and frames.is_floating_point():
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (agent.channels, SIZE, SIZE):
            raise ValueError(
                f"preprocessed frames must have shape (N, {agent.channels}, 80, 80), got {tuple(frames.shape)}; "
                "or pass raw uint8 frames (N, 210, 160, 3)"
            )
        x = to_device(frames, device).to(dtype)
        _check_finite(x, "preprocessed frames")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"preprocessed frames must lie in [0, 1] (bytes / 255), got values in [{low:g}, {high:g}]: "
                "pass raw uint8 frames (N, 210, 160, 3), or divide your 80x80 bytes by 255"
            )
    else:
        x = preprocess_frames(frames, device=device, dtype=dtype)
    n = x.shape[0]
    if n == 0:
        raise ValueError("no frames given: pass at least one frame")

    if isinstance(states, torch.Tensor):
        states = (states,)
    if not isinstance(states, (tuple, list)):
        raise TypeError(f"states must be a tuple of tensors, got {type(states).__name__}")
    if len(states) != agent.state_size:
        raise ValueError(
            f"a {agent.core.upper()} agent needs a state of {agent.state_size} tensor(s) "
            f"({'(hx, cx)' if agent.core == 'lstm' else '(hx,)'}), got {len(states)}"
        )
    checked = []
    for i, s in enumerate(states):
        s = torch.as_tensor(s)
        if s.ndim != 2 or s.shape[1] != agent.hidden_size:
            raise ValueError(f"state tensor {i} must have shape (N, {agent.hidden_size}), got {tuple(s.shape)}")
        if s.shape[0] != n:
            raise ValueError(
                f"state/frame count mismatch: {n} frames but state tensor {i} has {s.shape[0]} rows; "
                "pass the state the agent used on each frame (e.g. rollout.states for rollout.frames)"
            )
        if not s.is_floating_point():
            raise ValueError(f"state tensor {i} must be floating point, got dtype {s.dtype}")
        s = to_device(s, device).to(dtype)
        _check_finite(s, f"state tensor {i}")
        checked.append(s)
    return x, tuple(checked)


def _check_finite(t: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinite values (one reduction per call, never per perturbation)."""
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} hold {bad} NaN or infinite value(s): saliency of them would be NaN")

