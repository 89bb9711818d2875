"""The engine's environment pipelines give the libraries' own observation bytes.

For the same env id, seed and action sequence, every observation (and reward and episode end) of
``engine.env.pipelines`` equals, byte for byte, the one the library's own environment gives:

- SB3: ``make_atari_env`` + ``VecFrameStack(n_stack=4)`` + ``VecTransposeImage`` (its vec env resets itself after
  an episode end and returns the reset observation; the engine's pipeline is reset by hand at the same step);
- CleanRL: the ``make_env`` thunk of ``ppo_atari.py`` / ``dqn_atari.py`` (4 frames) and ``ppo_atari_lstm.py``
  (1 frame), built here as the scripts build it: SB3's atari wrappers (CleanRL's ``cleanrl_utils.atari_wrappers``
  is a copy of them), then gymnasium 0.29.1's ``ResizeObservation``, ``GrayScaleObservation`` and ``FrameStack``
  (CleanRL pins gymnasium 0.29.1; the three are copied below from its source, tag v0.29.1, since gymnasium 1.x
  renamed and changed them), and the same chain on gymnasium 1.x's wrappers (``grayscale="gymnasium"``);
- gymnasium: ``AtariPreprocessing`` + ``FrameStackObservation(4)``.

Sticky actions are off (``*NoFrameskip-v4``) except in the seeded ``ALE/*-v5`` cases (ALE's own sticky actions,
0.25). Episodes end inside every run (lives lost with ``episodic_life``, whole games of Breakout otherwise), so the
resets are compared too.
"""

from __future__ import annotations

from collections import deque

import ale_py
import gymnasium as gym
import numpy as np
import pytest

from engine.env.pipelines import ENGINE_DEFAULTS, PipelineSpec, library_defaults, make_pipeline

cv2 = pytest.importorskip("cv2")
sb3_wrappers = pytest.importorskip("stable_baselines3.common.atari_wrappers")
from stable_baselines3.common.env_util import make_atari_env  # noqa: E402
from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage  # noqa: E402

gym.register_envs(ale_py)


# --- the references ----------------------------------------------------------------------------------------------


class SB3Reference:
    """SB3's own Atari environment: one env, stacked and transposed as its algorithms see it."""

    def __init__(self, env_id, seed, wrapper_kwargs=None, env_kwargs=None):
        self.venv = VecTransposeImage(
            VecFrameStack(
                make_atari_env(env_id, n_envs=1, seed=seed, wrapper_kwargs=wrapper_kwargs, env_kwargs=env_kwargs),
                n_stack=4,
            )
        )

    def reset(self):
        return self.venv.reset()[0]

    def step(self, action):
        """(observation after the step, or after the automatic reset at an episode end; reward; done)."""
        obs, rewards, dones, _ = self.venv.step(np.array([action]))
        return obs[0], float(rewards[0]), bool(dones[0])

    def close(self):
        self.venv.close()


class GymReference:
    """A single gymnasium env reset by hand after every episode end (the same-step autoreset of gymnasium 0.29's
    SyncVectorEnv, which CleanRL's scripts use); the first reset is seeded."""

    def __init__(self, env, seed):
        self.env, self.seed = env, seed

    def reset(self):
        return np.asarray(self.env.reset(seed=self.seed)[0])

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(action)
        done = bool(terminated or truncated)
        if done:
            obs = self.env.reset()[0]
        return np.asarray(obs), float(reward), done

    def close(self):
        self.env.close()


# gymnasium 0.29.1 (gymnasium/wrappers/{resize_observation,gray_scale_observation,frame_stack}.py at tag v0.29.1),
# the versions CleanRL's scripts run with: observation code verbatim, constructors reduced to what they set.


class ResizeObservation0291(gym.ObservationWrapper):
    def __init__(self, env, shape):
        super().__init__(env)
        self.shape = tuple(shape)
        obs_shape = self.shape + env.observation_space.shape[2:]
        self.observation_space = gym.spaces.Box(low=0, high=255, shape=obs_shape, dtype=np.uint8)

    def observation(self, observation):
        observation = cv2.resize(observation, self.shape[::-1], interpolation=cv2.INTER_AREA)
        return observation.reshape(self.observation_space.shape)


class GrayScaleObservation0291(gym.ObservationWrapper):
    def __init__(self, env, keep_dim=False):
        super().__init__(env)
        self.keep_dim = keep_dim
        self.observation_space = gym.spaces.Box(low=0, high=255, shape=env.observation_space.shape[:2], dtype=np.uint8)

    def observation(self, observation):
        observation = cv2.cvtColor(observation, cv2.COLOR_RGB2GRAY)
        if self.keep_dim:
            observation = np.expand_dims(observation, -1)
        return observation


