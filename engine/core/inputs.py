"""Checking and preparing the (observations, states) pair that every saliency method takes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .device import to_device
from .policy import Policy, PolicyOutput, State
from .preprocessing import FRAME_SHAPE, preprocess_frames

RAW_FRAMES_PIPELINE = "greydanus2017"  # the one pipeline whose observation is computed from a single raw frame

# What the saliency methods accept: observations as a numpy array or a tensor; states as a sequence of batch-first
# tensors or arrays, a bare tensor for a one-tensor state, or None for the empty state
Observations = np.ndarray | torch.Tensor
StatesLike = Sequence[torch.Tensor | np.ndarray] | torch.Tensor | None
Actions = torch.Tensor | np.ndarray | Sequence[int]  # one action index per observation


def check_policy(agent: object) -> None:
    """Raise ``TypeError`` unless ``agent`` implements :class:`engine.core.policy.Policy`."""
    if not isinstance(agent, Policy):
        missing = [
            name
            for name in (
                "observation_shape",
                "num_actions",
                "pipeline",
                "frame_stack",
                "device",
                "dtype",
                "initial_state",
                "reset_state",
            )
            if not hasattr(agent, name)
        ] + ([] if callable(agent) else ["__call__ (outputs = agent(obs, state))"])
        raise TypeError(
            f"agent must implement engine.core.policy.Policy, got {type(agent).__name__} (missing: {', '.join(missing)}): "
            "load one with engine.load_policy(path), an adapter of engine.policies, or wrap your own network with "
            "engine.policies.module.wrap_policy"
        )


def agent_device_dtype(agent: Policy) -> tuple[torch.device, torch.dtype]:
    return torch.device(agent.device), agent.dtype


def prepare_observations(agent: Policy, frames: Observations) -> torch.Tensor:
    """Observations ``(N, C, H, W)`` in [0, 1] on the agent's device and dtype, from any accepted form.

    Accepted: the observation bytes as uint8 ``(N, C, H, W)`` (what a rollout records), observations already
    scaled to [0, 1] as floats ``(N, C, H, W)``, and, for the 2017 agents only, raw uint8 ALE frames
    ``(N, 210, 160, 3)``, preprocessed here.
    """
    device, dtype = agent_device_dtype(agent)
    shape = tuple(agent.observation_shape)
    if isinstance(frames, np.ma.MaskedArray):
        raise TypeError(
            "observations must be a plain numpy array, got a masked array (its mask would be ignored): pass "
            "frames.filled(value) with the value masked pixels should have"
        )
    if isinstance(frames, np.ndarray):
        if frames.dtype.kind not in "biuf":  # before torch.from_numpy's own TypeError on objects or strings
            raise TypeError(
                f"observations must be uint8 bytes or floats in [0, 1], got a numpy array of dtype {frames.dtype}"
            )
        if frames.ndim >= 1:  # before a contiguous copy of a broadcast view could allocate what it claims
            _check_fits(
                frames.shape[0] * int(np.prod(shape)) * dtype.itemsize, device, f"{frames.shape[0]} observations"
            )
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"observations must be a numpy array or torch tensor, got {type(frames).__name__}")
    _check_dense(frames, "observations")
    if frames.ndim >= 1:
        _check_fits(frames.shape[0] * int(np.prod(shape)) * dtype.itemsize, device, f"{frames.shape[0]} observations")
    if frames.ndim == 3 and tuple(frames.shape) in (FRAME_SHAPE, shape):
        raise ValueError(
            f"observations must be batched (N, ...); got one frame {tuple(frames.shape)}: use frames[None]"
        )
    raw_form = (
        f"; or raw uint8 frames (N, {', '.join(map(str, FRAME_SHAPE))})"
        if agent.pipeline == RAW_FRAMES_PIPELINE
        else ""
    )
    if frames.ndim == 4 and tuple(frames.shape[1:]) == FRAME_SHAPE and frames.dtype == torch.uint8:
        if agent.pipeline != RAW_FRAMES_PIPELINE:
            raise ValueError(
                f"raw ALE frames {tuple(frames.shape)} were given, but this agent ({agent.pipeline} pipeline) sees "
                f"observations {shape}: pass the observations its environment pipeline made (rollout.observations)"
            )
        x = preprocess_frames(frames, device=device, dtype=dtype)
    elif frames.ndim == 4 and tuple(frames.shape[1:]) == shape:
        if frames.dtype == torch.uint8:
            x = to_device(frames, device).to(dtype) / 255
        elif frames.is_floating_point():
            x = to_device(frames, device).to(dtype)
            _check_finite(x, "preprocessed frames")
            low, high = float(x.min()), float(x.max())
            if low < 0 or high > 1:
                raise ValueError(
                    f"preprocessed frames must lie in [0, 1] (bytes / 255), got values in [{low:g}, {high:g}]: "
                    f"pass the uint8 observation bytes (N, {', '.join(map(str, shape))}), or divide them by 255"
                )
        else:
            raise ValueError(f"observations must be uint8 bytes or floats in [0, 1], got dtype {frames.dtype}")
    elif frames.is_floating_point():
        raise ValueError(
            f"preprocessed frames must have shape (N, {', '.join(map(str, shape))}), got {tuple(frames.shape)}{raw_form}"
        )
    else:
        raise ValueError(
            f"observations must have shape (N, {', '.join(map(str, shape))}) (this agent's observation), "
            f"got {tuple(frames.shape)} of {frames.dtype}{raw_form}"
        )
    if x.shape[0] == 0:
        raise ValueError("no frames given: pass at least one frame")
    return x


def prepare_states(agent: Policy, states: StatesLike, n: int) -> State:
    """The recurrent state used on each of ``n`` observations, checked against the agent's own initial state
    (count, shape and dtype of its tensors) and moved to its device and dtype."""
    device, dtype = agent_device_dtype(agent)
    template = agent.initial_state(1)
    if isinstance(states, torch.Tensor):
        states = (states,)
    if states is None:
        states = ()
    if not isinstance(states, (tuple, list)):
        raise TypeError(f"states must be a tuple of tensors, got {type(states).__name__}")
    if any(isinstance(s, (tuple, list)) for s in states):
        raise ValueError(
            f"states holds {type(states[0]).__name__}s: it is one batched tensor per part of the agent's state (e.g. "
            "(h, c), each (N, hidden)), not one state per frame; stack per-frame states with "
            "engine.core.policy.stack_states"
        )
    if len(states) != len(template):
        shapes = ", ".join(f"(N, {', '.join(map(str, s.shape[1:]))})" for s in template)
        kind = (
            "a feed-forward agent takes the empty state ()"
            if not template
            else f"this agent's state has {len(template)} tensor(s) of shapes {shapes}"
        )
        raise ValueError(f"{kind}, got {len(states)}")
    checked = []
    for i, (s, like) in enumerate(zip(states, template)):
        s = torch.as_tensor(s)
        _check_dense(s, f"state tensor {i}")
        if tuple(s.shape[1:]) != tuple(like.shape[1:]) or s.ndim != like.ndim:
            raise ValueError(
                f"state tensor {i} must have shape (N, {', '.join(map(str, like.shape[1:]))}), got {tuple(s.shape)}"
            )
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
    return tuple(checked)


def prepare_inputs(agent: Policy, frames: Observations, states: StatesLike) -> tuple[torch.Tensor, State]:
    """Validate and move saliency inputs to the agent's device and dtype.

    Args:
        agent: the policy (:class:`engine.core.policy.Policy`).
        frames: the observations (see :func:`prepare_observations`): uint8 bytes or [0, 1] floats
            ``(N, C, H, W)``; raw uint8 frames ``(N, 210, 160, 3)`` for the 2017 agents.
        states: the recurrent state the agent used on each frame: a tuple of batch-first tensors (``(hx, cx)``
            for LSTM agents, ``(hx,)`` for GRU agents, ``()`` for feed-forward ones); a bare tensor is ``(hx,)``.

    Returns:
        ``x`` of shape ``(N, C, H, W)`` in [0, 1] and the state tuple, both on the agent's device and dtype.
    """
    check_policy(agent)
    x = prepare_observations(agent, frames)
    return x, prepare_states(agent, states, x.shape[0])


def _check_dense(t: torch.Tensor, what: str) -> None:
    """Refuse tensors without values to compute on: sparse or other non-strided layouts, and the meta device."""
    if t.layout != torch.strided:
        raise ValueError(f"{what} must be a dense tensor, got a {t.layout} tensor: pass tensor.to_dense()")
    if t.device.type == "meta":
        raise ValueError(f"{what} is on the meta device (a shape without values): pass a tensor that holds values")


def _memory_of(device: torch.device) -> int:
    """Bytes of memory on ``device``: the GPU's total, or the machine's physical memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def _check_fits(nbytes: int, device: torch.device, what: str) -> None:
    """Refuse inputs whose copy in the agent's dtype could never fit the device's memory (a broadcast view claims
    frames it does not hold), before anything is allocated."""
    memory = _memory_of(device)
    if nbytes > memory:
        raise ValueError(
            f"{what} would take {nbytes / 2**30:.1f} GiB in the agent's dtype, more than the {memory / 2**30:.1f} GiB "
            f"of {device.type} memory: score fewer at a time (engine.compute_saliency scores frames_per_batch at a time)"
        )


