"""Environment pipelines: each library's Atari wrapper chain, rebuilt exactly, one environment at a time.

An agent sees its game through the wrappers its library trained it with, and the observation bytes differ between
them (SB3 converts to gray before resizing, CleanRL resizes before converting, gymnasium uses ALE's own grayscale),
so a rollout plays every agent in its own pipeline (``Policy.pipeline``, ``Policy.frame_stack``):

``greydanus2017``
    ``gym.make(env_id)`` as is (``Pong-v4``: ALE's random frameskip 2..4, no sticky actions); the observation is
    the 2017 preprocessing of the raw frame (:func:`engine.core.preprocessing.preprocess_bytes`), (1, 80, 80).
``sb3_atari``
    Stable-Baselines3's ``make_atari_env`` + ``VecFrameStack`` + ``VecTransposeImage``:
    ``gym.make(env_id, frameskip=1)`` -> ``NoopResetEnv(30)`` -> ``MaxAndSkipEnv(4)`` -> [``EpisodicLifeEnv``]
    -> ``FireResetEnv`` (games with FIRE) -> ``WarpFrame`` (OpenCV RGB->gray, ``cv2.resize`` to 84x84
    ``INTER_AREA``) -> [``ClipRewardEnv``] -> stack of ``frame_stack`` frames, zero-padded after every reset,
    channel first: (frame_stack, 84, 84).
``cleanrl_atari``
    CleanRL's ``ppo_atari.py`` / ``dqn_atari.py`` (``frame_stack=4``) and ``ppo_atari_lstm.py`` (``frame_stack=1``):
    ``gym.make(env_id, frameskip=1)`` -> ``NoopResetEnv(30)`` -> ``MaxAndSkipEnv(4)`` -> [``EpisodicLifeEnv``]
    -> ``FireResetEnv`` (games with FIRE) -> [``ClipRewardEnv``] -> ``ResizeObservation((84, 84))`` (``cv2.resize``
    of the RGB frame, ``INTER_AREA``) -> grayscale (OpenCV's, gymnasium 0.29.1 as CleanRL pins it; or
    ``grayscale="gymnasium"``: gymnasium >= 1.0's weighted sum) -> ``FrameStack(frame_stack)``, padded with copies
    of the reset frame: (frame_stack, 84, 84).
``gymnasium_atari``
    gymnasium's ``AtariPreprocessing`` (noop reset 30, frame skip 4 with max-pooling of ALE's grayscale screens,
    ``cv2.resize`` 84x84 ``INTER_AREA``, ``terminal_on_life_loss``) on ``gym.make(env_id, frameskip=1)``, then
    ``FrameStackObservation(frame_stack)`` (``padding_type="reset"`` by default, or ``stack_padding="zero"``).

Environment ids: for the three standard pipelines the wrappers skip frames themselves, so the ALE environment is
always made with ``frameskip=1``: ``BreakoutNoFrameskip-v4`` (the libraries' usual id: no sticky actions) or
``ALE/Breakout-v5`` (sticky actions, ``repeat_action_probability=0.25``, unless overridden).

Training-only wrappers are options, and off by default (:data:`ENGINE_DEFAULTS`): a saliency rollout plays full
games with the game's own score. ``episodic_life`` (SB3's and CleanRL's default: on) ends an episode at every lost
life: the rollout records an episode end there, the agent's recurrent state and frame stack restart, and the next
"reset" continues the same game (SB3/CleanRL: a NOOP step then FIRE; gymnasium: a real reset, as its wrapper does).
``clip_rewards`` (SB3's and CleanRL's default: on) records rewards clipped to their sign. :func:`library_defaults`
gives the options of each library's training environment, e.g. ``rollout(agent, env_id, n,
**library_defaults("sb3_atari"))`` plays exactly the environment an SB3 agent was trained in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple, cast

import gymnasium as gym
import numpy as np

from ..core.errors import UnknownEnvironmentError
from ..core.settings import FRAME_SHAPE, PIPELINES  # no torch here: environment workers import this module
from .wrappers import (
    GRAYSCALES,
    STACK_PADDINGS,
    AtariPreprocessing,
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    FrameStacker,
    MaxAndSkipEnv,
    NoopResetEnv,
    ResizeGrayFrame,
    WarpFrame,
    ale_env,
)

_ENV_OPTIONS = dict(repeat_action_probability=None, full_action_space=False)
_SKIP_OPTIONS = dict(noop_max=30, frame_skip=4, screen_size=84)

# Every option a pipeline takes, with the engine's default (full games, unclipped rewards).
ENGINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "greydanus2017": dict(_ENV_OPTIONS),
    "sb3_atari": dict(_ENV_OPTIONS, **_SKIP_OPTIONS, episodic_life=False, fire_reset=True, clip_rewards=False),
    "cleanrl_atari": dict(
        _ENV_OPTIONS, **_SKIP_OPTIONS, episodic_life=False, fire_reset=True, clip_rewards=False, grayscale="cv2"
    ),
    "gymnasium_atari": dict(_ENV_OPTIONS, **_SKIP_OPTIONS, episodic_life=False, stack_padding="reset"),
}
# Where a library's training environment differs from the engine's defaults.
_LIBRARY_CHANGES: dict[str, dict[str, Any]] = {
    "greydanus2017": {},
    "sb3_atari": dict(episodic_life=True, clip_rewards=True),
    "cleanrl_atari": dict(episodic_life=True, clip_rewards=True),
    "gymnasium_atari": {},  # AtariPreprocessing's terminal_on_life_loss defaults to False
}
_STACK_PADDING = {"sb3_atari": "zero", "cleanrl_atari": "reset"}  # fixed by the library


def quiet_emulator() -> None:
    """Keep the Arcade Learning Environment's banner off stderr (its warnings and errors still show): in the main
    process and in each environment worker, so that a refusal or Ctrl-C stays one line."""
    try:
        import ale_py

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    except (ImportError, AttributeError):
        pass


def library_defaults(pipeline: str) -> dict[str, Any]:
    """The options that give ``pipeline`` exactly as its library trains with it (e.g. ``episodic_life=True,
    clip_rewards=True`` for ``sb3_atari`` and ``cleanrl_atari``)."""
    _check_name(pipeline)
    return dict(ENGINE_DEFAULTS[pipeline], **_LIBRARY_CHANGES[pipeline])


def _check_name(pipeline: str) -> None:
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown environment pipeline {pipeline!r}: known are {', '.join(PIPELINES)}")


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline and every setting it was built with (JSON-ready through :meth:`to_dict`)."""

    name: str
    env_id: str
    frame_stack: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        return cls(data["name"], data["env_id"], int(data["frame_stack"]), dict(data.get("options", {})))


