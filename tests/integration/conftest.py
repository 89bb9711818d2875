"""Fixtures of the integration tests: an LSTM agent of the paper's architecture built from the real GRU agent, and
the states it uses on the shared real rollout (recurrent agents must be scored at each frame's restored state)."""

from __future__ import annotations

import pytest
import torch

from engine.core.policy import PolicyOutput
from engine.env import pipelines
from engine.policies.greydanus2017 import ActorCritic


def lstm_agent_from(gru_agent: ActorCritic, seed: int = 0) -> ActorCritic:
    """An LSTM agent of the paper's architecture: the real agent's trained convolutions and heads, a seeded
    random LSTM core, so its activations look like a real agent's."""
    torch.manual_seed(seed)
    agent = ActorCritic(num_actions=gru_agent.num_actions, core="lstm")
    own = agent.state_dict()
    own.update({k: v for k, v in gru_agent.state_dict().items() if not k.startswith("gru.")})
    agent.load_state_dict(own)
    return agent.eval()


@pytest.fixture(scope="session")
def pong_lstm_agent(pong_agent) -> ActorCritic:
    return lstm_agent_from(pong_agent)


@pytest.fixture(scope="session")
def lstm_states(pong_lstm_agent, pong_rollout):
    """The states the LSTM agent would have used on the rollout's frames (run through them in order)."""
    from engine.core.preprocessing import preprocess_frames

    x = preprocess_frames(pong_rollout.frames)
    state, states = pong_lstm_agent.initial_state(1), []
    with torch.inference_mode():
        for t in range(x.shape[0]):
            states.append(state)
            state = pong_lstm_agent(x[t : t + 1], state).state
    return tuple(torch.cat(parts) for parts in zip(*states))


class TopLeftPixel:
    """A policy that reads the top-left pixel x of a 16x16 observation: value x, logits (x, -x) (the RISE and LIME
    tests' hand-computed cases)."""

    observation_shape, num_actions, pipeline, frame_stack = (1, 16, 16), 2, "gymnasium_atari", 1
    device, dtype = torch.device("cpu"), torch.float64

    def __call__(self, obs, state):
        x = obs[:, 0, 0, 0]
        return PolicyOutput(x, torch.stack([x, -x], dim=1), ())

    def initial_state(self, batch=1):
        return ()

    def reset_state(self, state, done):
        return state


@pytest.fixture
def time_limits(monkeypatch):
    """``time_limits(a, b, ...)``: the environments made from now on get gymnasium's ``max_episode_steps`` a, b, ...
    in the order they are made (a VectorPlayer makes game 0 first), so episodes end early and at different steps
    in different games (ALE steps: agent steps for the 2017 pipeline, frames for the standard ones)."""
    original = pipelines.make_env

    def set_limits(*limits: int) -> None:
        left = iter(limits)

        def make_env(env_id, seed=None, **kwargs):
            return original(env_id, seed, max_episode_steps=next(left), **kwargs)

        monkeypatch.setattr(pipelines, "make_env", make_env)

    return set_limits
