"""Training smoke test: a few hundred frames, checkpoints in a series, resume, and the app-compatible format.

The resume state (``<run>/resume.pt``) holds tensors and plain types only and is read with
``torch.load(weights_only=True)``: a resumed run continues with exactly the agent, optimizer, counters and RNG
states that were saved, and a file holding any other pickled object is refused without running it.
"""

import copy
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import load_agent
from engine.core.errors import EngineError
from engine.policies.greydanus2017 import ActorCritic
from engine.training import a2c
from engine.training.a2c import TrainConfig, train


def _tiny(run_dir, **overrides) -> TrainConfig:
    settings = dict(
        num_envs=2,
        rollout_steps=5,
        total_frames=20,
        checkpoint_every=10,
        vector="sync",
        run_dir=str(run_dir),
        progress=False,
    )
    return TrainConfig(**{**settings, **overrides})


def _global_rng_states():
    return torch.get_rng_state().clone(), np.random.get_state(legacy=True), random.getstate()


def _assert_same_rng(a, b):
    assert torch.equal(a[0], b[0])
    kind, keys, pos, has_gauss, gauss = a[1]
    assert (kind, pos, has_gauss, gauss) == (b[1][0], b[1][2], b[1][3], b[1][4]) and np.array_equal(keys, b[1][1])
    assert a[2] == b[2]


def _assert_same_state_dict(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _assert_same_state_dict(a[key], b[key])
        elif isinstance(a[key], list):
            assert len(a[key]) == len(b[key]), key
            for x, y in zip(a[key], b[key]):
                _assert_same_state_dict(x, y) if isinstance(x, dict) else (x == y or pytest.fail(key))
        else:
            assert a[key] == b[key], key


def test_train_checkpoint_and_resume_restores_everything(tmp_path, monkeypatch):
    saved, restored = [], []
    real_save, real_restore = a2c.save_resume, a2c.restore_resume

    def spy_save(path, agent, optimizer, config, frames, next_checkpoint, returns, wall_seconds):
        saved.append(
            dict(
                agent=copy.deepcopy(agent.state_dict()),
                optimizer=copy.deepcopy(optimizer.state_dict()),
                counters=(frames, next_checkpoint, list(returns)),
                rng=_global_rng_states(),
            )
        )
        real_save(path, agent, optimizer, config, frames, next_checkpoint, returns, wall_seconds)

    def spy_restore(resume, agent, optimizer):
        frames, next_checkpoint, returns, seconds = real_restore(resume, agent, optimizer)
        restored.append(
            dict(
                agent=copy.deepcopy(agent.state_dict()),
                optimizer=copy.deepcopy(optimizer.state_dict()),
                counters=(frames, next_checkpoint, list(returns)),
                rng=_global_rng_states(),
            )
        )
        return frames, next_checkpoint, returns, seconds

    monkeypatch.setattr(a2c, "save_resume", spy_save)
    monkeypatch.setattr(a2c, "restore_resume", spy_restore)

    config = _tiny(tmp_path)
    last = train(config)
    assert last == tmp_path / "checkpoints" / "step_20.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["step_10.pt", "step_20.pt"]
    meta = json.loads((tmp_path / "checkpoints" / "step_20.json").read_text())
    assert meta["game"] == "Pong-v4" and meta["frames"] == 20 and meta["core"] == "lstm"
    agent = load_agent(last, device="cpu")  # the same loader as every other agent
    assert agent.core == "lstm" and agent.num_actions == 6
    resume = torch.load(tmp_path / "resume.pt", weights_only=True)  # tensors and plain types only
    assert resume["frames"] == 20 and resume["next_checkpoint"] == 30 and len(saved) == 2
    assert saved[-1]["optimizer"]["state"], "the optimizer has state (RMSprop's square averages) to restore"

    random.seed(123), np.random.seed(123), torch.manual_seed(123)  # whatever happens in between
    last = train(_tiny(tmp_path, total_frames=30))
    assert len(restored) == 1
    before, after = saved[1], restored[0]  # the state saved at frame 20 and the state the second run started from
    _assert_same_state_dict(before["agent"], after["agent"])
    _assert_same_state_dict(before["optimizer"], after["optimizer"])
    assert before["counters"] == after["counters"] == (20, 30, before["counters"][2])
    _assert_same_rng(before["rng"], after["rng"])
    # and it went on from there
    assert last == tmp_path / "checkpoints" / "step_30.pt"
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["frames"] == 30
    after_agent = load_agent(last, device="cpu")
    assert not torch.equal(after_agent.actor_linear.weight, agent.actor_linear.weight)  # it kept learning


def test_rng_states_round_trip_through_weights_only_file(tmp_path):
    """Every RNG (python, numpy with a cached Gaussian, torch) continues after a reload exactly as it would have."""
    agent = ActorCritic(6, core="gru", hidden_size=16)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    agent(torch.rand(2, 1, 80, 80), agent.initial_state(2)).value.sum().backward()
    optimizer.step()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    random.gauss(0, 1), np.random.standard_normal(), torch.rand(3)  # mid-stream, numpy holding a cached gaussian
    path = tmp_path / "resume.pt"
    a2c.save_resume(path, agent, optimizer, TrainConfig(core="gru", hidden_size=16), 40, 50, [1.0, -2.0], 3.5)
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(4))
    params = copy.deepcopy(agent.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())

    fresh = ActorCritic(6, core="gru", hidden_size=16)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    counters = a2c.restore_resume(a2c.load_resume(path), fresh, fresh_optimizer)
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(4))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
    assert counters[:2] == (40, 50) and list(counters[2]) == [1.0, -2.0] and counters[3] == 3.5
    _assert_same_state_dict(params, fresh.state_dict())
    _assert_same_state_dict(optimizer_state, fresh_optimizer.state_dict())


