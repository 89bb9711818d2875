"""An environment made for its first seed loads the game's ROM once, and plays the very game of ale_py's own
environment (``engine.env.pipelines.make_env(first_seed=...)``).

ale_py loads the ROM in the constructor (randomly seeded) and again on ``reset(seed=s)``; the engine's environments
load it once, seeded with ``s``. The reference is the plain ``gym.make`` environment reset with the same seed:
every frame, observation, reward and episode end of a few hundred random actions, across resets, must be equal,
with ALE's sticky actions (``-v5``, its random generator) and the 2017 pipeline's random frameskip (``np_random``).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from ale_py.env import AtariEnv

from engine.env.pipelines import make_env, make_pipeline

CASES = [
    ("greydanus2017", "Pong-v4"),  # random frameskip 2..4 from np_random
    ("sb3_atari", "ALE/Breakout-v5"),  # sticky actions from ALE's generator
    ("cleanrl_atari", "BreakoutNoFrameskip-v4"),
    ("gymnasium_atari", "ALE/Pong-v5"),
]


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The ROM loads of ale_py's environments made from here on (by game)."""
    seen: list[str] = []
    original = AtariEnv.load_game

    def load_game(self) -> None:
        seen.append(self._game)
        original(self)

    monkeypatch.setattr(AtariEnv, "load_game", load_game)
    return seen


def _play_both(a, b, seed: int, steps: int = 300) -> int:
    """Random actions (seeded) in both pipelines: every step's outputs equal; returns the episodes ended."""
    rng = np.random.default_rng(seed)
    ended = 0
    for t in range(steps):
        action = int(rng.integers(a.num_actions))
        x, y = a.step(action), b.step(action)
        assert np.array_equal(x.frame, y.frame), f"frames differ at step {t}"
        assert np.array_equal(x.observation, y.observation), f"observations differ at step {t}"
        assert (x.reward, x.terminated, x.truncated) == (y.reward, y.terminated, y.truncated), f"step {t}"
        if x.terminated or x.truncated:
            ended += 1
            x, y = a.reset(), b.reset()
            assert np.array_equal(x.frame, y.frame), f"the reset after step {t} differs"
    return ended


@pytest.mark.parametrize("name,env_id", CASES)
def test_an_environment_made_for_its_first_seed_plays_ale_pys_game(name, env_id, loads):
    for seed in (0, 7):
        once = make_pipeline(name, env_id, first_seed=seed)
        twice = make_pipeline(name, env_id)
        try:
            loads.clear()
            first, reference = once.reset(seed=seed), twice.reset(seed=seed)
            assert len(loads) == 1, "the reset with the first seed loads no ROM; ale_py's own loads it again"
            assert np.array_equal(first.frame, reference.frame)
            assert np.array_equal(first.observation, reference.observation)
            _play_both(once, twice, seed)
            assert type(once.env.unwrapped).__name__ == "OnceLoadedAtariEnv"
        finally:
            once.close()
            twice.close()


def test_the_rom_is_loaded_once_per_environment(loads):
    env = make_env("BreakoutNoFrameskip-v4", first_seed=3)
    try:
        env.reset(seed=3)
        assert loads == ["breakout"]
        # it pickles and its spec serialises as ale_py's own environment's do (a class gymnasium imports by name)
        assert json.loads(env.spec.to_json())["entry_point"] == "engine.env.ale:OnceLoadedAtariEnv"
        copy = pickle.loads(pickle.dumps(env.unwrapped))
        copy.close()
        loads.clear()
        env.reset(seed=3)  # a later seeded reset: ale_py's own, which loads again
        assert loads == ["breakout"]
    finally:
        env.close()
    plain = make_env("BreakoutNoFrameskip-v4")
    try:
        plain.reset(seed=3)
        assert loads == ["breakout"] * 3
    finally:
        plain.close()


def test_a_first_reset_with_another_seed_is_ale_pys_own(loads):
    """The ROM loaded for seed 3 serves only a first reset with seed 3; with seed 5 it is loaded again."""
    once = make_pipeline("sb3_atari", "ALE/Breakout-v5", first_seed=3)
    twice = make_pipeline("sb3_atari", "ALE/Breakout-v5")
    try:
        loads.clear()
        a, b = once.reset(seed=5), twice.reset(seed=5)
        assert len(loads) == 2
        assert np.array_equal(a.frame, b.frame)
        _play_both(once, twice, 11, steps=150)
    finally:
        once.close()
        twice.close()
