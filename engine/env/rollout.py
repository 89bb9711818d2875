"""Playing an agent in its own environment pipeline and recording what saliency needs.

Any :class:`engine.core.policy.Policy` plays in the pipeline it was trained with (``policy.pipeline``,
``policy.frame_stack``; :mod:`engine.env.pipelines`). Per step ``t`` a :class:`Rollout` holds the observation
the agent saw (uint8 (C, H, W)), the RGB frame its last observation channel was made from, the recurrent state
it used on that observation (the state the previous step produced, or the episode-start state after
``policy.reset_state``), the logits and value it computed, the action taken, the reward received and whether the
episode ended with that step. So ``agent(observations[t] / 255, states[t])`` reproduces ``logits[t]`` and
``values[t]`` bit for bit on the same device (for a batch-invariant policy, also in one batched call), and
``rollout[a:b]`` can be scored without replaying anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.inputs import check_policy
from ..core.policy import Policy, State, index_state, stack_states, state_to
from ..core.preprocessing import preprocess_bytes
from .pipelines import AtariPipeline, PipelineSpec, make_env, make_pipeline  # noqa: F401  (make_env: re-exported)

_PER_STEP = ("frames", "observations", "logits", "values", "actions", "rewards", "dones")


@dataclass(frozen=True)
class Rollout:
    """A recorded rollout of T steps (all tensors on the CPU, indexed by step).

    Attributes:
        frames: RGB frames (T, 210, 160, 3) uint8: the raw frame for the 2017 pipeline, else the frame the last
            observation channel was made from (max-pooled over the last two emulator frames), for overlays.
        states: the recurrent state used on each step: a tuple of (T, ...) tensors (``(hx, cx)``, ``(hx,)``,
            ``()`` for a feed-forward agent).
        logits: (T, actions); values: (T,); actions: (T,) int64; rewards: (T,) float32 (as the pipeline reports
            them: clipped only with ``clip_rewards``);
        dones: (T,) bool, True where the episode ended with that step (the next step starts from the episode-start
            state and a reset observation; with ``episodic_life``, also at every lost life).
        observations: the agent's observations (T, C, H, W) uint8 (the input is ``observations / 255``). Given
            as None for a 2017-pipeline rollout (e.g. read from an older store), they are computed from ``frames``.
        action_names: the environment's action meanings (``NOOP``, ``FIRE``, ...), indexed by action.
        pipeline: how the observations were made: ``PipelineSpec.to_dict()`` (name, env_id, frame_stack,
            options); empty for a rollout that does not say (then the 2017 pipeline).
        env_id, seed, greedy: how it was played.
    """

    frames: torch.Tensor
    states: State
    logits: torch.Tensor
    values: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    observations: torch.Tensor | None = None
    action_names: tuple[str, ...] = ()
    pipeline: dict = field(default_factory=dict)
    env_id: str = ""
    seed: int | None = None
    greedy: bool = False
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.observations is None:
            name = self.pipeline.get("name", "greydanus2017")
            if name != "greydanus2017":
                raise ValueError(
                    f"a rollout of the {name} pipeline needs its observations (they cannot be "
                    "recomputed from the RGB frames)"
                )
            object.__setattr__(self, "observations", preprocess_bytes(self.frames)[:, None])
        object.__setattr__(self, "action_names", tuple(self.action_names))

    @property
    def pipeline_name(self) -> str:
        return self.pipeline.get("name", "greydanus2017")

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, index) -> Rollout:
        """Slice (or index with an int, list or index tensor) by step; always returns a Rollout."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return replace(
            self,
            states=index_state(self.states, index),
            **{name: getattr(self, name)[index] for name in _PER_STEP},
        )

    def episode_returns(self) -> list[float]:
        """Total reward of every episode that ended inside the rollout."""
        ends = torch.nonzero(self.dones).flatten().tolist()
        cumulative = torch.cumsum(self.rewards.double(), 0)
        returns, previous = [], 0.0
        for end in ends:
            returns.append(float(cumulative[end]) - previous)
            previous = float(cumulative[end])
        return returns


@dataclass
class Step:
    """One recorded step: the frame and observation seen, the state used on it, the outputs, the action and
    its result."""

    frame: np.ndarray
    state: State
    logits: torch.Tensor
    value: torch.Tensor
    action: int
    reward: float
    done: bool
    observation: np.ndarray | None = None