class FrameStack0291(gym.ObservationWrapper):
    def __init__(self, env, num_stack):
        super().__init__(env)
        self.num_stack = num_stack
        self.frames = deque(maxlen=num_stack)

    def observation(self, observation):
        return np.stack(list(self.frames))  # LazyFrames(list(self.frames)) as an array: (num_stack, H, W)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(observation)
        return self.observation(None), reward, terminated, truncated, info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        [self.frames.append(obs) for _ in range(self.num_stack)]
        return self.observation(None), info


def cleanrl_env(env_id, frame_stack, episodic_life=True, clip_rewards=True, gymnasium1=False, **make_kwargs):
    """The ``make_env`` thunk of CleanRL's ppo_atari.py / dqn_atari.py / ppo_atari_lstm.py (training:
    ``episodic_life`` and ``clip_rewards`` on, as the scripts have them), on gymnasium 0.29.1's wrappers or, with
    ``gymnasium1``, gymnasium 1.x's renamed ones. The scripts call ``gym.make(env_id)``; ``make_kwargs``
    (``frameskip=1`` for a v5 id, which would skip 4 frames itself under MaxAndSkipEnv's 4) go to it."""
    env = gym.make(env_id, **make_kwargs)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = sb3_wrappers.NoopResetEnv(env, noop_max=30)
    env = sb3_wrappers.MaxAndSkipEnv(env, skip=4)
    if episodic_life:
        env = sb3_wrappers.EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = sb3_wrappers.FireResetEnv(env)
    if clip_rewards:
        env = sb3_wrappers.ClipRewardEnv(env)
    if gymnasium1:
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayscaleObservation(env)
        return gym.wrappers.FrameStackObservation(env, frame_stack)
    env = ResizeObservation0291(env, (84, 84))
    env = GrayScaleObservation0291(env)
    return FrameStack0291(env, frame_stack)


def gymnasium_env(env_id, terminal_on_life_loss=False, padding_type="reset", grayscale_obs=True, **make_kwargs):
    env = gym.make(env_id, frameskip=1, **make_kwargs)
    env = gym.wrappers.AtariPreprocessing(env, terminal_on_life_loss=terminal_on_life_loss, grayscale_obs=grayscale_obs)
    return gym.wrappers.FrameStackObservation(env, 4, padding_type=padding_type)


# --- the comparison ----------------------------------------------------------------------------------------------


def compare(pipeline, reference, steps, seed):
    """Play the same seeded random actions in both; every observation, reward and episode end must be equal.
    Returns the engine's observations (steps + 1) and frames, and the number of episode ends."""
    rng = np.random.default_rng(seed)
    try:
        ours = pipeline.reset(seed=seed)
        theirs = reference.reset()
        assert ours.observation.dtype == np.uint8 and ours.observation.shape == pipeline.observation_shape
        assert ours.frame.shape == (210, 160, 3) and ours.frame.dtype == np.uint8
        assert np.array_equal(ours.observation, theirs), "the reset observations differ"
        observations, frames, ends = [ours.observation], [ours.frame], 0
        for t in range(steps):
            action = int(rng.integers(pipeline.num_actions))
            ours = pipeline.step(action)
            theirs, reward, done = reference.step(action)
            assert (ours.terminated or ours.truncated) == done, f"step {t}: episode ends differ"
            assert ours.reward == reward, f"step {t}: rewards differ ({ours.reward} vs {reward})"
            if done:
                ends += 1
                ours = pipeline.reset()
            assert np.array_equal(ours.observation, theirs), f"step {t}: observations differ"
            observations.append(ours.observation)
            frames.append(ours.frame)
        return np.stack(observations), np.stack(frames), ends
    finally:
        pipeline.close()
        reference.close()


SB3_CASES = {
    # id: (env_id, seed, steps, engine options, SB3 wrapper_kwargs, env_kwargs)
    "breakout-v4-training": ("BreakoutNoFrameskip-v4", 0, 300, library_defaults("sb3_atari"), {}, None),
    "breakout-v4-full-games": (
        "BreakoutNoFrameskip-v4",
        1,
        400,
        {},
        dict(terminal_on_life_loss=False, clip_reward=False),
        None,
    ),
    "breakout-v5-sticky": (
        "ALE/Breakout-v5",
        2,
        400,
        {},
        dict(terminal_on_life_loss=False, clip_reward=False),
        dict(frameskip=1),
    ),
    "spaceinvaders-v4-training": ("SpaceInvadersNoFrameskip-v4", 3, 200, library_defaults("sb3_atari"), {}, None),
}


