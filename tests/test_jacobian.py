"""Jacobian saliency against a plain per-frame torch.autograd.grad loop, in float64."""

import copy

import pytest
import torch

from engine.jacobian import action_jacobian, jacobian_saliency, logprob_gradient
from engine.preprocessing import preprocess_frames

FRAMES = slice(40, 46)


def _setup(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states, dtype=torch.float64):
    agent, states = (pong_agent, pong_rollout.states) if core == "gru" else (pong_lstm_agent, lstm_states)
    agent = copy.deepcopy(agent).to(dtype)
    return agent, pong_rollout.frames[FRAMES], tuple(s[FRAMES].to(dtype) for s in states)


def _loop_grads(agent, frames, states, scalar):
    """One frame at a time, torch.autograd.grad of scalar(logits, value, t) w.r.t. the input."""
    x = preprocess_frames(frames, dtype=agent.actor_linear.weight.dtype)
    grads = []
    for t in range(x.shape[0]):
        xt = x[t : t + 1].clone().requires_grad_(True)
        out = agent(xt, tuple(s[t : t + 1] for s in states), batch_invariant=False)
        (g,) = torch.autograd.grad(scalar(out.logits[0], out.value[0], t), xt)
        grads.append(g[0, 0])
    return torch.stack(grads)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_maps_equal_autograd_loop(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states):
    agent, frames, states = _setup(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states)
    got = jacobian_saliency(agent, frames, states)
    actor = _loop_grads(agent, frames, states, lambda logits, value, t: (logits * logits.detach()).sum())
    critic = _loop_grads(agent, frames, states, lambda logits, value, t: value)
    assert _rel(got.actor_grad, actor) <= 1e-10 and _rel(got.critic_grad, critic) <= 1e-10
    assert torch.equal(got.actor, got.actor_grad.square()) and torch.equal(got.critic, got.critic_grad.square())
    assert float(actor.abs().max()) > 0 and float(critic.abs().max()) > 0
    assert all(p.grad is None for p in agent.parameters())  # nothing accumulates in the agent


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_action_jacobian_rows_and_logprob_gradient(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states):
    agent, frames, states = _setup(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states)
    jac = action_jacobian(agent, frames, states)
    assert jac.shape == (6, agent.num_actions, 80, 80)
    for k in range(agent.num_actions):
        row = _loop_grads(agent, frames, states, lambda logits, value, t: logits[k])
        assert _rel(jac[:, k], row) <= 1e-10, k
    actions = pong_rollout.actions[FRAMES]
    got = logprob_gradient(agent, frames, states, actions)
    expected = _loop_grads(agent, frames, states, lambda logits, value, t: torch.log_softmax(logits, -1)[actions[t]])
    assert _rel(got, expected) <= 1e-10


def test_chunking_and_frames_together_are_identical(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[FRAMES], tuple(s[FRAMES] for s in pong_rollout.states)
    full = jacobian_saliency(pong_agent, frames, states)
    for chunk in (1, 2, 5):
        part = jacobian_saliency(pong_agent, frames, states, chunk_size=chunk)
        assert torch.equal(part.actor, full.actor) and torch.equal(part.critic, full.critic), chunk
    assert torch.equal(action_jacobian(pong_agent, frames, states, chunk_size=1), action_jacobian(pong_agent, frames, states))


def test_float32_agrees_with_float64(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[FRAMES], tuple(s[FRAMES] for s in pong_rollout.states)
    f32 = jacobian_saliency(pong_agent, frames, states)
    f64 = jacobian_saliency(copy.deepcopy(pong_agent).double(), frames, tuple(s.double() for s in states))
    assert f32.actor.dtype == torch.float32 and _rel(f32.actor_grad.double(), f64.actor_grad) < 1e-4


def test_bad_inputs(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[:3], tuple(s[:3] for s in pong_rollout.states)
    with pytest.raises(ValueError, match="actions must lie in 0..5"):
        logprob_gradient(pong_agent, frames, states, torch.tensor([0, 1, 6]))
    with pytest.raises(ValueError, match=r"actions must have shape \(3,\)"):
        logprob_gradient(pong_agent, frames, states, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        jacobian_saliency(pong_agent, frames, states, chunk_size=0)
    with pytest.raises(ValueError, match="state/frame count mismatch"):
        jacobian_saliency(pong_agent, frames, tuple(s[:2] for s in states))
