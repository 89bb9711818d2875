"""PPO trainer (``python -m engine.train``): CleanRL's ppo_atari_lstm update, exact resume, CleanRL-loadable files.

A resumed run continues with exactly the agent, optimizer, counters and RNG states that were saved (checked at
the first update of the resumed run); the environments are re-created from recorded seeds (they cannot be saved).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import load_policy
from engine.core.errors import EngineError
from engine.training import ppo
from engine.training.ppo import PPOConfig, make_agent, train_ppo, unroll
from tests.cleanrl_scripts import PPOLSTMAgent, fake_envs
from tests.conftest import assert_float32_close, float32_rounding


def _tiny(run_dir, **overrides) -> PPOConfig:
    settings = dict(
        num_envs=2,
        num_steps=8,
        num_minibatches=2,
        update_epochs=2,
        total_frames=2 * 64,
        checkpoint_every=64,
        resume_every=1,
        run_dir=str(run_dir),
        progress=False,
        tensorboard=False,
        target_return=None,
        threads=1,
    )
    return PPOConfig(**{**settings, **overrides})


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_unroll_equals_cleanrls_step_by_step_lstm():
    """The segment-wise LSTM equals CleanRL's get_states loop (float64, resets inside the sequence)."""
    torch.manual_seed(0)
    ours = make_agent(6).double()
    theirs = PPOLSTMAgent(fake_envs()).double()
    theirs.load_state_dict(ours.state_dict())
    T, n = 16, 3
    x = torch.randint(0, 256, (T * n, 1, 84, 84)).double()
    dones = torch.zeros(T, n, dtype=torch.float64)
    dones[0, 1] = dones[5, 0] = dones[11, 2] = dones[11, 0] = 1
    state = (torch.randn(n, 128, dtype=torch.float64), torch.randn(n, 128, dtype=torch.float64))
    logits, values, (h, c) = unroll(ours, x / 255.0, state, dones.reshape(-1))
    hidden, (h2, c2) = theirs.get_states(x, (state[0][None], state[1][None]), dones.reshape(-1))
    torch.testing.assert_close(logits, theirs.actor(hidden), rtol=0, atol=1e-12)
    torch.testing.assert_close(values, theirs.critic(hidden).squeeze(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close((h, c), (h2[0], c2[0]), rtol=0, atol=1e-12)


def test_initialisation_is_cleanrls():
    agent = make_agent(6)
    for layer, gain in [(agent.network[i], 2.0) for i in (0, 2, 4, 7)] + [(agent.actor, 0.01**2), (agent.critic, 1.0)]:
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(small, gain * torch.eye(small.shape[0]), atol=1e-4, rtol=1e-4)
        assert not layer.bias.any()
    assert all(not p.any() for name, p in agent.lstm.named_parameters() if "bias" in name)


def test_gae_matches_a_hand_computed_case():
    rewards = torch.tensor([[1.0], [0.0], [-1.0]])
    values = torch.tensor([[0.5], [0.2], [0.1]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])  # observation 2 starts a new episode: no bootstrap 1 -> 2
    next_value, next_done = torch.tensor([0.3]), torch.tensor([0.0])
    g, lam = 0.9, 0.5
    d2 = -1.0 + g * 0.3 - 0.1
    d1 = 0.0 - 0.2  # cut at the episode start
    d0 = 1.0 + g * 0.2 - 0.5
    expected = torch.tensor([[d0 + g * lam * d1], [d1], [d2]])
    torch.testing.assert_close(ppo.gae(rewards, values, dones, next_value, next_done, g, lam), expected)


def test_train_save_resume_restores_everything_and_goes_on(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = train_ppo(_tiny(run))
    resume = torch.load(run / "resume.pt", weights_only=True)
    assert (resume["update"], resume["frames"]) == (2, 128)
    assert first.name == "step_128.pt"
    _assert_same(torch.load(first, weights_only=True), resume["agent"], "checkpoint vs resume agent")
    rows = (run / "progress.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("update,frames")

    seen = []
    real_update = ppo.ppo_update

    def spy(agent, optimizer, config, *args, **kwargs):
        if not seen:  # the first update of the resumed run starts from exactly what was saved
            seen.append(
                (
                    {k: v.clone() for k, v in agent.state_dict().items()},
                    {
                        "state": {
                            k: {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in s.items()}
                            for k, s in optimizer.state_dict()["state"].items()
                        },
                        "param_groups": optimizer.state_dict()["param_groups"],
                    },
                )
            )
        return real_update(agent, optimizer, config, *args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_update", spy)
    rng_after_restore = []
    real_make_envs = ppo.make_envs

    def spy_envs(config, seed):
        rng_after_restore.append(torch.get_rng_state().clone())
        return real_make_envs(config, seed)

    monkeypatch.setattr(ppo, "make_envs", spy_envs)
    last = train_ppo(_tiny(run, total_frames=4 * 64))
    agent_at_resume, optimizer_at_resume = seen[0]
    _assert_same(agent_at_resume, resume["agent"], "agent")
    saved_optimizer = resume["optimizer"]
    _assert_same(optimizer_at_resume["state"], saved_optimizer["state"], "optimizer state")
    # the learning rate is annealed for the next update before it runs; everything else is as saved
    for ours, saved in zip(optimizer_at_resume["param_groups"], saved_optimizer["param_groups"]):
        assert {k: v for k, v in ours.items() if k != "lr"} == {k: v for k, v in saved.items() if k != "lr"}
    assert torch.equal(rng_after_restore[0], resume["rng"]["torch"])
    # and training went on
    after = torch.load(run / "resume.pt", weights_only=True)
    assert (after["update"], after["frames"]) == (4, 256) and last.name == "step_256.pt"
    assert any(not torch.equal(after["agent"][k], resume["agent"][k]) for k in resume["agent"])
    assert int(after["optimizer"]["state"][0]["step"]) == int(saved_optimizer["state"][0]["step"]) + 2 * 2 * 2
    rows = (run / "progress.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_checkpoints_load_in_the_engine_and_in_cleanrl(tmp_path):
    path = train_ppo(_tiny(tmp_path / "run", total_frames=64))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["frames"] == 64 and meta["game"] == "PongNoFrameskip-v4"
    policy = load_policy(path)
    assert type(policy).__name__ == "CleanRLPPOLSTM" and policy.pipeline == "cleanrl_atari"
    theirs = PPOLSTMAgent(fake_envs())
    theirs.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randint(0, 256, (3, 1, 84, 84)).float()
    state = (torch.zeros(1, 3, 128), torch.zeros(1, 3, 128))
    hidden, _ = theirs.get_states(x, state, torch.zeros(3))
    with torch.no_grad():
        out = policy(x / 255.0, policy.initial_state(3))
        assert_float32_close(
            out.logits, theirs.actor(hidden), float32_rounding(policy, x / 255.0, policy.initial_state(3))
        )


def test_target_return_stops_training(tmp_path, monkeypatch):
    calls = []

    def reached_at_the_second_update(returns, target):  # checked before and after each update
        calls.append(target)
        return len(calls) >= 4

    monkeypatch.setattr(ppo, "_reached", reached_at_the_second_update)
    last = train_ppo(_tiny(tmp_path / "run", target_return=0.0, total_frames=10 * 64, resume_every=5))
    resume = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    assert resume["update"] == 2 and last.name == "step_128.pt"  # saved where it stopped, not at 10 updates


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_envs=6, num_minibatches=4), "must be a multiple of num_minibatches"),
        (dict(envs="vizdoom"), "envs must be one of gymnasium, envpool"),
        (dict(gamma=1.5), "gamma must be in 0..1"),
        (dict(target_return=float("nan")), "target_return must be a finite number"),
    ],
)
def test_bad_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(EngineError, match=message):
        train_ppo(_tiny(tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_a_resume_with_other_settings_is_refused_and_with_more_frames_goes_on(tmp_path):
    run = tmp_path / "run"
    train_ppo(_tiny(run, total_frames=64))
    for change, words in (({"lr": 1e-3}, "lr 0.00025 -> 0.001"), ({"seed": 2}, "seed 1 -> 2")):
        with pytest.raises(EngineError, match=f"holds a run trained with other settings \\({words}\\)"):
            train_ppo(_tiny(run, total_frames=128, **change))
    train_ppo(_tiny(run, total_frames=128, checkpoint_every=128))  # the frames and checkpoints may change
    assert json.loads((run / "checkpoints" / "step_128.json").read_text())["frames"] == 128


def test_a_resume_file_of_another_trainer_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": 2, "frames": 1}, run / "resume.pt")
    with pytest.raises(EngineError, match="not a resume state"):
        train_ppo(_tiny(run))


def test_command_line_refuses_bad_settings_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "engine.train", "num_envs=6", f"run_dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "num_minibatches" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_envpool_back_end_trains_when_installed(tmp_path):
    pytest.importorskip(
        "envpool", reason="envpool is not installed (pip install envpool); the gymnasium back end is tested"
    )
    path = train_ppo(_tiny(tmp_path / "run", envs="envpool", total_frames=64))
    assert load_policy(path).num_actions == 6
    assert np.isfinite(np.loadtxt(tmp_path / "run" / "progress.csv", delimiter=",", skiprows=1, usecols=7))


def test_envpool_seeds_stay_in_its_int_range():
    """envpool's seed is a C++ int and environment i gets seed + i: a run's seeds, which grow as seed * 100_003 +
    update * num_envs, are folded into that range and stay distinct across environments."""
    seed = 2**31 - 1
    for num_envs in (1, 8, 64):
        folded = ppo.envpool_seed(seed * 100_003 + 5 * num_envs, num_envs)
        assert 0 <= folded and folded + num_envs - 1 < 2**31
    assert ppo.envpool_seed(12_345, 8) == 12_345  # small seeds are unchanged
