"""Jacobian saliency (engine.core.jacobian) against plain per-frame torch.autograd.grad loops, in float64.

Agents: the real baby-a3c Pong checkpoint (GRU) and a seeded random LSTM agent of the paper's architecture.
Frames: real Pong frames from ALE (seeded reset, seeded random actions). States: non-zero, obtained by running
each agent over the frames in order. Fixtures live here (tests/conftest.py belongs to someone else).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.core.errors import EngineError
from engine.core.jacobian import BACKENDS, JacobianResult, action_jacobian, jacobian_saliency, logprob_gradient
from engine.core.preprocessing import preprocess_frames
from engine.policies.greydanus2017 import ActorCritic, load_agent

CHECKPOINT = __import__("tests.conftest", fromlist=["lazy_checkpoint"]).lazy_checkpoint(
    "pong", 40
)  # via the registry; skips offline
STEPS = 24  # real Pong steps played (random actions)
PICK = slice(16, 22)  # the frames scored: late enough that the states are far from zero
TOL = 1e-10  # float64, relative to the max abs of the reference


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jac_pong_frames() -> np.ndarray:
    """``STEPS`` real Pong observations, uint8 (STEPS, 210, 160, 3)."""
    gymnasium = pytest.importorskip("gymnasium")
    ale_py = pytest.importorskip("ale_py")
    gymnasium.register_envs(ale_py)
    env = gymnasium.make("Pong-v4")
    try:
        obs, _ = env.reset(seed=0)
        rng = np.random.default_rng(0)
        frames = [obs]
        for _ in range(STEPS - 1):
            obs, *_ = env.step(int(rng.integers(env.action_space.n)))
            frames.append(obs)
    finally:
        env.close()
    return np.stack(frames)


@pytest.fixture(scope="module")
def jac_gru_agent() -> ActorCritic:
    if not CHECKPOINT.exists():
        pytest.fail(f"real checkpoint {CHECKPOINT} is missing: the tests expect ../shared beside the repository")
    return load_agent(CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def jac_lstm_agent() -> ActorCritic:
    """A seeded random LSTM agent; weights scaled up so the input gradients are not vanishingly small."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        agent = ActorCritic(num_actions=6, core="lstm")
    with torch.no_grad():
        for conv in agent.convs:
            conv.weight.mul_(2.0)
        agent.lstm.weight_ih.mul_(3.0)
        agent.actor_linear.weight.mul_(4.0)
    return agent.eval()


def _run_states(agent: ActorCritic, frames) -> tuple[torch.Tensor, ...]:
    """The state the agent had on each frame, playing them in order from the zero state: tuple of (T, hidden)."""
    x = preprocess_frames(frames, dtype=agent.actor_linear.weight.dtype)
    state, states = agent.initial_state(1), []
    with torch.no_grad():
        for t in range(x.shape[0]):
            states.append(state)
            state = agent(x[t : t + 1], state).state
    return tuple(torch.cat(parts) for parts in zip(*states))


@pytest.fixture(scope="module", params=["gru", "lstm"])
def case(request, jac_gru_agent, jac_lstm_agent, jac_pong_frames):
    """(float32 agent, float64 copy, frames (n, 210, 160, 3), float32 states, float64 states) of one core."""
    agent = jac_gru_agent if request.param == "gru" else jac_lstm_agent
    agent64 = copy.deepcopy(agent).double()
    states32 = tuple(s[PICK] for s in _run_states(agent, jac_pong_frames))
    states64 = tuple(s[PICK] for s in _run_states(agent64, jac_pong_frames))
    assert all(float(s.abs().max()) > 0.05 for s in states64), "states should be far from the zero state"
    return agent, agent64, jac_pong_frames[PICK], states32, states64


# --- the reference: one frame at a time, plain autograd ---------------------------------------------------------