def resolve_options(pipeline: str, **options) -> dict[str, Any]:
    """``options`` checked against what ``pipeline`` takes, completed with :data:`ENGINE_DEFAULTS`."""
    _check_name(pipeline)
    known = ENGINE_DEFAULTS[pipeline]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"the {pipeline} pipeline takes no option {', '.join(map(repr, unknown))}: its options are "
            f"{', '.join(sorted(known))}"
        )
    resolved = dict(known, **options)
    for name in ("full_action_space", "episodic_life", "fire_reset", "clip_rewards"):
        if name in resolved:
            if not isinstance(resolved[name], bool | np.bool_):  # "no" would switch it on
                raise ValueError(f"{name} must be True or False, got {resolved[name]!r}")
            resolved[name] = bool(resolved[name])
    rap = resolved["repeat_action_probability"]
    if rap is not None and not (isinstance(rap, (int, float)) and not isinstance(rap, bool) and 0 <= rap <= 1):
        raise ValueError(f"repeat_action_probability must be in [0, 1] or None (the id's default), got {rap!r}")
    for name in ("noop_max", "frame_skip", "screen_size"):
        if name in resolved:
            value = resolved[name]
            least = 0 if name == "noop_max" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if "grayscale" in resolved and resolved["grayscale"] not in GRAYSCALES:
        raise ValueError(f"grayscale must be one of {GRAYSCALES}, got {resolved['grayscale']!r}")
    if "stack_padding" in resolved and resolved["stack_padding"] not in STACK_PADDINGS:
        raise ValueError(f"stack_padding must be one of {STACK_PADDINGS}, got {resolved['stack_padding']!r}")
    return resolved


