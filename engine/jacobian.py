"""Jacobian saliency (spec, section 8): input gradients of the actor and critic, batched over frames.

Every frame's outputs depend only on its own 80x80 input and its own restored recurrent state, so the
gradient of a *sum over frames* w.r.t. the batched input holds each frame's own gradient in its row: one
batched forward pass and one batched backward pass per cotangent give every frame's map at once. No Python
loop runs over frames; frames are processed ``chunk_size`` at a time (a memory bound only), and because the
forward pass is batch-invariant (``ActorCritic.forward`` pads rows, see ``engine.batching``; the backward pass
runs on the same padded row count) a chunk boundary never changes a result, bit for bit.

Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only: nothing accumulates in the agent's
parameters' ``.grad`` and its train/eval mode is never touched. The computation runs with autograd switched
on even when the caller is inside ``torch.no_grad()`` or ``torch.inference_mode()``.

How the backward passes are vectorised (measured, not assumed). On the 2-core CPU (torch 2.14.1, real
baby-a3c Pong GRU agent, 32 real Pong frames with random states, best of 5; a seeded LSTM agent and float64
gave the same ranking), with every variant bit-identical to every other unless noted:

========================================================================  ========  =========  ===========
variant                                                                    GRU f32   LSTM f32   GRU f64
========================================================================  ========  =========  ===========
maps: one forward, two ``autograd.grad`` calls (retain_graph)  [chosen]     22.4 ms   24.5 ms    47.3 ms
maps: one ``torch.func.vjp``, its function called twice                     25.1 ms   29.4 ms    58.4 ms
maps: one ``vjp``, ``vmap`` over the 2 cotangents                           25.4 ms   33.3 ms    63.3 ms
maps: ``autograd.grad(..., is_grads_batched=True)`` over 2 cotangents       25.4 ms   30.1 ms    51.2 ms
maps: batch doubled (2N rows, one forward, one backward)                    27.4 ms   33.9 ms    66.8 ms
per-action: one forward, A ``autograd.grad`` calls (retain_graph) [chosen]  57.3 ms   64.2 ms   106.1 ms
per-action: one ``vjp``, its function called A times                        71.5 ms   73.8 ms   115.7 ms
per-action: one ``vjp``, ``vmap`` over the A one-hot cotangents            127.3 ms  137.6 ms   231.2 ms
per-action: ``autograd.grad(..., is_grads_batched=True)``                  125.4 ms  129.0 ms   221.9 ms
per-action: each frame repeated A times, one forward, one backward         190.4 ms  207.6 ms   445.2 ms
per-action: ``vmap(jacrev)`` over frames (unpadded; NOT batch-invariant)   131.9 ms  138.9 ms   235.7 ms
========================================================================  ========  =========  ===========

(``vmap`` does batch through ``GRUCell``/``LSTMCell`` in this torch, but the vmapped backward over A*N rows
is about twice as slow as A backward passes over N rows on this CPU, and ``torch.func``'s wrappers cost
10-20% on every variant.) So one forward pass serves both heads (and all actions), and the backward passes
run once per cotangent. Per frame the cost is flat from about 24 frames per chunk on (0.8 ms per frame for
both maps, 1.9 ms for the 6-action Jacobian, float32); below 16 frames a chunk pays for the padded rows.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass

import numpy as np
import torch

from .batching import chunk_bounds
from .errors import EngineError
from .inputs import prepare_inputs
from .policy import ActorCritic, PolicyOutput, State

DEFAULT_FRAME_CHUNK = 64  # frames per forward/backward pass when chunk_size is None


@dataclass(frozen=True)
class JacobianResult:
    """Jacobian maps of N frames, on the agent's device and dtype, all of shape (N, 80, 80).

    ``actor``/``critic`` are the squared gradients (the paper's display); ``actor_grad``/``critic_grad`` the
    raw gradients w.r.t. the preprocessed 80x80 input.
    """

    actor: torch.Tensor
    critic: torch.Tensor
    actor_grad: torch.Tensor
    critic_grad: torch.Tensor

    def __len__(self) -> int:
        return self.actor.shape[0]


JacobianSaliency = JacobianResult  # the earlier name of the result type


# --- helpers ---------------------------------------------------------------------------------------------------


def _check_agent(agent) -> None:
    if not isinstance(agent, ActorCritic):
        raise TypeError(
            f"agent must be an engine.policy.ActorCritic, got {type(agent).__name__}: "
            "load one with engine.load_agent(path) or build ActorCritic(num_actions, core)"
        )


def _chunks(n: int, chunk_size) -> list[tuple[int, int]]:
    """Chunk bounds over n frames; ``chunk_size`` must be None or an integer >= 1."""
    if chunk_size is None:
        return chunk_bounds(n, DEFAULT_FRAME_CHUNK)
    try:
        if isinstance(chunk_size, (bool, np.bool_)):
            raise TypeError
        size = operator.index(chunk_size)
    except TypeError:
        raise EngineError(
            f"chunk_size must be a positive integer (frames per pass) or None (default {DEFAULT_FRAME_CHUNK}), "
            f"got {chunk_size!r} of type {type(chunk_size).__name__}"
        ) from None
    if size < 1:
        raise EngineError(
            f"chunk_size must be a positive integer (frames per pass) or None (default {DEFAULT_FRAME_CHUNK}), "
            f"got {size}"
        )
    return chunk_bounds(n, size)


@contextlib.contextmanager
def _autograd_on():
    """Autograd on, whatever the caller's grad mode (also inside ``torch.inference_mode()``)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _forward(agent: ActorCritic, x: torch.Tensor, state: State) -> tuple[torch.Tensor, PolicyOutput]:
    """One batched (batch-invariant) forward pass with the graph recorded w.r.t. a fresh leaf copy of ``x``.

    The copies make normal tensors of inputs created under ``inference_mode`` (which autograd could not save)
    and keep the caller's tensors out of the graph. Call inside :func:`_autograd_on`.
    """
    leaf = x.clone().requires_grad_(True)
    return leaf, agent(leaf, tuple(s.clone() for s in state))


def _input_grad(output: torch.Tensor, leaf: torch.Tensor, cotangent: torch.Tensor, retain: bool) -> torch.Tensor:
    """``sum(cotangent * output)`` differentiated w.r.t. ``leaf`` (N, 1, 80, 80) -> (N, 80, 80)."""
    (grad,) = torch.autograd.grad(output, leaf, cotangent, retain_graph=retain)
    return grad[:, 0]


def _check_actions(actions, n: int, num_actions: int, device: torch.device) -> torch.Tensor:
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


def jacobian_saliency(agent: ActorCritic, frames, states, chunk_size: int | None = None) -> JacobianResult:
    """The paper's Jacobian maps of each frame at its restored state.

    Actor: the gradient w.r.t. the 80x80 input of ``sum_k c_k * logit_k`` with ``c`` the frame's own logits held
    constant; critic: the gradient of the value. One forward pass per chunk serves both heads.

    Args:
        agent: the policy (any device/dtype; the results are on the same).
        frames: raw uint8 ``(N, 210, 160, 3)`` or preprocessed floating ``(N, 1, 80, 80)`` (numpy or torch).
        states: the state the agent used on each frame, a tuple of ``(N, hidden)`` tensors (``(hx, cx)`` for
            LSTM agents, ``(hx,)`` for GRU agents).
        chunk_size: frames per forward/backward pass (default 64); it never changes a result.

    Returns:
        :class:`JacobianResult` with ``actor``, ``critic`` (squared gradients) and ``actor_grad``,
        ``critic_grad`` (raw gradients), each ``(N, 80, 80)``.
    """
    _check_agent(agent)
    x, state = prepare_inputs(agent, frames, states)
    bounds = _chunks(x.shape[0], chunk_size)
    with _autograd_on():
        actor_grad = x.new_empty(x.shape[0], *x.shape[2:])
        critic_grad = torch.empty_like(actor_grad)
        for a, b in bounds:
            leaf, out = _forward(agent, x[a:b], tuple(s[a:b] for s in state))
            actor_grad[a:b] = _input_grad(out.logits, leaf, out.logits.detach(), retain=True)
            critic_grad[a:b] = _input_grad(out.value, leaf, torch.ones_like(out.value), retain=False)
    return JacobianResult(actor_grad.square(), critic_grad.square(), actor_grad, critic_grad)


def action_jacobian(agent: ActorCritic, frames, states, chunk_size: int | None = None) -> torch.Tensor:
    """The full Jacobian of the logits w.r.t. the 80x80 input, for each frame at its restored state.

    Args:
        agent, frames, states, chunk_size: as for :func:`jacobian_saliency`.

    Returns:
        ``(N, A, 80, 80)`` on the agent's device and dtype: ``[t, k]`` is d logit_k / d input of frame ``t``.
    """
    _check_agent(agent)
    x, state = prepare_inputs(agent, frames, states)
    bounds = _chunks(x.shape[0], chunk_size)
    num_actions = agent.num_actions
    with _autograd_on():
        jac = x.new_empty(x.shape[0], num_actions, *x.shape[2:])
        eye = torch.eye(num_actions, device=x.device, dtype=x.dtype)
        for a, b in bounds:
            leaf, out = _forward(agent, x[a:b], tuple(s[a:b] for s in state))
            for k in range(num_actions):  # one backward per action over all the chunk's frames (see the table)
                cotangent = eye[k].expand_as(out.logits)
                jac[a:b, k] = _input_grad(out.logits, leaf, cotangent, retain=k < num_actions - 1)
    return jac


def logprob_gradient(agent: ActorCritic, frames, states, actions, chunk_size: int | None = None) -> torch.Tensor:
    """The gradient w.r.t. the 80x80 input of ``log softmax(logits)[action]``, each frame with its own action.

    Args:
        agent, frames, states, chunk_size: as for :func:`jacobian_saliency`.
        actions: ``(N,)`` integer action indices in ``0..A-1`` (torch, numpy or a list), one per frame.

    Returns:
        ``(N, 80, 80)`` on the agent's device and dtype.
    """
    _check_agent(agent)
    x, state = prepare_inputs(agent, frames, states)
    actions = _check_actions(actions, x.shape[0], agent.num_actions, x.device)
    bounds = _chunks(x.shape[0], chunk_size)
    with _autograd_on():
        grad = x.new_empty(x.shape[0], *x.shape[2:])
        for a, b in bounds:
            leaf, out = _forward(agent, x[a:b], tuple(s[a:b] for s in state))
            log_probs = torch.log_softmax(out.logits, dim=-1)
            onehot = torch.nn.functional.one_hot(actions[a:b], agent.num_actions).to(log_probs.dtype)
            grad[a:b] = _input_grad(log_probs, leaf, onehot, retain=False)
    return grad
