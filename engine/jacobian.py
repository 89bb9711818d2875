"""Jacobian saliency (spec, section 8), vectorised over frames with torch.func.

Each frame's outputs depend only on its own input and restored state, so one batched forward pass and one
``torch.func.vjp`` give every frame's input gradient at once; the vjp function is reused for each cotangent
(actor, critic, each action), so the forward pass is shared by all of them.

Per-action Jacobians: on the 2-core CPU, for 32 frames and 6 actions (best of 5), reusing the vjp once per action took 0.098 s, ``vmap`` over the 6 one-hot
cotangents 0.147 s and ``autograd.grad(..., is_grads_batched=True)`` 0.104 s, all bit-identical; the loop over
the (at most 18) actions is kept. No loop runs over frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batching import chunk_bounds
from .inputs import prepare_inputs
from .policy import ActorCritic, index_state

DEFAULT_FRAME_CHUNK = 64


@dataclass(frozen=True)
class JacobianSaliency:
    """Jacobian maps of N frames: ``actor``/``critic`` are the squared gradients (the paper's display),
    ``actor_grad``/``critic_grad`` the raw gradients, all (N, 80, 80)."""

    actor: torch.Tensor
    critic: torch.Tensor
    actor_grad: torch.Tensor
    critic_grad: torch.Tensor

    def __len__(self) -> int:
        return self.actor.shape[0]


def _vjp(agent: ActorCritic, x: torch.Tensor, state: tuple, log_probs: bool = False):
    """One forward pass over the batch; returns (logits or log-probs, value) and the reusable vjp function."""

    def heads(inputs):
        out = agent(inputs, state)
        scores = torch.log_softmax(out.logits, dim=-1) if log_probs else out.logits
        return scores, out.value

    with torch.enable_grad():
        return torch.func.vjp(heads, x)


def _chunks(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_bounds(n, chunk_size or DEFAULT_FRAME_CHUNK)


def jacobian_saliency(agent: ActorCritic, frames, states, chunk_size: int | None = None) -> JacobianSaliency:
    """The paper's Jacobian maps: actor = d(sum_k c_k logit_k)/dI with c = the frame's logits held constant,
    critic = dV/dI, at each frame's restored state.

    Args:
        frames: raw uint8 (N, 210, 160, 3) or preprocessed (N, 1, 80, 80). states: tuple of (N, hidden).
        chunk_size: frames per forward/backward pass (default 64); results do not depend on it.
    """
    x, state = prepare_inputs(agent, frames, states)
    actor, critic = [], []
    for a, b in _chunks(x.shape[0], chunk_size):
        (logits, value), vjp_fn = _vjp(agent, x[a:b], index_state(state, slice(a, b)))
        logits, value = logits.detach(), value.detach()
        actor.append(vjp_fn((logits, torch.zeros_like(value)))[0].detach()[:, 0])
        critic.append(vjp_fn((torch.zeros_like(logits), torch.ones_like(value)))[0].detach()[:, 0])
    actor_grad, critic_grad = torch.cat(actor), torch.cat(critic)
    return JacobianSaliency(actor_grad.square(), critic_grad.square(), actor_grad, critic_grad)


def action_jacobian(agent: ActorCritic, frames, states, chunk_size: int | None = None) -> torch.Tensor:
    """The full Jacobian of the logits w.r.t. the 80x80 input: (N, actions, 80, 80)."""
    x, state = prepare_inputs(agent, frames, states)
    rows = []
    for a, b in _chunks(x.shape[0], chunk_size):
        (logits, value), vjp_fn = _vjp(agent, x[a:b], index_state(state, slice(a, b)))
        eye = torch.eye(agent.num_actions, device=x.device, dtype=x.dtype)
        zero_value = torch.zeros_like(value.detach())
        per_action = [vjp_fn((eye[k].expand_as(logits), zero_value))[0].detach()[:, 0] for k in range(agent.num_actions)]
        rows.append(torch.stack(per_action, dim=1))
    return torch.cat(rows)


def logprob_gradient(agent: ActorCritic, frames, states, actions, chunk_size: int | None = None) -> torch.Tensor:
    """Gradient of ``log softmax(logits)[action]`` w.r.t. the input, for each frame's action: (N, 80, 80)."""
    x, state = prepare_inputs(agent, frames, states)
    actions = torch.as_tensor(actions, device=x.device)
    if actions.ndim != 1 or actions.shape[0] != x.shape[0]:
        raise ValueError(f"actions must have shape ({x.shape[0]},) (one per frame), got {tuple(actions.shape)}")
    if actions.dtype.is_floating_point or actions.dtype == torch.bool:
        raise ValueError(f"actions must be integers, got dtype {actions.dtype}")
    if int(actions.min()) < 0 or int(actions.max()) >= agent.num_actions:
        raise ValueError(f"actions must lie in 0..{agent.num_actions - 1}, got {actions.min().item()}..{actions.max().item()}")
    grads = []
    for a, b in _chunks(x.shape[0], chunk_size):
        (log_probs, value), vjp_fn = _vjp(agent, x[a:b], index_state(state, slice(a, b)), log_probs=True)
        onehot = torch.nn.functional.one_hot(actions[a:b].long(), agent.num_actions).to(log_probs.dtype)
        grads.append(vjp_fn((onehot, torch.zeros_like(value.detach())))[0].detach()[:, 0])
    return torch.cat(grads)
