"""The Atari wrappers of Stable-Baselines3, CleanRL and gymnasium, re-implemented line for line.

The observation bytes an agent was trained on depend on every detail of its library's wrapper chain (the order of
grayscale and resize, OpenCV's or ALE's grayscale, where the max-pooling happens, what a reset does), so each
wrapper here repeats its library's code exactly; ``tests/integration/test_pipelines.py`` checks the result byte for byte
against the libraries themselves. The libraries are not imported (Stable-Baselines3 is an optional extra).

Sources:
    - ``NoopResetEnv``, ``FireResetEnv``, ``EpisodicLifeEnv``, ``MaxAndSkipEnv``, ``ClipRewardEnv``, ``WarpFrame``:
      ``stable_baselines3/common/atari_wrappers.py`` (SB3 2.x; MIT licence, (c) 2019-2023 Antonin Raffin, Ashley
      Hill, Anssi Kanervisto, Maximilian Ernestus, Rinu Boney, Pavan Goli and contributors). CleanRL's
      ``cleanrl_utils/atari_wrappers.py`` is a copy of the same file.
    - ``ResizeGrayFrame``: gymnasium's ``ResizeObservation`` followed by ``GrayScaleObservation`` (gymnasium
      0.29.1, which CleanRL's scripts pin: OpenCV's RGB->gray) or ``GrayscaleObservation`` (gymnasium >= 1.0:
      ``np.sum(obs * [0.2125, 0.7154, 0.0721]).astype(uint8)``).
    - ``AtariPreprocessing``: gymnasium's ``gymnasium/wrappers/atari_preprocessing.py`` (1.x), grayscale output.

Every observation wrapper that makes the agent's frame keeps the RGB frame it made it from in ``self.frame``
(the max-pooled frame where frames are pooled), so overlays are drawn on the frame the agent's last observation
channel shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

if TYPE_CHECKING:
    from ale_py import ALEInterface
    from ale_py.env import AtariEnv

GRAYSCALES = ("cv2", "gymnasium")  # OpenCV's RGB->gray (gymnasium 0.29 / SB3), gymnasium >= 1.0's weighted sum


def ale_env(env: gym.Env) -> AtariEnv:
    """The ALE environment under ``env``'s wrappers (every chain here starts from one): its action meanings and
    emulator, which gymnasium's ``Env`` type does not declare."""
    return cast("AtariEnv", env.unwrapped)