class Player:
    """An agent playing one environment in its own pipeline: current observation, recurrent state and action
    sampler.

    Seeding lives here: the environment's first reset (emulator, sticky actions, noop count, the 2017 pipeline's
    random frameskip) and the CPU action sampler are both seeded with ``seed``, so the same seed gives the same
    game on every device. ``pipeline_options`` are :func:`engine.env.pipelines.make_pipeline`'s options.
    """

    def __init__(self, agent: Policy, env_id: str, seed: int = 0, greedy: bool = False, **pipeline_options):
        check_policy(agent)
        self.agent, self.env_id, self.greedy = agent, env_id, greedy
        self.pipeline: AtariPipeline = make_pipeline(
            agent.pipeline, env_id, frame_stack=agent.frame_stack, **pipeline_options
        )
        self.env = self.pipeline.env
        self.env.action_space.seed(seed)
        if self.pipeline.num_actions != agent.num_actions:
            self.close()
            raise ValueError(
                f"{env_id!r} has {self.pipeline.num_actions} actions but the agent has {agent.num_actions}: "
                "use the game (and action set: full_action_space) the agent was trained on"
            )
        if tuple(self.pipeline.observation_shape) != tuple(agent.observation_shape):
            self.close()
            raise ValueError(
                f"the {agent.pipeline} pipeline makes observations {tuple(self.pipeline.observation_shape)} but the "
                f"agent takes {tuple(agent.observation_shape)}: check screen_size and the agent's frame_stack"
            )
        self.device, self.dtype = torch.device(agent.device), agent.dtype
        self.sampler = torch.Generator().manual_seed(seed)  # CPU generator: same actions on every device
        first = self.pipeline.reset(seed=seed)
        self.observation, self.frame = first.observation, first.frame
        self.state = agent.initial_state(1)

    @property
    def spec(self) -> PipelineSpec:
        return self.pipeline.spec

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.pipeline.action_names

    def step(self) -> Step:
        """Act on the current observation, advance the environment (resetting it after an episode ends)."""
        with torch.inference_mode():
            observation, frame, state = self.observation, self.frame, self.state
            x = torch.from_numpy(observation)[None].to(self.device).to(self.dtype) / 255
            out = self.agent(x, state)
            logits = out.logits[0].cpu()
            if self.greedy:
                action = int(logits.argmax())
            else:
                action = int(torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=self.sampler))
            result = self.pipeline.step(action)
            reward, done = result.reward, result.terminated or result.truncated
            if done:
                result = self.pipeline.reset()
                self.state = self.agent.reset_state(out.state, torch.ones(1, dtype=torch.bool, device=self.device))
            else:
                self.state = out.state
            self.observation, self.frame = result.observation, result.frame
        return Step(frame, state, logits, out.value[0].cpu(), action, reward, done, observation)

    def replay(self, actions, dones, frames=None, observations=None) -> None:
        """Bring the environment to where a recording of these steps left it, without the agent: step with
        the recorded actions (resetting after recorded episode ends). ``frames`` and ``observations`` (the
        recorded RGB frames / observations of the last steps, aligned to the end) are compared with what the
        environment shows, to catch divergence."""
        checks = [
            (name, rec, len(actions) - len(rec))
            for name, rec in (("frame", frames), ("observation", observations))
            if rec is not None
        ]
        for t, (action, done) in enumerate(zip(actions, dones)):
            for name, recorded, first in checks:
                if t >= first and not np.array_equal(getattr(self, name), np.asarray(recorded[t - first])):
                    raise RuntimeError(
                        f"replaying {self.env_id} diverged from the recording at step {t} ({name}s differ)"
                    )
            result = self.pipeline.step(int(action))
            if bool(result.terminated or result.truncated) != bool(done):
                raise RuntimeError(f"replaying {self.env_id} diverged from the recording at step {t} (episode end)")
            if done:
                result = self.pipeline.reset()
            self.observation, self.frame = result.observation, result.frame

    def close(self) -> None:
        self.pipeline.close()


