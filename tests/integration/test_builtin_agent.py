"""The project's own LSTM Pong agent, shipped in the package: it goes through exactly the code baby-a3c's agents use."""

import json

import numpy as np
import torch

from engine import load_agent
from engine.core.perturbation import perturbation_saliency
from engine.core.preprocessing import preprocess_frames
from engine.core.reference import score_frame_np
from engine.env.rollout import rollout
from engine.policies.registry import builtin_checkpoints, builtin_names, resolve_checkpoint


def test_the_package_ships_a_pong_series_with_metadata():
    series = builtin_checkpoints("pong")
    assert 2 <= len(series) <= 6 and "builtin/pong" in builtin_names()  # a short series across training
    assert resolve_checkpoint("builtin/pong", [], allow_download=False) == series[max(series)]
    rewards = []
    for frames, path in sorted(series.items()):
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["game"] == "Pong-v4" and meta["core"] == "lstm" and meta["frames"] == frames
        assert meta["wall_seconds"] > 0 and meta["mean_episode_reward"] is not None
        assert resolve_checkpoint(f"builtin/pong@{frames}", [], allow_download=False) == path
        rewards.append(meta["mean_episode_reward"])
    assert rewards == sorted(rewards) and rewards[-1] > 0  # the series follows learning; the last one wins on average


def test_builtin_agent_loads_plays_and_is_scored_like_any_other():
    agent = load_agent(resolve_checkpoint("builtin/pong", [], allow_download=False), device="cpu")
    assert agent.core == "lstm" and agent.num_actions == 6
    played = rollout(agent, "Pong-v4", 40, seed=3, progress=False)
    assert len(played.states) == 2  # (hx, cx)
    with torch.inference_mode():
        again = agent(preprocess_frames(played.frames), played.states)
    assert torch.equal(again.logits, played.logits) and torch.equal(again.value, played.values)
    # against the loop reference in float64: this agent's value moves little under perturbation, so float32
    # cancellation in (v - v')^2 would blur the comparison
    agent64 = agent.double()
    x = preprocess_frames(played.frames[30:32], dtype=torch.float64)
    states = tuple(s[30:32].double() for s in played.states)
    maps = perturbation_saliency(agent64, x, states, density=10)
    for k in range(2):
        actor, critic = score_frame_np(agent64, x[k, 0].numpy(), tuple(s[k : k + 1] for s in states), 5, 10)
        assert np.abs(maps.actor_scores[k].numpy() - actor).max() <= 1e-9 * actor.max()
        assert np.abs(maps.critic_scores[k].numpy() - critic).max() <= 1e-9 * critic.max()
    assert maps.actor_scores.max() > 0


def test_every_shipped_agent_loads_through_the_public_loader_and_plays():
    """Each ``builtin/...`` name (every checkpoint of every series) loads with engine.load_policy and plays a short
    rollout in its own pipeline with finite outputs."""
    from engine import load_policy

    names = builtin_names()
    assert "builtin/pong" in names
    for name in names:
        path = resolve_checkpoint(name, [], allow_download=False)
        agent = load_policy(path)
        env_id = json.loads(path.with_suffix(".json").read_text())["game"]  # the game it was trained on
        played = rollout(agent, env_id, 6, seed=0)
        assert len(played) == 6 and torch.isfinite(played.logits).all() and torch.isfinite(played.values).all(), name


def test_shipped_agents_stay_small():
    from engine.policies.registry import BUILTIN_DIR

    total = sum(p.stat().st_size for p in BUILTIN_DIR.rglob("*") if p.is_file())
    assert total <= 30e6, f"the shipped agents take {total / 1e6:.1f} MB (budget 30 MB)"
    for path in BUILTIN_DIR.rglob("step_*.pt"):  # half precision: the files are the agents
        state = torch.load(path, weights_only=True)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}, path


def test_shipping_halves_a_checkpoint_and_keeps_its_outputs(tmp_path):
    import pytest

    from engine import load_policy
    from engine.core.errors import CheckpointError
    from engine.training.ppo import make_agent
    from engine.training.shipping import ship_checkpoint

    torch.manual_seed(0)
    source = tmp_path / "run" / "step_1234.pt"
    source.parent.mkdir()
    agent = make_agent(6)
    torch.save(agent.state_dict(), source)
    source.with_suffix(".json").write_text(json.dumps({"game": "PongNoFrameskip-v4", "frames": 1234}))
    shipped = ship_checkpoint(source, tmp_path / "agents" / "pong_ppo")
    assert shipped.name == "step_1234.pt" and shipped.stat().st_size < 0.55 * source.stat().st_size
    meta = json.loads(shipped.with_suffix(".json").read_text())
    assert meta["precision"] == "float16" and meta["game"] == "PongNoFrameskip-v4" and len(meta["source_sha256"]) == 64
    x = torch.rand(4, 1, 84, 84)
    with torch.no_grad():
        full, half = agent(x, agent.initial_state(4)), load_policy(shipped)(x, agent.initial_state(4))
    assert half.logits.dtype == torch.float32
    torch.testing.assert_close(half.logits, full.logits, atol=2e-3, rtol=0)
    assert not torch.equal(half.logits, full.logits)  # it really is the rounded agent
    state = agent.state_dict()
    state["actor.bias"] = torch.full_like(state["actor.bias"], 1e6)
    torch.save(state, source)
    with pytest.raises(CheckpointError, match="beyond float16's range"):
        ship_checkpoint(source, tmp_path / "other")


def test_the_package_ships_a_ppo_series_chosen_and_scored():
    """builtin/pong_ppo: CleanRL's ppo_atari_lstm network in half precision, a series along one training run whose
    most trained checkpoint is the chosen one; its metadata names the game and follows learning."""
    from engine import load_policy

    series = builtin_checkpoints("pong_ppo")
    assert 4 <= len(series) <= 6
    assert resolve_checkpoint("builtin/pong_ppo", [], allow_download=False) == series[max(series)]
    returns = []
    for frames, path in sorted(series.items()):
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["game"] == "PongNoFrameskip-v4" and meta["frames"] == frames and meta["precision"] == "float16"
        returns.append(meta["mean_return_100"])
    assert returns == sorted(returns) and returns[-1] > 10
    agent = load_policy(series[max(series)])
    assert (
        type(agent).__name__ == "CleanRLPPOLSTM"
        and agent.pipeline == "cleanrl_atari"
        and len(agent.initial_state(1)) == 2
    )


def test_the_package_ships_a_breakout_ppo_agent():
    """builtin/breakout_ppo: the same CleanRL network trained on Breakout, in half precision, with its metadata."""
    from engine import load_policy

    series = builtin_checkpoints("breakout_ppo")
    path = resolve_checkpoint("builtin/breakout_ppo", [], allow_download=False)
    assert path == series[max(series)]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["game"] == "BreakoutNoFrameskip-v4" and meta["agent"] == "cleanrl ppo_atari_lstm"
    assert meta["precision"] == "float16" and meta["frames"] == max(series) and meta["mean_return_100"] > 10
    agent = load_policy(path)
    assert type(agent).__name__ == "CleanRLPPOLSTM" and agent.pipeline == "cleanrl_atari"
    assert agent.actor.out_features == 4  # NOOP, FIRE, RIGHT, LEFT
