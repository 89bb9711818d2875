"""The project's own LSTM Pong agent, shipped in the package: it goes through exactly the code baby-a3c's agents use."""

import json

import numpy as np
import torch

from engine import load_agent
from engine.core.perturbation import perturbation_saliency
from engine.core.preprocessing import preprocess_frames
from engine.core.reference import score_frame_np
from engine.io.registry import builtin_checkpoints, builtin_names, resolve_checkpoint
from engine.env.rollout import rollout


def test_the_package_ships_a_pong_series_with_metadata():
    series = builtin_checkpoints("pong")
    assert 4 <= len(series) <= 6 and "builtin/pong" in builtin_names()  # a short series across training
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