def rollout(
    agent: Policy,
    env_id: str,
    num_steps: int,
    seed: int = 0,
    greedy: bool = False,
    max_episodes: int | None = None,
    progress: bool = False,
    **pipeline_options,
) -> Rollout:
    """Play ``agent`` in its own environment pipeline for ``num_steps`` steps (or until ``max_episodes``
    episodes end) and record them.

    Args:
        agent: any :class:`engine.core.policy.Policy` (its device/dtype are used; it is not modified). It plays
            in ``agent.pipeline`` with ``agent.frame_stack`` frames.
        env_id: a gymnasium ALE id: ``"Pong-v4"`` for the 2017/baby-a3c agents; ``"BreakoutNoFrameskip-v4"`` or
            ``"ALE/Breakout-v5"`` (sticky actions) for the standard pipelines, which skip frames themselves.
        num_steps: most steps to record (>= 1).
        seed: seeds the environment's first reset and the action sampler.
        greedy: take the argmax action instead of sampling from softmax(logits).
        max_episodes: stop after this many episodes end (``None``: only ``num_steps`` limits). With
            ``episodic_life`` every lost life ends an episode.
        progress: show a progress bar with the step rate (where stderr is a terminal).
        pipeline_options: the pipeline's options (:func:`engine.env.pipelines.make_pipeline`):
            ``repeat_action_probability``, ``full_action_space``, and for the standard pipelines
            ``episodic_life`` and ``clip_rewards`` (off: full games, game score), ``noop_max``, ``frame_skip``,
            ``screen_size``, ... ; ``**library_defaults(agent.pipeline)`` plays the library's training environment.

    Example: five steps of the built-in recurrent PPO agent, which plays in CleanRL's pipeline (one 84x84 frame
    per observation, frame skip 4) with an LSTM state ``(h, c)``:

    >>> import torch
    >>> from engine.policies.loading import load_policy
    >>> from engine.policies.registry import resolve_checkpoint
    >>> agent = load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu")
    >>> r = rollout(agent, "PongNoFrameskip-v4", num_steps=5, seed=0)
    >>> len(r), tuple(r.frames.shape), tuple(r.observations.shape), [tuple(s.shape) for s in r.states]
    (5, (5, 210, 160, 3), (5, 1, 84, 84), [(5, 128), (5, 128)])
    >>> r.action_names
    ('NOOP', 'FIRE', 'RIGHT', 'LEFT', 'RIGHTFIRE', 'LEFTFIRE')
    >>> bool(((r.actions >= 0) & (r.actions < agent.num_actions)).all()), r.dones.tolist(), r.rewards.tolist()
    (True, [False, False, False, False, False], [0.0, 0.0, 0.0, 0.0, 0.0])
    >>> with torch.inference_mode():  # the recorded states reproduce the recorded outputs, bit for bit
    ...     out = agent(r.observations / 255, r.states)
    >>> torch.equal(out.logits, r.logits), torch.equal(out.value, r.values)
    (True, True)
    >>> torch.equal(rollout(agent, "PongNoFrameskip-v4", num_steps=5, seed=0).actions, r.actions)  # same seed
    True
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1 or None, got {max_episodes!r}")
    player = Player(agent, env_id, seed, greedy, **pipeline_options)
    steps: list[Step] = []
    episodes, episode_return = 0, 0.0
    bar = tqdm(total=num_steps, desc=f"rollout {env_id}", unit="step", disable=None if progress else True)
    try:
        for _ in range(num_steps):
            step = player.step()
            steps.append(step)
            episode_return += step.reward
            bar.update(1)
            if step.done:
                episodes += 1
                bar.set_postfix(episodes=episodes, last_return=episode_return)
                episode_return = 0.0
                if max_episodes is not None and episodes >= max_episodes:
                    break
    finally:
        bar.close()
        player.close()
    return rollout_from_steps(
        steps, env_id=env_id, seed=seed, greedy=greedy, action_names=player.action_names, pipeline=player.spec.to_dict()
    )


class EpisodesUnfinished(RuntimeError):
    """:func:`play_episodes` reached ``max_steps`` before the episodes it was asked for had ended."""


def play_episodes(
    agent: Policy,
    env_id: str,
    episodes: int,
    seed: int = 0,
    greedy: bool = False,
    max_steps: int = 10**6,
    progress: bool = False,
    **pipeline_options,
) -> list[float]:
    """Returns of ``episodes`` full episodes played from one seeded environment in the agent's own pipeline
    (actions sampled unless ``greedy``; ``pipeline_options`` as for :func:`rollout`), keeping nothing else, so
    memory does not grow with episode length. With ``episodic_life`` an episode is one life; with
    ``clip_rewards`` the returns are of clipped rewards."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    player = Player(agent, env_id, seed, greedy, **pipeline_options)
    returns, current = [], 0.0
    bar = tqdm(total=episodes, desc=f"episodes {env_id}", unit="episode", disable=None if progress else True)
    try:
        for _ in range(max_steps):
            step = player.step()
            current += step.reward
            if step.done:
                returns.append(current)
                current = 0.0
                bar.update(1)
                bar.set_postfix(mean=f"{np.mean(returns):.2f}")
                if len(returns) == episodes:
                    return returns
    finally:
        bar.close()
        player.close()
    raise EpisodesUnfinished(f"only {len(returns)} of {episodes} episodes of {env_id} ended within {max_steps} steps")


def rollout_from_steps(steps: list[Step], **meta) -> Rollout:
    """Stack recorded steps into a :class:`Rollout` (tensors on the CPU)."""
    observations = None
    recorded = [s.observation for s in steps if s.observation is not None]
    if len(recorded) == len(steps):
        observations = torch.from_numpy(np.stack(recorded))
    return Rollout(
        frames=torch.from_numpy(np.stack([s.frame for s in steps])),
        states=state_to(stack_states([s.state for s in steps]), device="cpu"),
        logits=torch.stack([s.logits for s in steps]),
        values=torch.stack([s.value for s in steps]),
        actions=torch.tensor([s.action for s in steps], dtype=torch.int64),
        rewards=torch.tensor([s.reward for s in steps], dtype=torch.float32),
        dones=torch.tensor([s.done for s in steps], dtype=torch.bool),
        observations=observations,
        **meta,
    )