def import_cv2():
    """OpenCV, imported on first use (an optional extra), with OpenCL off as SB3's atari_wrappers sets it."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError(
            "the sb3_atari, cleanrl_atari and gymnasium_atari pipelines resize frames with OpenCV: "
            "pip install opencv-python-headless (or the package's [sb3] extra)"
        ) from exc
    cv2.ocl.setUseOpenCL(False)
    return cv2


# --- Stable-Baselines3's atari_wrappers (CleanRL's cleanrl_utils.atari_wrappers is the same file) -------------


class NoopResetEnv(gym.Wrapper):
    """On reset, take a random number (1..noop_max, from the env's own ``np_random``) of NOOP frames."""

    def __init__(self, env: gym.Env, noop_max: int = 30) -> None:
        super().__init__(env)
        self.noop_max = noop_max
        self.override_num_noops = None
        self.noop_action = 0
        if ale_env(env).get_action_meanings()[0] != "NOOP":
            raise ValueError("NoopResetEnv needs action 0 to be NOOP")

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        if self.override_num_noops is not None:
            noops = self.override_num_noops
        else:
            noops = self.unwrapped.np_random.integers(1, self.noop_max + 1)
        obs = np.zeros(0)
        info: dict = {}
        for _ in range(noops):
            obs, _, terminated, truncated, info = self.env.step(self.noop_action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


class FireResetEnv(gym.Wrapper):
    """On reset, press FIRE, then action 2 (games that wait for FIRE to start)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = ale_env(env).get_action_meanings()
        if meanings[1] != "FIRE" or len(meanings) < 3:
            raise ValueError(f"FireResetEnv needs action 1 to be FIRE and 3 actions or more, got {meanings}")

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, _ = self.env.step(1)
        if terminated or truncated:
            self.env.reset(**kwargs)
        obs, _, terminated, truncated, _ = self.env.step(2)
        if terminated or truncated:
            self.env.reset(**kwargs)
        return obs, {}


class EpisodicLifeEnv(gym.Wrapper):
    """A lost life ends the episode (``terminated``); reset then continues the game with a NOOP step, and only
    resets the emulator after a real game over."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.was_real_done = True

    def step(self, action: int):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.was_real_done = terminated or truncated
        lives = ale_env(self.env).ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.was_real_done:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = ale_env(self.env).ale.lives()
        return obs, info


class MaxAndSkipEnv(gym.Wrapper):
    """Repeat the action ``skip`` times, sum the rewards, return the max of the last two frames."""

    def __init__(self, env: gym.Env, skip: int = 4) -> None:
        super().__init__(env)
        shape = env.observation_space.shape
        assert shape is not None  # the ALE's frames are a Box of known shape
        self._obs_buffer = np.zeros((2, *shape), dtype=env.observation_space.dtype)
        self._skip = skip

    def step(self, action: int):
        total_reward = 0.0
        terminated = truncated = False
        for i in range(self._skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            done = terminated or truncated
            if i == self._skip - 2:
                self._obs_buffer[0] = obs
            if i == self._skip - 1:
                self._obs_buffer[1] = obs
            total_reward += float(reward)
            if done:
                break
        max_frame = self._obs_buffer.max(axis=0)
        return max_frame, total_reward, terminated, truncated, info


class ClipRewardEnv(gym.RewardWrapper):
    """Rewards binned to {-1, 0, +1} by their sign."""

    def reward(self, reward) -> float:
        return np.sign(float(reward))


class WarpFrame(gym.ObservationWrapper):
    """SB3's ``WarpFrame``: OpenCV RGB->gray, then ``cv2.resize`` to ``(height, width)`` with ``INTER_AREA``.

    Returns (height, width) uint8 (SB3 adds a trailing channel axis, which its frame stacking then stacks on;
    here the stacking stacks along a leading axis instead, the layout after SB3's ``VecTransposeImage``).
    """

    def __init__(self, env: gym.Env, width: int = 84, height: int = 84) -> None:
        super().__init__(env)
        self.width, self.height = width, height
        self.cv2 = import_cv2()
        self.observation_space = spaces.Box(low=0, high=255, shape=(height, width), dtype=np.uint8)
        self.frame: np.ndarray | None = None

    def observation(self, frame: np.ndarray) -> np.ndarray:
        self.frame = frame
        cv2 = self.cv2
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)


# --- CleanRL's scripts: gymnasium's ResizeObservation, then its grayscale wrapper --------------------------------


class ResizeGrayFrame(gym.ObservationWrapper):
    """gymnasium's ``ResizeObservation((height, width))`` then its grayscale wrapper, as CleanRL's Atari scripts
    chain them: ``cv2.resize`` of the RGB frame with ``INTER_AREA`` first, grayscale second.

    ``grayscale="cv2"``: ``cv2.cvtColor(RGB2GRAY)``, gymnasium 0.29.1's ``GrayScaleObservation`` (CleanRL pins
    gymnasium 0.29.1). ``grayscale="gymnasium"``: gymnasium >= 1.0's ``GrayscaleObservation``,
    ``np.sum(np.multiply(obs, [0.2125, 0.7154, 0.0721]), axis=-1).astype(np.uint8)`` (other bytes: truncated,
    other weights), for agents trained with the scripts ported to gymnasium 1.x.
    """

    def __init__(self, env: gym.Env, width: int = 84, height: int = 84, grayscale: str = "cv2") -> None:
        super().__init__(env)
        if grayscale not in GRAYSCALES:
            raise ValueError(f"grayscale must be one of {GRAYSCALES}, got {grayscale!r}")
        self.width, self.height, self.grayscale = width, height, grayscale
        self.cv2 = import_cv2()
        self.observation_space = spaces.Box(low=0, high=255, shape=(height, width), dtype=np.uint8)
        self.frame: np.ndarray | None = None

    def observation(self, frame: np.ndarray) -> np.ndarray:
        self.frame = frame
        cv2 = self.cv2
        small = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
        if self.grayscale == "cv2":
            return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        return np.sum(np.multiply(small, np.array([0.2125, 0.7154, 0.0721])), axis=-1).astype(np.uint8)


# --- gymnasium's AtariPreprocessing ------------------------------------------------------------------------------


class AtariPreprocessing(gym.Wrapper):
    """gymnasium's ``AtariPreprocessing`` with ``grayscale_obs=True`` (ALE's own grayscale screen), unscaled.

    Noop reset (``noop_max``, on the env's ``np_random``), ``frame_skip`` frames per step with the max of the last
    two grayscale screens, ``cv2.resize`` to ``screen_size`` with ``INTER_AREA``, ``terminal_on_life_loss``
    (a lost life is ``terminated``; the next reset is a real reset). Besides, it pools the RGB screens of the same
    two frames into ``self.frame`` for overlays (ALE's grayscale is a palette lookup, so the observation is not
    computed from it).
    """

    def __init__(
        self,
        env: gym.Env,
        noop_max: int = 30,
        frame_skip: int = 4,
        screen_size: int = 84,
        terminal_on_life_loss: bool = False,
    ) -> None:
        super().__init__(env)
        self.cv2 = import_cv2()
        if frame_skip <= 0:
            raise ValueError(f"frame_skip must be positive, got {frame_skip}")
        if frame_skip > 1 and getattr(env.unwrapped, "_frameskip", None) != 1:
            raise ValueError("AtariPreprocessing skips frames itself: make the ALE environment with frameskip=1")
        if noop_max < 0:
            raise ValueError(f"noop_max must be >= 0, got {noop_max}")
        if noop_max > 0 and ale_env(env).get_action_meanings()[0] != "NOOP":
            raise ValueError("noop_max > 0 needs action 0 to be NOOP")
        self.noop_max, self.frame_skip = noop_max, frame_skip
        self.screen_size = (screen_size, screen_size)
        self.terminal_on_life_loss = terminal_on_life_loss
        shape = env.observation_space.shape
        assert shape is not None  # the ALE's frames are a Box of known shape
        self.obs_buffer = [np.empty(shape[:2], dtype=np.uint8), np.empty(shape[:2], dtype=np.uint8)]
        self.rgb_buffer = [np.empty(shape, dtype=np.uint8), np.empty(shape, dtype=np.uint8)]
        self.lives = 0
        self.game_over = False
        self.observation_space = spaces.Box(low=0, high=255, shape=(screen_size, screen_size), dtype=np.uint8)
        self.frame: np.ndarray | None = None

    @property
    def ale(self) -> ALEInterface:
        return ale_env(self.env).ale

    def _grab(self, index: int) -> None:
        self.ale.getScreenGrayscale(self.obs_buffer[index])
        self.ale.getScreenRGB(self.rgb_buffer[index])

    def step(self, action):
        total_reward, terminated, truncated = 0.0, False, False
        info: dict[str, Any] = {}
        for t in range(self.frame_skip):
            _, reward, terminated, truncated, info = self.env.step(action)
            total_reward += cast(float, reward)  # the ALE's rewards are numbers
            self.game_over = terminated
            if self.terminal_on_life_loss:
                new_lives = self.ale.lives()
                terminated = terminated or new_lives < self.lives
                self.game_over = terminated
                self.lives = new_lives
            if terminated or truncated:
                break
            if t == self.frame_skip - 2:
                self._grab(1)
            elif t == self.frame_skip - 1:
                self._grab(0)
        return self._get_obs(), total_reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, reset_info = self.env.reset(seed=seed, options=options)
        noops = self.env.unwrapped.np_random.integers(1, self.noop_max + 1) if self.noop_max > 0 else 0
        for _ in range(noops):
            _, _, terminated, truncated, step_info = self.env.step(0)
            reset_info.update(step_info)
            if terminated or truncated:
                _, reset_info = self.env.reset(seed=seed, options=options)
        self.lives = self.ale.lives()
        self._grab(0)
        self.obs_buffer[1].fill(0)
        self.rgb_buffer[1].fill(0)
        return self._get_obs(), reset_info

    def _get_obs(self) -> np.ndarray:
        if self.frame_skip > 1:  # in place, as gymnasium does (a step that ends early pools with a stale buffer)
            np.maximum(self.obs_buffer[0], self.obs_buffer[1], out=self.obs_buffer[0])
            np.maximum(self.rgb_buffer[0], self.rgb_buffer[1], out=self.rgb_buffer[0])
        self.frame = self.rgb_buffer[0].copy()
        obs = self.cv2.resize(self.obs_buffer[0], self.screen_size, interpolation=self.cv2.INTER_AREA)
        return np.asarray(obs, dtype=np.uint8)


# --- frame stacking ----------------------------------------------------------------------------------------------

STACK_PADDINGS = ("zero", "reset")


class FrameStacker:
    """The last ``n`` frames (H, W) stacked along a leading axis: (n, H, W), oldest first.

    After a reset the stack holds ``n - 1`` padding frames and the reset frame: ``"zero"`` pads with zeros (SB3's
    ``VecFrameStack``, which also zeroes the stack on every episode end, then ``VecTransposeImage``'s channel-first
    layout), ``"reset"`` with copies of the reset frame (gymnasium's ``FrameStack`` (0.29) and
    ``FrameStackObservation`` (1.x, its default ``padding_type="reset"``), as CleanRL uses it).
    """

    def __init__(self, n: int, padding: str = "zero") -> None:
        if n < 1:
            raise ValueError(f"frame_stack must be >= 1, got {n}")
        if padding not in STACK_PADDINGS:
            raise ValueError(f"stack padding must be one of {STACK_PADDINGS}, got {padding!r}")
        self.n, self.padding = n, padding
        self.stack: np.ndarray | None = None

    def reset(self, frame: np.ndarray) -> np.ndarray:
        if self.padding == "zero":
            self.stack = np.zeros((self.n, *frame.shape), dtype=frame.dtype)
            self.stack[-1] = frame
        else:
            self.stack = np.repeat(frame[None], self.n, axis=0)
        return self.stack.copy()

    def step(self, frame: np.ndarray) -> np.ndarray:
        assert self.stack is not None  # reset() comes first
        self.stack = np.concatenate([self.stack[1:], frame[None]])
        return self.stack.copy()
