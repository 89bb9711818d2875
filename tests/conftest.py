"""Shared fixtures: the real baby-a3c agents from ../shared, short real rollouts, device/dtype parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.policy import ActorCritic, load_agent
from engine.rollout import rollout

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT.parent / "shared" / "checkpoints"
BABY_A3C = CHECKPOINTS / "baby-a3c"


def checkpoint(game: str, frames: int = 40) -> Path:
    path = BABY_A3C / f"{game}-v4" / f"model.{frames}.tar"
    if not path.exists():
        pytest.fail(f"real checkpoint {path} is missing: the tests expect ../shared beside the repository")
    return path


@pytest.fixture(scope="session")
def pong_checkpoint() -> Path:
    return checkpoint("pong")


@pytest.fixture(scope="session")
def pong_agent(pong_checkpoint) -> ActorCritic:
    return load_agent(pong_checkpoint, device="cpu")


def lstm_agent_from(gru_agent: ActorCritic, seed: int = 0) -> ActorCritic:
    """An LSTM agent of the paper's architecture: the real agent's trained convolutions and heads, a seeded
    random LSTM core (no trained LSTM agent exists yet), so its activations look like a real agent's."""
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
def pong_rollout(pong_agent):
    """60 real Pong steps played by the real agent (seeded); later frames have a ball and non-zero states."""
    return rollout(pong_agent, "Pong-v4", 60, seed=0, progress=False)


@pytest.fixture(scope="session")
def lstm_states(pong_lstm_agent, pong_rollout):
    """The states the LSTM agent would have used on the rollout's frames (run through them in order)."""
    from engine.preprocessing import preprocess_frames

    x = preprocess_frames(pong_rollout.frames)
    state, states = pong_lstm_agent.initial_state(1), []
    with torch.inference_mode():
        for t in range(x.shape[0]):
            states.append(state)
            state = pong_lstm_agent(x[t : t + 1], state).state
    return tuple(torch.cat(parts) for parts in zip(*states))


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request) -> torch.device:
    return torch.device(request.param)