def _loop_grads(agent, frames, states, scalar) -> torch.Tensor:
    """For each frame alone (unpadded batch of 1), torch.autograd.grad of scalar(logits, value, t) w.r.t. x."""
    x = preprocess_frames(frames, dtype=agent.actor_linear.weight.dtype)
    grads = []
    for t in range(x.shape[0]):
        xt = x[t : t + 1].clone().requires_grad_(True)
        out = agent(xt, tuple(s[t : t + 1] for s in states), batch_invariant=False)
        (g,) = torch.autograd.grad(scalar(out.logits[0], out.value[0], t), xt)
        grads.append(g[0])  # (C, H, W)
    return torch.stack(grads)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.abs().max())
    assert scale > 1e-8, "the reference gradient is (nearly) zero: the comparison would be meaningless"
    return float((got - ref).abs().max()) / scale


# --- exactness against the loop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_maps_equal_autograd_loop(case, backend):
    _, agent, frames, _, states = case
    got = jacobian_saliency(agent, frames, states, backend=backend)
    assert isinstance(got, JacobianResult) and len(got) == len(frames)
    actor = _loop_grads(agent, frames, states, lambda logits, value, t: (logits * logits.detach()).sum())
    critic = _loop_grads(agent, frames, states, lambda logits, value, t: value)
    assert _rel(got.actor_grad, actor) <= TOL
    assert _rel(got.critic_grad, critic) <= TOL
    assert torch.equal(got.actor, got.actor_grad.square().sum(1)) and torch.equal(
        got.critic, got.critic_grad.square().sum(1)
    )
    assert got.actor.shape == (len(frames), 80, 80) and got.actor_grad.shape == (len(frames), 1, 80, 80)
    # frames differ, so their maps must too (a map broadcast from one frame would fail here)
    assert not torch.allclose(got.critic_grad[0], got.critic_grad[-1])
    assert got.actor.dtype == torch.float64 and got.actor.device == agent.actor_linear.weight.device


@pytest.mark.parametrize("backend", BACKENDS)
def test_action_jacobian_rows_equal_autograd_loop(case, backend):
    _, agent, frames, _, states = case
    jac = action_jacobian(agent, frames, states, backend=backend)
    assert jac.shape == (len(frames), agent.num_actions, 1, 80, 80)
    for k in range(agent.num_actions):
        row = _loop_grads(agent, frames, states, lambda logits, value, t: logits[k])
        assert _rel(jac[:, k], row) <= TOL, f"action {k}"
    # the rows differ between actions, and contracting them with the logits gives the actor map
    assert not torch.allclose(jac[:, 0], jac[:, 1])
    x = preprocess_frames(frames, dtype=torch.float64)
    with torch.no_grad():
        logits = agent(x, states).logits
    actor = jacobian_saliency(agent, frames, states).actor_grad
    assert _rel(torch.einsum("na,nachw->nchw", logits, jac), actor) <= TOL


def test_logprob_gradient_equals_autograd_loop(case):
    _, agent, frames, _, states = case
    actions = torch.tensor([0, 5, 2, 3, 1, 4])[: len(frames)]
    got = logprob_gradient(agent, frames, states, actions)
    ref = _loop_grads(agent, frames, states, lambda logits, value, t: torch.log_softmax(logits, -1)[actions[t]])
    assert got.shape == (len(frames), 1, 80, 80)
    assert _rel(got, ref) <= TOL
    # another action gives another gradient; numpy and list actions are accepted and agree
    other = logprob_gradient(agent, frames, states, (actions + 1) % agent.num_actions)
    assert _rel(other, got) > 1e-3
    assert torch.equal(logprob_gradient(agent, frames, states, actions.numpy()), got)
    assert torch.equal(logprob_gradient(agent, frames, states, actions.tolist()), got)


# --- chunking, batching, input forms, dtypes ----------------------------------------------------------------------