def make_env(env_id: str, seed: int | None = None, first_seed: int | None = None, **kwargs) -> gym.Env:
    """A gymnasium ALE environment by id (``Pong-v4``, ``ALE/Breakout-v5``, ...) with RGB observations;
    ``kwargs`` go to ``gym.make`` (``frameskip``, ``repeat_action_probability``, ``full_action_space``).
    ``seed`` seeds the action space; ``first_seed``: the seed of the environment's first reset, which then loads
    no ROM again (:class:`engine.env.ale.OnceLoadedAtariEnv`; the same episode as
    ``gym.make(env_id).reset(seed=first_seed)``).
    Unknown ids are a clear :class:`UnknownEnvironmentError`, and so is gymnasium's ``module:EnvId`` form, which
    would import ``module`` (from the working directory, say) before anything is checked: an id is data, never code."""
    import ale_py

    if not isinstance(env_id, str) or ":" in env_id:
        raise UnknownEnvironmentError(
            f"environment id {env_id!r} is not a plain ALE id: the 'module:EnvId' form would import a Python module; "
            "use an id such as 'Pong-v4', 'BreakoutNoFrameskip-v4' or 'ALE/SpaceInvaders-v5'"
        )
    gym.register_envs(ale_py)
    try:
        made: str | gym.envs.registration.EnvSpec = env_id
        if first_seed is not None and env_id in gym.registry and gym.spec(env_id).entry_point == "ale_py.env:AtariEnv":
            from .ale import ENTRY_POINT

            made = replace(gym.spec(env_id), entry_point=ENTRY_POINT)
            kwargs = dict(kwargs, first_seed=first_seed)
        env = gym.make(made, **kwargs)
    except (gym.error.Error, ValueError, TypeError) as exc:
        import difflib

        ids = {k.lower(): k for k in gym.registry if isinstance(k, str)}  # "pong-v4" is close to "Pong-v4"
        close = [ids[k] for k in difflib.get_close_matches(env_id.lower(), list(ids), n=3, cutoff=0.75)]
        raise UnknownEnvironmentError(
            f"unknown environment id {env_id!r} ({type(exc).__name__}: {exc}). "
            + (f"Did you mean {', '.join(map(repr, close))}? " if close else "")
            + "Use a gymnasium ALE id such as 'Pong-v4', 'BreakoutNoFrameskip-v4' or 'ALE/SpaceInvaders-v5'"
        ) from exc
    if env.observation_space.shape != FRAME_SHAPE:
        env.close()
        raise UnknownEnvironmentError(
            f"{env_id!r} gives observations of shape {env.observation_space.shape}, not RGB frames {FRAME_SHAPE}: "
            "use an ALE id with the default obs_type='rgb'"
        )
    if seed is not None:
        env.action_space.seed(seed)
    return env


class PipelineStep(NamedTuple):
    """What a pipeline gives after a reset or a step.

    ``observation``: the agent's observation, uint8 (C, H, W); ``frame``: the RGB frame (210, 160, 3) uint8 the
    last observation channel was made from (the max-pooled frame where frames are pooled; the raw frame for the
    2017 pipeline); ``reward`` (as the pipeline reports it: clipped with ``clip_rewards``), ``terminated``,
    ``truncated``, ``info``. After a reset the reward is 0 and both flags are false.
    """

    observation: np.ndarray
    frame: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    info: dict