@pytest.mark.parametrize("case", SB3_CASES)
def test_sb3_pipeline_equals_sb3_atari_env(case):
    env_id, seed, steps, options, wrapper_kwargs, env_kwargs = SB3_CASES[case]
    pipeline = make_pipeline("sb3_atari", env_id, 4, **options)
    observations, frames, ends = compare(pipeline, SB3Reference(env_id, seed, wrapper_kwargs, env_kwargs), steps, seed)
    assert ends >= 1  # an episode end and SB3's automatic reset were compared
    assert observations.shape == (steps + 1, 4, 84, 84)
    # the recorded RGB frame is the one the last stacked frame was made from (SB3's WarpFrame of it)
    for t in range(0, steps + 1, 37):
        gray = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY)
        assert np.array_equal(cv2.resize(gray, (84, 84), interpolation=cv2.INTER_AREA), observations[t, -1])


CLEANRL_CASES = {
    # id: (env_id, seed, steps, frame_stack, training wrappers on, gymnasium 1.x wrappers)
    "ppo_atari": ("BreakoutNoFrameskip-v4", 4, 300, 4, True, False),
    "ppo_atari_lstm": ("BreakoutNoFrameskip-v4", 5, 300, 1, True, False),
    "full-games": ("BreakoutNoFrameskip-v4", 6, 400, 4, False, False),
    "gymnasium1-wrappers": ("BreakoutNoFrameskip-v4", 7, 300, 4, True, True),
    "v5-sticky": ("ALE/Breakout-v5", 8, 300, 4, True, False),
}


@pytest.mark.parametrize("case", CLEANRL_CASES)
def test_cleanrl_pipeline_equals_cleanrl_scripts_env(case):
    env_id, seed, steps, frame_stack, training, gymnasium1 = CLEANRL_CASES[case]
    options = library_defaults("cleanrl_atari") if training else {}
    if gymnasium1:
        options["grayscale"] = "gymnasium"
    pipeline = make_pipeline("cleanrl_atari", env_id, frame_stack, **options)
    make_kwargs = dict(frameskip=1) if env_id.startswith("ALE/") else {}
    reference_env = cleanrl_env(env_id, frame_stack, training, training, gymnasium1, **make_kwargs)
    observations, frames, ends = compare(pipeline, GymReference(reference_env, seed), steps, seed)
    assert ends >= 1 and observations.shape == (steps + 1, frame_stack, 84, 84)
    if not gymnasium1:  # the last stacked frame is CleanRL's resize-then-gray of the recorded RGB frame
        for t in range(0, steps + 1, 37):
            small = cv2.resize(frames[t], (84, 84), interpolation=cv2.INTER_AREA)
            assert np.array_equal(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), observations[t, -1])


GYMNASIUM_CASES = {
    # id: (env_id, seed, steps, engine options, reference kwargs)
    "breakout-v5-no-sticky": (
        "ALE/Breakout-v5",
        9,
        400,
        dict(repeat_action_probability=0.0),
        dict(repeat_action_probability=0.0),
    ),
    "breakout-v5-sticky-life-loss": (
        "ALE/Breakout-v5",
        10,
        300,
        dict(episodic_life=True),
        dict(terminal_on_life_loss=True),
    ),
    "breakout-v4-zero-padding": (
        "BreakoutNoFrameskip-v4",
        11,
        300,
        dict(episodic_life=True, stack_padding="zero"),
        dict(terminal_on_life_loss=True, padding_type="zero"),
    ),
}


@pytest.mark.parametrize("case", GYMNASIUM_CASES)
def test_gymnasium_pipeline_equals_atari_preprocessing(case):
    env_id, seed, steps, options, reference_kwargs = GYMNASIUM_CASES[case]
    pipeline = make_pipeline("gymnasium_atari", env_id, 4, **options)
    observations, _, ends = compare(
        pipeline, GymReference(gymnasium_env(env_id, **reference_kwargs), seed), steps, seed
    )
    assert ends >= 1 and observations.shape == (steps + 1, 4, 84, 84)