def test_chunk_sizes_and_frames_together_are_identical(case):
    agent, _, frames, states, _ = case  # float32, where a different reduction order would show
    n = len(frames)
    actions = torch.arange(n) % agent.num_actions
    full = jacobian_saliency(agent, frames, states)
    full_jac = action_jacobian(agent, frames, states)
    full_lp = logprob_gradient(agent, frames, states, actions)
    for chunk in (1, 2, n, 1000):
        part = jacobian_saliency(agent, frames, states, frames_per_eval=chunk)
        for field in ("actor", "critic", "actor_grad", "critic_grad"):
            assert torch.equal(getattr(part, field), getattr(full, field)), (chunk, field)
        assert torch.equal(action_jacobian(agent, frames, states, frames_per_eval=chunk), full_jac), chunk
        assert torch.equal(logprob_gradient(agent, frames, states, actions, frames_per_eval=chunk), full_lp), chunk
    # one frame per call equals all frames at once
    one = [jacobian_saliency(agent, frames[t : t + 1], tuple(s[t : t + 1] for s in states)) for t in range(n)]
    assert torch.equal(torch.cat([r.actor_grad for r in one]), full.actor_grad)
    assert torch.equal(torch.cat([r.critic_grad for r in one]), full.critic_grad)
    one_jac = [action_jacobian(agent, frames[t : t + 1], tuple(s[t : t + 1] for s in states)) for t in range(n)]
    assert torch.equal(torch.cat(one_jac), full_jac)


def test_preprocessed_frames_equal_raw_frames(case):
    _, agent, frames, _, states = case
    x = preprocess_frames(frames, dtype=torch.float64)
    raw, pre = jacobian_saliency(agent, frames, states), jacobian_saliency(agent, x, states)
    assert torch.equal(raw.actor_grad, pre.actor_grad) and torch.equal(raw.critic_grad, pre.critic_grad)
    assert torch.equal(action_jacobian(agent, torch.from_numpy(frames), states), action_jacobian(agent, x, states))


def test_float32_agrees_with_float64(case):
    agent32, agent64, frames, states32, states64 = case
    f32, f64 = jacobian_saliency(agent32, frames, states32), jacobian_saliency(agent64, frames, states64)
    assert f32.actor.dtype == torch.float32 and f32.critic_grad.dtype == torch.float32
    assert _rel(f32.actor_grad.double(), f64.actor_grad) < 1e-4
    assert _rel(f32.critic_grad.double(), f64.critic_grad) < 1e-4
    jac32, jac64 = action_jacobian(agent32, frames, states32), action_jacobian(agent64, frames, states64)
    assert jac32.dtype == torch.float32 and _rel(jac32.double(), jac64) < 1e-4


def test_agent_untouched_and_grad_modes(case):
    agent, _, frames, states, _ = case
    actions = torch.zeros(len(frames), dtype=torch.long)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    ref = jacobian_saliency(agent, frames, states)
    agent.train()
    try:
        jacobian_saliency(agent, frames, states)
        action_jacobian(agent, frames, states)
        logprob_gradient(agent, frames, states, actions)
        assert agent.training and all(m.training for m in agent.modules())  # mode left as the caller set it
    finally:
        agent.eval()
    assert not any(m.training for m in agent.modules())
    jacobian_saliency(agent, frames, states)
    assert not agent.training
    assert all(p.grad is None for p in agent.parameters())  # nothing accumulates in the agent
    assert all(torch.equal(v, before[k]) for k, v in agent.state_dict().items())
    # works, with the same result, when the caller has autograd off
    with torch.no_grad():
        assert torch.equal(jacobian_saliency(agent, frames, states).actor_grad, ref.actor_grad)
    with torch.inference_mode():
        got = jacobian_saliency(agent, frames, states)
    assert torch.equal(got.actor_grad, ref.actor_grad) and torch.equal(got.critic_grad, ref.critic_grad)
    assert not ref.actor.requires_grad and not ref.critic_grad.requires_grad


