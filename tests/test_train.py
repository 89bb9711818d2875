"""Training smoke test: a few hundred frames, checkpoints in a series, resume, and the app-compatible format."""

import json

import pytest
import torch

from engine import load_agent
from engine.errors import EngineError
from engine.train import TrainConfig, train


def test_train_checkpoint_and_resume(tmp_path):
    config = TrainConfig(num_envs=2, rollout_steps=5, total_frames=20, checkpoint_every=10, run_dir=str(tmp_path), progress=False)
    last = train(config)
    assert last == tmp_path / "checkpoints" / "step_20.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["step_10.pt", "step_20.pt"]
    meta = json.loads((tmp_path / "checkpoints" / "step_20.json").read_text())
    assert meta["game"] == "Pong-v4" and meta["frames"] == 20 and meta["core"] == "lstm"
    agent = load_agent(last, device="cpu")  # the same loader as every other agent
    assert agent.core == "lstm" and agent.num_actions == 6
    resumed_from = torch.load(tmp_path / "resume.pt", weights_only=False)
    assert resumed_from["frames"] == 20
    last = train(TrainConfig(**{**config.__dict__, "total_frames": 30}))
    assert last == tmp_path / "checkpoints" / "step_30.pt"
    after = load_agent(last, device="cpu")
    assert not torch.equal(after.actor_linear.weight, agent.actor_linear.weight)  # it kept learning from step 20


def test_resume_refuses_another_game(tmp_path):
    train(TrainConfig(num_envs=1, rollout_steps=5, total_frames=5, checkpoint_every=5, run_dir=str(tmp_path), progress=False))
    with pytest.raises(EngineError, match="holds a lstm run on Pong-v4"):
        train(TrainConfig(env_id="Breakout-v4", num_envs=1, rollout_steps=5, total_frames=10, checkpoint_every=5, run_dir=str(tmp_path), progress=False))