class AtariPipeline:
    """One environment seen through one library's wrapper chain. Build it with :func:`make_pipeline`.

    Attributes:
        spec: the pipeline's name, env id, frame stack and resolved options.
        env: the wrapped gymnasium environment (frames before stacking).
        action_names: ``env.unwrapped.get_action_meanings()`` (``NOOP``, ``FIRE``, ...).
        observation_shape: (C, H, W) of the observations.
    """

    def __init__(self, spec: PipelineSpec, env: gym.Env, frame_source, stacker: FrameStacker | None):
        self.spec, self.env, self._frame_source, self._stacker = spec, env, frame_source, stacker
        self.action_names: tuple[str, ...] = tuple(ale_env(env).get_action_meanings())
        self.observation_shape = _observation_shape(spec.name, spec.frame_stack, spec.options)

    @property
    def num_actions(self) -> int:
        return int(cast(gym.spaces.Discrete, self.env.action_space).n)

    @property
    def observes_raw_frames(self) -> bool:
        """Whether the observation is computed from the raw frame alone (the 2017 pipeline), so that a
        :class:`PipelineBatch` computes it for all its environments in one call."""
        return self._stacker is None

    def _observe(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._stacker is None:  # the 2017 pipeline: the raw frame and its preprocessing
            from ..core.preprocessing import preprocess_bytes

            frame = np.asarray(obs)
            return preprocess_bytes(frame[None]).numpy(), frame
        return obs, np.array(self._frame_source.frame, copy=True)

    def _restart(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        """The reset before the observation is made: the (stacked) frame and the info."""
        obs, info = self.env.reset(seed=seed)
        if self._stacker is not None:
            obs = self._stacker.reset(obs)
        return obs, info

    def _advance(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """The step before the observation is made."""
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        if self._stacker is not None:
            obs = self._stacker.step(obs)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def reset(self, seed: int | None = None) -> PipelineStep:
        """Start an episode (seeded: the emulator, its sticky actions and the noop count; unseeded: the RNGs
        continue). With ``episodic_life`` (SB3/CleanRL) a reset after a lost life continues the same game."""
        obs, info = self._restart(seed)
        observation, frame = self._observe(obs)
        return PipelineStep(observation, frame, 0.0, False, False, info)

    def step(self, action: int) -> PipelineStep:
        obs, reward, terminated, truncated, info = self._advance(action)
        observation, frame = self._observe(obs)
        return PipelineStep(observation, frame, reward, terminated, truncated, info)

    def close(self) -> None:
        self.env.close()


class BatchStep(NamedTuple):
    """What a :class:`PipelineBatch` gives after a step of some of its environments (lists in the order of the
    indices stepped): the next ``observations`` and ``frames`` (after a reset where the episode ended), the
    ``rewards`` and ``dones`` (terminated or truncated) of the step."""

    observations: list[np.ndarray]
    frames: list[np.ndarray]
    rewards: list[float]
    dones: list[bool]


class PipelineBatch:
    """Several pipelines of one spec stepped together, each its own game (a Python list of environments: the
    emulator steps one game at a time anyway). A step ends with a reset of every environment whose episode
    ended in it (same-step reset: no step of any game is spent on a reset), so each environment's sequence is
    exactly the one its :class:`AtariPipeline` gives played alone. The 2017 preprocessing runs once over the
    frames of all the environments stepped (:func:`engine.core.preprocessing.preprocess_bytes` computes each
    frame on its own, so its bytes do not depend on the batch).
    """

    def __init__(self, pipelines: list[AtariPipeline]):
        if not pipelines:
            raise ValueError("a PipelineBatch needs at least one pipeline")
        if any(p.spec != pipelines[0].spec for p in pipelines):
            raise ValueError("the pipelines of a PipelineBatch must share one spec")
        self.pipelines = pipelines

    def __len__(self) -> int:
        return len(self.pipelines)

    def _observe(self, indices: Sequence[int], raw: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if self.pipelines[0].observes_raw_frames:
            from ..core.preprocessing import preprocess_bytes

            frames = [np.asarray(obs) for obs in raw]
            observations = preprocess_bytes(np.stack(frames)).numpy()[:, None]
            return list(observations), frames
        pairs = [self.pipelines[i]._observe(obs) for i, obs in zip(indices, raw)]
        return [o for o, _ in pairs], [f for _, f in pairs]

    def reset(self, seeds: Sequence[int | None]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Reset every environment (``seeds[i]`` for environment i, as :meth:`AtariPipeline.reset`): the
        observations and frames."""
        if len(seeds) != len(self.pipelines):
            raise ValueError(f"{len(seeds)} seeds for {len(self.pipelines)} environments")
        raw = [p._restart(seed)[0] for p, seed in zip(self.pipelines, seeds)]
        return self._observe(range(len(self.pipelines)), raw)

    def step(self, indices: Sequence[int], actions: Sequence[int]) -> BatchStep:
        """Step environment ``indices[k]`` with ``actions[k]``, resetting (unseeded) those whose episode ended."""
        raw, rewards, dones = [], [], []
        for i, action in zip(indices, actions):
            pipeline = self.pipelines[i]
            obs, reward, terminated, truncated, _ = pipeline._advance(action)
            done = terminated or truncated
            if done:
                obs, _ = pipeline._restart()
            raw.append(obs)
            rewards.append(reward)
            dones.append(done)
        observations, frames = self._observe(indices, raw)
        return BatchStep(observations, frames, rewards, dones)

    def close(self) -> None:
        for pipeline in self.pipelines:
            pipeline.close()


def _observation_shape(name: str, frame_stack: int, options: dict[str, Any]) -> tuple[int, int, int]:
    if name == "greydanus2017":
        return (1, 80, 80)
    size = options["screen_size"]
    return (frame_stack, size, size)


def _frame_stack(name: str, frame_stack: int | None) -> int:
    """``frame_stack`` checked for pipeline ``name`` (None: 1 for the 2017 pipeline, 4 for the others)."""
    if frame_stack is None:
        frame_stack = 1 if name == "greydanus2017" else 4
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
        raise ValueError(f"frame_stack must be a positive integer, got {frame_stack!r}")
    if name == "greydanus2017" and frame_stack != 1:
        raise ValueError(f"the greydanus2017 pipeline sees one frame (frame_stack=1), got frame_stack={frame_stack}")
    return frame_stack


def pipeline_observation_shape(name: str, frame_stack: int | None = None, **options) -> tuple[int, int, int]:
    """The (C, H, W) observations that :func:`make_pipeline` with these arguments would make, without making it
    (no emulator is started): a job checks its agent against them before anything is played. Raises as
    :func:`make_pipeline` does for a bad name, option or frame stack."""
    options = resolve_options(name, **options)
    return _observation_shape(name, _frame_stack(name, frame_stack), options)


MAX_SEED = 2**63 - 1  # the emulator's seeding and gymnasium's take non-negative 64-bit integers


def check_seed(seed: object, games: int = 1) -> int:
    """``seed`` as a Python int (a numpy integer too), or a ValueError naming it: the seeds of ``games`` games,
    ``seed`` to ``seed + games - 1``, must lie in 0..2**63-1."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED - (games - 1):
        last = f" (games seeded {seed}..{int(seed) + games - 1})" if games > 1 else ""
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}{last}")
    return int(seed)


def make_pipeline(
    name: str, env_id: str, frame_stack: int | None = None, *, first_seed: int | None = None, **options
) -> AtariPipeline:
    """Build environment pipeline ``name`` (one of :data:`engine.core.policy.PIPELINES`) on ``env_id``.

    Args:
        name: ``greydanus2017``, ``sb3_atari``, ``cleanrl_atari`` or ``gymnasium_atari`` (see the module's doc
            for each wrapper chain).
        env_id: a gymnasium ALE id (``BreakoutNoFrameskip-v4``, ``ALE/Breakout-v5``, ``Pong-v4`` for the 2017
            agents).
        frame_stack: frames stacked along C (``Policy.frame_stack``): 1 for the 2017 pipeline; default 4 for
            the others.
        first_seed: the seed of the pipeline's first reset, if known: the emulator then loads its ROM once, not
            twice (:func:`make_env`).
        options (keyword only; defaults :data:`ENGINE_DEFAULTS`, the libraries' training values
            :func:`library_defaults`):
            ``repeat_action_probability`` (ALE's sticky actions; None: the id's default, 0.25 for v5, 0 for v4),
            ``full_action_space`` (all 18 actions), ``noop_max`` (30), ``frame_skip`` (4), ``screen_size`` (84),
            ``episodic_life`` (False; the libraries train with True), ``fire_reset`` (SB3/CleanRL: press FIRE on
            reset in games that have it; True as they do), ``clip_rewards`` (False; SB3/CleanRL train with True),
            ``grayscale`` (CleanRL: ``"cv2"``, gymnasium 0.29.1 as CleanRL pins it, or ``"gymnasium"``),
            ``stack_padding`` (gymnasium: ``"reset"``, FrameStackObservation's default, or ``"zero"``).
    """
    options = resolve_options(name, **options)
    frame_stack = _frame_stack(name, frame_stack)
    if first_seed is not None:
        first_seed = check_seed(first_seed)
    spec = PipelineSpec(name, env_id, frame_stack, options)
    make_kwargs: dict[str, Any] = {}
    if options["repeat_action_probability"] is not None:
        make_kwargs["repeat_action_probability"] = float(options["repeat_action_probability"])
    if options["full_action_space"]:
        make_kwargs["full_action_space"] = True
    if name == "greydanus2017":
        env = make_env(env_id, first_seed=first_seed, **make_kwargs)
        return AtariPipeline(spec, env, None, None)
    env = make_env(env_id, frameskip=1, first_seed=first_seed, **make_kwargs)
    try:
        if name == "gymnasium_atari":
            env = AtariPreprocessing(
                env,
                noop_max=options["noop_max"],
                frame_skip=options["frame_skip"],
                screen_size=options["screen_size"],
                terminal_on_life_loss=options["episodic_life"],
            )
            return AtariPipeline(spec, env, env, FrameStacker(frame_stack, options["stack_padding"]))
        if options["noop_max"] > 0:
            env = NoopResetEnv(env, noop_max=options["noop_max"])
        if options["frame_skip"] > 1:
            env = MaxAndSkipEnv(env, skip=options["frame_skip"])
        if options["episodic_life"]:
            env = EpisodicLifeEnv(env)
        if options["fire_reset"] and "FIRE" in ale_env(env).get_action_meanings():
            env = FireResetEnv(env)
        size = options["screen_size"]
        warp: WarpFrame | ResizeGrayFrame
        if name == "sb3_atari":
            env = warp = WarpFrame(env, width=size, height=size)
            if options["clip_rewards"]:
                env = ClipRewardEnv(env)
        else:  # cleanrl_atari: rewards are clipped before the resize and grayscale, which leaves the frames alone
            if options["clip_rewards"]:
                env = ClipRewardEnv(env)
            env = warp = ResizeGrayFrame(env, width=size, height=size, grayscale=options["grayscale"])
        return AtariPipeline(spec, env, warp, FrameStacker(frame_stack, _STACK_PADDING[name]))
    except BaseException:
        env.close()
        raise


def pipeline_for(policy, env_id: str, **options) -> AtariPipeline:
    """The pipeline ``policy`` was trained in (``policy.pipeline``, ``policy.frame_stack``) on ``env_id``."""
    return make_pipeline(policy.pipeline, env_id, frame_stack=policy.frame_stack, **options)