# --- bad inputs -------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(jac_gru_agent, jac_pong_frames):
    agent = jac_gru_agent
    frames = jac_pong_frames[:3]
    states = (torch.zeros(3, 256),)
    cases = [
        (
            lambda: logprob_gradient(agent, frames, states, torch.tensor([0, 1, 6])),
            EngineError,
            r"actions must lie in 0\.\.5.*got values in 0\.\.6",
        ),
        (
            lambda: logprob_gradient(agent, frames, states, torch.tensor([-1, 1, 2])),
            EngineError,
            r"actions must lie in 0\.\.5",
        ),
        (lambda: logprob_gradient(agent, frames, states, torch.tensor([0, 1])), EngineError, r"3 frames but 2 actions"),
        (
            lambda: logprob_gradient(agent, frames, states, torch.tensor([[0, 1, 2]])),
            EngineError,
            r"1-D tensor of shape \(3,\)",
        ),
        (
            lambda: logprob_gradient(agent, frames, states, torch.tensor([0.0, 1.0, 2.0])),
            EngineError,
            r"integer action indices",
        ),
        (
            lambda: logprob_gradient(agent, frames, states, np.array([True, False, True])),
            EngineError,
            r"integer action indices",
        ),
        (lambda: logprob_gradient(agent, frames, states, "left"), TypeError, r"actions must be a tensor"),
        (
            lambda: jacobian_saliency(agent, frames, states, backend="jax"),
            EngineError,
            r"backend must be one of \('autograd', 'func'\), got 'jax'",
        ),
        (
            lambda: jacobian_saliency(agent, frames, states, frames_per_eval=0),
            EngineError,
            r"frames_per_eval must be a positive integer.*got 0",
        ),
        (
            lambda: action_jacobian(agent, frames, states, frames_per_eval=-2),
            EngineError,
            r"frames_per_eval must be a positive integer",
        ),
        (
            lambda: jacobian_saliency(agent, frames, states, frames_per_eval=1.5),
            EngineError,
            r"frames_per_eval must be a positive integer",
        ),
        (
            lambda: jacobian_saliency(agent, frames, states, frames_per_eval=True),
            EngineError,
            r"frames_per_eval must be a positive integer",
        ),
        (lambda: jacobian_saliency(agent, frames, (torch.zeros(2, 256),)), ValueError, r"state/frame count mismatch"),
        (
            lambda: jacobian_saliency(agent, frames, (torch.zeros(3, 256), torch.zeros(3, 256))),
            ValueError,
            r"this agent.s state has 1 tensor\(s\) of shapes \(N, 256\), got 2",
        ),
        (lambda: jacobian_saliency(agent, frames[0], (torch.zeros(1, 256),)), ValueError, r"use frames\[None\]"),
        (lambda: jacobian_saliency(agent, torch.zeros(3, 1, 84, 84), states), ValueError, r"\(N, 1, 80, 80\)"),
        (
            lambda: jacobian_saliency(torch.nn.Linear(2, 2), frames, states),
            TypeError,
            r"agent must implement engine\.core\.policy\.Policy, got Linear \(missing: observation_shape",
        ),
        (  # every member but the call itself (a method named `policy` instead)
            lambda: jacobian_saliency(_NotCallable(agent), frames, states),
            TypeError,
            r"got _NotCallable \(missing: __call__ \(outputs = agent\(obs, state\)\)\)",
        ),
    ]
    for call, exc, message in cases:
        with pytest.raises(exc, match=message):
            call()
    # a valid numpy integer chunk size is accepted
    assert jacobian_saliency(agent, frames, states, frames_per_eval=np.int64(2)).actor.shape == (3, 80, 80)


class _NotCallable:
    """An agent's members, its forward under another name."""

    def __init__(self, agent):
        for name in ("observation_shape", "num_actions", "pipeline", "frame_stack", "device", "dtype"):
            setattr(self, name, getattr(agent, name))
        self.initial_state, self.reset_state, self.policy = agent.initial_state, agent.reset_state, agent
