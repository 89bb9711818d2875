"""Jacobian saliency (spec, section 8): input gradients of the actor and critic, batched over frames.

Every frame's outputs depend only on its own observation and its own restored recurrent state, so the
gradient of a *sum over frames* w.r.t. the batched input holds each frame's own gradient in its row: one
batched forward pass and one batched backward pass per cotangent give every frame's map at once. No Python
loop runs over frames; frames are processed ``frames_per_eval`` at a time (a memory bound only), and because the
forward pass is batch-invariant (the policies pad rows, see ``engine.core.batching``; the backward pass
runs on the same padded row count) a chunk boundary never changes a result, bit for bit.

Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only: nothing accumulates in the agent's
parameters' ``.grad`` and its train/eval mode is never touched. The computation runs with autograd switched
on even when the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()``.

Two backends compute the same gradients. ``"autograd"`` (the default): one forward pass, then one
``torch.autograd.grad`` call per cotangent (both maps: 2; the action Jacobian: one per action), reusing the
graph. ``"func"``: one ``torch.func.vjp`` and ``torch.func.vmap`` of its pullback over the stacked cotangents,
which batches the backward passes into one. ``benchmarks/gpu/check.py`` times both (results and the choice
of default in the README).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from .batching import chunk_bounds
from .device import float32_matmul_precision
from .errors import EngineError
from .inputs import Actions, Observations, StatesLike, check_finite_maps, check_outputs, check_policy, prepare_inputs
from .policy import Policy, PolicyOutput, State

DEFAULT_FRAMES_PER_EVAL = 64  # frames per forward/backward pass when frames_per_eval is None
BACKENDS = ("autograd", "func")

# K cotangent pairs (for the logits, for the value) from the detached outputs; None stands for zeros
Cotangents = Callable[[torch.Tensor, torch.Tensor], Sequence[tuple[torch.Tensor | None, torch.Tensor | None]]]


@dataclass(frozen=True)
class JacobianResult:
    """Jacobian maps of N observations (C, H, W), on the agent's device and dtype.

    ``actor``/``critic`` are the squared gradients (the paper's display); ``actor_grad``/``critic_grad`` the
    raw gradients w.r.t. the observation in [0, 1]. Maps are (N, H, W): the squared gradient summed over the
    channels (all frames of a stack); gradients are (N, C, H, W).
    """

    actor: torch.Tensor
    critic: torch.Tensor
    actor_grad: torch.Tensor
    critic_grad: torch.Tensor

    def __post_init__(self) -> None:
        check_finite_maps("jacobian", self.actor_grad, self.critic_grad)

    def __len__(self) -> int:
        return self.actor.shape[0]


# --- helpers ---------------------------------------------------------------------------------------------------


def _check_agent(agent: object) -> None:
    check_policy(agent)


def _chunks(n: int, frames_per_eval: int | None) -> list[tuple[int, int]]:
    """Chunk bounds over n frames; ``frames_per_eval`` must be None or an integer >= 1."""
    if frames_per_eval is None:
        return chunk_bounds(n, DEFAULT_FRAMES_PER_EVAL)
    try:
        if isinstance(frames_per_eval, (bool, np.bool_)):
            raise TypeError
        size = operator.index(frames_per_eval)
    except TypeError:
        raise EngineError(
            f"frames_per_eval must be a positive integer (frames per pass) or None (default {DEFAULT_FRAMES_PER_EVAL}), "
            f"got {frames_per_eval!r} of type {type(frames_per_eval).__name__}"
        ) from None
    if size < 1:
        raise EngineError(
            f"frames_per_eval must be a positive integer (frames per pass) or None (default {DEFAULT_FRAMES_PER_EVAL}), "
            f"got {size}"
        )
    return chunk_bounds(n, size)


@contextlib.contextmanager
def _autograd_on() -> Iterator[None]:
    """Autograd on, whatever the caller's grad mode (also inside ``torch.inference_mode()``)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _forward(agent: Policy, x: torch.Tensor, state: State) -> tuple[torch.Tensor, PolicyOutput]:
    """One batched (batch-invariant) forward pass with the graph recorded w.r.t. a fresh leaf copy of ``x``.

    The copies make normal tensors of inputs created under ``inference_mode`` (which autograd could not save)
    and keep the caller's tensors out of the graph. Call inside :func:`_autograd_on`.
    """
    leaf = x.clone().requires_grad_(True)
    return leaf, check_outputs(agent, agent(leaf, tuple(s.clone() for s in state)), x.shape[0])


def _input_grad(output: torch.Tensor, leaf: torch.Tensor, cotangent: torch.Tensor, retain: bool) -> torch.Tensor:
    """``sum(cotangent * output)`` differentiated w.r.t. ``leaf`` (N, C, H, W) -> (N, C, H, W)."""
    (grad,) = torch.autograd.grad(output, leaf, cotangent, retain_graph=retain)
    return grad


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise EngineError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _check_differentiable(out: PolicyOutput) -> None:
    """Refuse an agent whose outputs autograd cannot trace to its input: every gradient would be 0."""
    if not (out.logits.requires_grad or out.value.requires_grad):
        raise EngineError(
            "the agent's outputs do not depend on its input through autograd (its forward runs under "
            "torch.no_grad() or inference_mode, or detaches the input), so every Jacobian map would be 0: make the "
            "forward differentiable"
        )


def _input_grads(agent: Policy, x: torch.Tensor, state: State, cotangents: Cotangents, backend: str) -> torch.Tensor:
    """Gradients w.r.t. the input ``x`` (N, C, H, W) of ``sum(c_logits * logits) + sum(c_value * value)``
    for K cotangent pairs -> (K, N, C, H, W). ``cotangents(logits, value)`` gives the K pairs from the detached
    outputs; ``None`` in a pair stands for zeros (that head is not differentiated on the autograd path).
    Call inside :func:`_autograd_on`."""
    if backend == "func":
        from torch.func import vjp, vmap

        _check_differentiable(_forward(agent, x[:1], tuple(s[:1] for s in state))[1])  # vjp would give zeros

        state = tuple(s.clone() for s in state)

        def heads(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = agent(inp, state)
            return out.logits, out.value

        # vjp's annotation also covers has_aux=True (a third element); without it, (outputs, pullback)
        outputs, pullback = cast(
            tuple[tuple[torch.Tensor, torch.Tensor], Callable[..., tuple[torch.Tensor]]], vjp(heads, x.clone())
        )
        pairs = cotangents(*(o.detach() for o in outputs))
        stacked = tuple(
            torch.stack([c if c is not None else torch.zeros_like(o) for c in column])
            for o, column in zip(outputs, zip(*pairs))
        )
        (grads,) = vmap(pullback)(stacked)
        return grads.detach()
    leaf, out = _forward(agent, x, state)
    _check_differentiable(out)
    pairs = cotangents(out.logits.detach(), out.value.detach())
    per_pair: list[torch.Tensor] = []
    for k, pair in enumerate(pairs):
        # an output the input does not reach (a wrapped policy's constant value) has a zero gradient
        used = [(o, c) for o, c in zip((out.logits, out.value), pair) if c is not None and o.requires_grad]
        grad = None
        if used:
            (grad,) = torch.autograd.grad(
                [o for o, _ in used], leaf, [c for _, c in used], retain_graph=k < len(pairs) - 1, allow_unused=True
            )
        per_pair.append(grad if grad is not None else torch.zeros_like(leaf))
    return torch.stack(per_pair)


def _check_actions(actions: Actions, n: int, num_actions: int, device: torch.device) -> torch.Tensor:
    """Validate per-frame action indices -> an int64 tensor (n,) on ``device``."""
    if isinstance(actions, (list, tuple)):
        actions = np.asarray(actions)
    if isinstance(actions, np.ndarray):
        if not (np.issubdtype(actions.dtype, np.integer) and actions.dtype != np.bool_):
            raise EngineError(
                f"actions must be integer action indices, got a numpy array of dtype {actions.dtype}: "
                "pass e.g. rollout.actions or np.asarray(actions, dtype=np.int64)"
            )
        actions = torch.from_numpy(np.ascontiguousarray(actions))
    if not isinstance(actions, torch.Tensor):
        raise TypeError(f"actions must be a tensor, numpy array or list of ints, got {type(actions).__name__}")
    if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
        raise EngineError(
            f"actions must be integer action indices, got dtype {actions.dtype}: pass e.g. actions.long()"
        )
    if actions.ndim != 1:
        raise EngineError(
            f"actions must be a 1-D tensor of shape ({n},) (one action per frame), got shape {tuple(actions.shape)}"
        )
    if actions.shape[0] != n:
        raise EngineError(
            f"action/frame count mismatch: {n} frames but {actions.shape[0]} actions; "
            f"pass one action per frame, shape ({n},)"
        )
    low, high = int(actions.min()), int(actions.max())
    if low < 0 or high >= num_actions:
        raise EngineError(
            f"actions must lie in 0..{num_actions - 1} (the agent has {num_actions} actions), "
            f"got values in {low}..{high}"
        )
    return actions.to(device=device, dtype=torch.long)


# --- the saliency methods --------------------------------------------------------------------------------------


def jacobian_saliency(
    agent: Policy,
    frames: Observations,
    states: StatesLike,
    frames_per_eval: int | None = None,
    backend: str = "autograd",
    tf32: bool = False,
) -> JacobianResult:
    """The paper's Jacobian maps of each frame at its restored state.

    Actor: the gradient w.r.t. the observation of ``sum_k c_k * logit_k`` with ``c`` the frame's own logits held
    constant; critic: the gradient of the value. One forward pass per chunk serves both heads.

    Args:
        agent: the policy (any device/dtype; the results are on the same).
        frames: the observations, as :func:`engine.core.perturbation.perturbation_saliency` takes them.
        states: the state the agent used on each frame, a tuple of ``(N, hidden)`` tensors (``(hx, cx)`` for
            LSTM agents, ``(hx,)`` for GRU agents).
        frames_per_eval: frames per forward/backward pass (default 64); it never changes a result.
        backend: ``"autograd"`` (one ``autograd.grad`` per head) or ``"func"`` (``torch.func.vjp``, its pullback
            vmapped over both heads' cotangents); the same gradients to float rounding.
        tf32: allow TF32 on CUDA (see :func:`engine.core.perturbation.perturbation_saliency`).

    Returns:
        :class:`JacobianResult` with ``actor``, ``critic`` (squared gradients summed over channels, ``(N, H, W)``)
        and ``actor_grad``, ``critic_grad`` (raw gradients, ``(N, C, H, W)``).
    """
    _check_agent(agent)
    _check_backend(backend)
    x, state = prepare_inputs(agent, frames, states)
    bounds = _chunks(x.shape[0], frames_per_eval)

    def both_heads(logits: torch.Tensor, value: torch.Tensor) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        return [(logits, None), (None, torch.ones_like(value))]

    with _autograd_on(), float32_matmul_precision(x.device, tf32):
        grads = x.new_empty(2, *x.shape)
        for a, b in bounds:
            grads[:, a:b] = _input_grads(agent, x[a:b], tuple(s[a:b] for s in state), both_heads, backend)
    actor_grad, critic_grad = grads[0], grads[1]
    return JacobianResult(actor_grad.square().sum(1), critic_grad.square().sum(1), actor_grad, critic_grad)


def action_jacobian(
    agent: Policy,
    frames: Observations,
    states: StatesLike,
    frames_per_eval: int | None = None,
    backend: str = "autograd",
    tf32: bool = False,
) -> torch.Tensor:
    """The full Jacobian of the logits w.r.t. the observation, for each frame at its restored state.

    Args:
        agent, frames, states, frames_per_eval, backend, tf32: as for :func:`jacobian_saliency`.

    Returns:
        ``(N, A, C, H, W)`` on the agent's device and dtype: ``[t, k]`` is d logit_k / d observation of frame ``t``.
    """
    _check_agent(agent)
    _check_backend(backend)
    x, state = prepare_inputs(agent, frames, states)
    bounds = _chunks(x.shape[0], frames_per_eval)
    num_actions = agent.num_actions

    def one_hot_actions(
        logits: torch.Tensor, value: torch.Tensor
    ) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        eye = torch.eye(num_actions, device=logits.device, dtype=logits.dtype)
        return [(eye[k].expand_as(logits), None) for k in range(num_actions)]

    with _autograd_on(), float32_matmul_precision(x.device, tf32):
        jac = x.new_empty(x.shape[0], num_actions, *x.shape[1:])
        for a, b in bounds:
            grads = _input_grads(agent, x[a:b], tuple(s[a:b] for s in state), one_hot_actions, backend)
            jac[a:b] = grads.transpose(0, 1)
    return jac


def logprob_gradient(
    agent: Policy, frames: Observations, states: StatesLike, actions: Actions, frames_per_eval: int | None = None
) -> torch.Tensor:
    """The gradient w.r.t. the observation of ``log softmax(logits)[action]``, each frame with its own action.

    Args:
        agent, frames, states, frames_per_eval: as for :func:`jacobian_saliency`.
        actions: ``(N,)`` integer action indices in ``0..A-1`` (torch, numpy or a list), one per frame.

    Returns:
        ``(N, C, H, W)`` on the agent's device and dtype.
    """
    _check_agent(agent)
    x, state = prepare_inputs(agent, frames, states)
    actions = _check_actions(actions, x.shape[0], agent.num_actions, x.device)
    bounds = _chunks(x.shape[0], frames_per_eval)
    with _autograd_on(), float32_matmul_precision(x.device, False):
        grad = x.new_empty(x.shape)
        for a, b in bounds:
            leaf, out = _forward(agent, x[a:b], tuple(s[a:b] for s in state))
            log_probs = torch.log_softmax(out.logits, dim=-1)
            onehot = torch.nn.functional.one_hot(actions[a:b], agent.num_actions).to(log_probs.dtype)
            grad[a:b] = _input_grad(log_probs, leaf, onehot, retain=False)
    return grad