class _RunsCodeWhenUnpickled:
    """A pickled object whose unpickling would create a file: the marker that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_file_with_pickled_objects_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(
        {"format": a2c.RESUME_FORMAT, "frames": 10, "payload": _RunsCodeWhenUnpickled(marker)}, run_dir / "resume.pt"
    )
    with pytest.raises(
        EngineError, match=r"resume.pt holds a pickled \S*open: refusing to load it, because unpickling"
    ):
        train(_tiny(run_dir))
    assert not marker.exists()
    # the format of earlier versions (numpy RNG state as an array) is refused the same way
    torch.save({"numpy_rng": np.random.get_state()}, run_dir / "resume.pt")
    with pytest.raises(EngineError, match=r"holds a pickled numpy\..*refusing to load it"):
        train(_tiny(run_dir))
    torch.save({"frames": 10}, run_dir / "resume.pt")  # loads, but is not a resume state
    with pytest.raises(EngineError, match=r"not a resume state of this version .*missing or malformed: format, agent"):
        train(_tiny(run_dir))
    assert not (run_dir / "checkpoints").exists()  # refused before anything was written or started


@pytest.mark.parametrize(
    "change, words",
    [
        ({"env_id": "Breakout-v4"}, "env_id 'Pong-v4' -> 'Breakout-v4'"),
        ({"lr": 0.1}, "lr 0.0007 -> 0.1"),  # the optimizer's state would bring back its own
        ({"optimizer": "adam"}, "optimizer 'rmsprop' -> 'adam'"),  # its state would not load
        ({"seed": 2}, "seed 0 -> 2"),  # a sweep over seeds sharing a run_dir: two runs in one
    ],
)
def test_resume_refuses_other_settings_and_goes_on_with_more_frames(tmp_path, change, words):
    train(_tiny(tmp_path, num_envs=1, total_frames=5, checkpoint_every=5))
    with pytest.raises(EngineError, match=f"holds a run trained with other settings \\({re.escape(words)}\\)"):
        train(_tiny(tmp_path, num_envs=1, total_frames=10, checkpoint_every=5, **change))
    train(_tiny(tmp_path, num_envs=1, total_frames=10, checkpoint_every=5))  # more frames: it goes on
    assert (tmp_path / "checkpoints" / "step_10.pt").is_file()


def test_episodes_end_in_the_step_that_ends_them(tmp_path, monkeypatch):
    """Environments reset in the step whose episode ends: every frame trained on is a step the agent took (the
    vector env's default, the next step, would add a step whose action it ignores), and a run without a progress bar
    goes past its episode ends."""
    import gymnasium as gym

    steps = [0]

    class Counted(gym.Wrapper):
        def step(self, action):
            steps[0] += 1
            return self.env.step(action)

    made = a2c.make_preprocessed_env
    monkeypatch.setattr(a2c, "make_preprocessed_env", lambda env_id: Counted(gym.wrappers.TimeLimit(made(env_id), 3)))
    train(_tiny(tmp_path, total_frames=20, progress=False))
    assert steps[0] == 20  # 2 environments x 10 steps, 6 episodes ended


@pytest.mark.parametrize("num_envs", [1, 16, 1500])
def test_no_two_sessions_of_a_run_share_an_environment_seed(num_envs):
    """A resumed run re-creates its emulators with seeds of their own: over a run's sessions every seed is new,
    however many environments it steps."""
    config = TrainConfig(num_envs=num_envs, checkpoint_every=100, seed=7)
    seeds = [s for k in range(4) for s in a2c.session_seeds(config, frames=100 * k)]
    assert len(set(seeds)) == len(seeds) == 4 * num_envs
    assert a2c.session_seeds(config, 0)[0] == 7 and a2c.session_seeds(config, 99) == a2c.session_seeds(config, 0)


@pytest.mark.parametrize("trainer", ["a2c", "ppo"])
def test_a_checkpoint_interrupted_while_saved_is_never_left_without_its_metadata(tmp_path, monkeypatch, trainer):
    """The metadata (.json: the game, read when the checkpoint is loaded or shipped) is written before the weights:
    stopped in between, the run leaves no step_<frames>.pt without it."""
    from contextlib import contextmanager

    from engine.training import ppo

    module = a2c if trainer == "a2c" else ppo
    real = module.atomic_write

    @contextmanager
    def stopped_at_json(path, *args, **kwargs):
        if Path(path).suffix == ".json":
            raise KeyboardInterrupt("stopped while writing the metadata")
        with real(path, *args, **kwargs) as tmp:
            yield tmp

    monkeypatch.setattr(module, "atomic_write", stopped_at_json)
    if trainer == "a2c":
        agent, config = ActorCritic(6), TrainConfig(run_dir=str(tmp_path))
    else:
        agent, config = ppo.make_agent(6), ppo.PPOConfig(run_dir=str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(KeyboardInterrupt):
        module.save_checkpoint(tmp_path, agent, config, 100, [1.0], 2.0)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
    monkeypatch.setattr(module, "atomic_write", real)
    path = module.save_checkpoint(tmp_path, agent, config, 100, [1.0], 2.0)
    assert json.loads(path.with_suffix(".json").read_text())["frames"] == 100