def test_gymnasium_pipeline_frames_are_the_pooled_rgb_screens():
    """The RGB frame recorded with a gymnasium_atari observation pools the same two screens as the observation:
    resized, it is what AtariPreprocessing(grayscale_obs=False) gives."""
    pipeline = make_pipeline("gymnasium_atari", "ALE/Breakout-v5", 1, repeat_action_probability=0.0)
    env = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, grayscale_obs=False)
    rng = np.random.default_rng(12)
    try:
        ours, (theirs, _) = pipeline.reset(seed=12), env.reset(seed=12)
        for t in range(150):
            assert np.array_equal(cv2.resize(ours.frame, (84, 84), interpolation=cv2.INTER_AREA), theirs), t
            action = int(rng.integers(4))
            ours, (theirs, _, terminated, truncated, _) = pipeline.step(action), env.step(action)
            if terminated or truncated:
                ours, (theirs, _) = pipeline.reset(), env.reset()
    finally:
        pipeline.close()
        env.close()


def test_the_pipelines_make_different_bytes():
    """Why each agent plays in its own pipeline: the same game, seed and actions give other observations."""
    seen = {}
    for name in ("sb3_atari", "cleanrl_atari", "gymnasium_atari"):
        pipeline = make_pipeline(name, "BreakoutNoFrameskip-v4", 4)
        rng = np.random.default_rng(0)
        step = pipeline.reset(seed=0)
        for _ in range(20):
            step = pipeline.step(int(rng.integers(4)))
        seen[name] = step.observation
        pipeline.close()
    assert not np.array_equal(seen["sb3_atari"], seen["cleanrl_atari"])
    assert not np.array_equal(seen["sb3_atari"][-1], seen["gymnasium_atari"][-1])


def test_greydanus2017_pipeline_is_the_raw_game_and_its_preprocessing():
    from engine.core.preprocessing import preprocess_bytes

    pipeline = make_pipeline("greydanus2017", "Pong-v4")
    env = gym.make("Pong-v4")
    try:
        ours, (theirs, _) = pipeline.reset(seed=3), env.reset(seed=3)
        for action in [0, 2, 3, 1] * 10:
            assert np.array_equal(ours.frame, theirs)
            assert np.array_equal(ours.observation, preprocess_bytes(theirs[None]).numpy())
            assert ours.observation.shape == (1, 80, 80) == pipeline.observation_shape
            ours, (theirs, *_) = pipeline.step(action), env.step(action)
    finally:
        pipeline.close()
        env.close()


def test_options_defaults_and_errors():
    # the engine plays full games with the game's score; the libraries train with lives as episodes and clipping
    assert (
        ENGINE_DEFAULTS["sb3_atari"]["episodic_life"] is False and ENGINE_DEFAULTS["sb3_atari"]["clip_rewards"] is False
    )
    assert library_defaults("sb3_atari") == dict(ENGINE_DEFAULTS["sb3_atari"], episodic_life=True, clip_rewards=True)
    assert library_defaults("gymnasium_atari") == ENGINE_DEFAULTS["gymnasium_atari"]
    pipeline = make_pipeline("sb3_atari", "BreakoutNoFrameskip-v4", 4, full_action_space=True)
    assert len(pipeline.action_names) == 18 == pipeline.num_actions and pipeline.action_names[:2] == ("NOOP", "FIRE")
    spec = pipeline.spec
    pipeline.close()
    assert PipelineSpec.from_dict(spec.to_dict()) == spec and spec.options["full_action_space"] is True
    with pytest.raises(TypeError, match="greydanus2017 pipeline takes no option 'episodic_life'"):
        make_pipeline("greydanus2017", "Pong-v4", episodic_life=True)
    with pytest.raises(TypeError, match="no option 'grayscale'"):
        make_pipeline("sb3_atari", "PongNoFrameskip-v4", grayscale="cv2")
    with pytest.raises(ValueError, match="unknown environment pipeline 'sb4'"):
        make_pipeline("sb4", "PongNoFrameskip-v4")
    with pytest.raises(ValueError, match="repeat_action_probability"):
        make_pipeline("sb3_atari", "PongNoFrameskip-v4", repeat_action_probability=1.5)
    with pytest.raises(ValueError, match="frame_stack=1"):
        make_pipeline("greydanus2017", "Pong-v4", frame_stack=4)
    for option in ("full_action_space", "episodic_life", "fire_reset", "clip_rewards"):  # "no" would switch it on
        with pytest.raises(ValueError, match=f"{option} must be True or False, got 'no'"):
            make_pipeline("sb3_atari", "BreakoutNoFrameskip-v4", **{option: "no"})
    with pytest.raises(ValueError, match="seed must be an integer"):
        make_pipeline("sb3_atari", "BreakoutNoFrameskip-v4", first_seed=-1)
    from engine import UnknownEnvironmentError

    with pytest.raises(UnknownEnvironmentError, match="Breakoutt"):
        make_pipeline("cleanrl_atari", "BreakouttNoFrameskip-v4")