def _check_finite(t: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinite values (one reduction per call, never per perturbation)."""
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} hold {bad} NaN or infinite value(s): saliency of them would be NaN")


def check_finite_maps(method: str, *maps: torch.Tensor) -> None:
    """Refuse maps (N, ...) that hold NaN or inf, naming their frames: the agent's outputs were finite on a black and
    a white frame when it was loaded, but not on every copy a method made of these frames (one reduction per call).
    """
    bad = torch.zeros(maps[0].shape[0], dtype=torch.bool, device=maps[0].device)
    for m in maps:
        bad |= ~torch.isfinite(m).flatten(1).all(dim=1)
    if bool(bad.any()):
        frames = bad.nonzero()[:, 0].tolist()
        shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
        raise ValueError(
            f"{method}: the agent's outputs were NaN or inf on some of the copies it made of frame(s) {shown} (of "
            f"this call), so those maps would be NaN: check the network's forward on such inputs"
        )


def check_outputs(agent: Policy, out: object, rows: int) -> PolicyOutput:
    """``out``, the agent's outputs on ``rows`` observations, if it is a :class:`PolicyOutput` of ``value`` (rows,)
    and ``logits`` (rows, num_actions); else an error saying what the protocol wants (shapes only: no sync)."""
    if not isinstance(out, PolicyOutput):
        raise TypeError(
            f"the agent returned a {type(out).__name__}: a Policy returns engine.core.policy.PolicyOutput(value, "
            "logits, state), in that order (wrap_policy adapts a network that returns something else)"
        )
    value, logits = out.value, out.logits
    if not (isinstance(value, torch.Tensor) and isinstance(logits, torch.Tensor)):
        raise TypeError(
            f"the agent returned a PolicyOutput of a {type(value).__name__} value and {type(logits).__name__} logits: "
            "both are tensors"
        )
    want = (rows, agent.num_actions)
    if tuple(value.shape) != (rows,) or tuple(logits.shape) != want:
        swapped = tuple(value.shape) == want and tuple(logits.shape) == (rows,)
        raise ValueError(
            f"the agent returned a value of shape {tuple(value.shape)} and logits of shape {tuple(logits.shape)} for "
            f"{rows} observations: a Policy returns PolicyOutput(value ({rows},), logits {want}, state), in that "
            "order" + (" (these two look swapped)" if swapped else f" (num_actions is {agent.num_actions})")
        )
    return out


def float_bytes(dtype: torch.dtype) -> int:
    """Bytes of the floats RISE's sums and LIME's fits use for an agent of ``dtype``: its own, at least float32's."""
    return torch.finfo(torch.promote_types(dtype, torch.float32)).bits // 8
