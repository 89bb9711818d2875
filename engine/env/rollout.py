"""Playing an agent in its own environment pipeline and recording what saliency needs.

Any :class:`engine.core.policy.Policy` plays in the pipeline it was trained with (``policy.pipeline``,
``policy.frame_stack``; :mod:`engine.env.pipelines`). Per step ``t`` a :class:`Rollout` holds the observation
the agent saw (uint8 (C, H, W)), the RGB frame its last observation channel was made from, the recurrent state
it used on that observation (the state the previous step produced, or the episode-start state after
``policy.reset_state``), the logits and value it computed, the action taken, the reward received and whether the
episode ended with that step. So ``agent(observations[t] / 255, states[t])`` reproduces ``logits[t]`` and
``values[t]`` bit for bit on the same device (for a batch-invariant policy, also in one batched call), and
``rollout[a:b]`` can be scored without replaying anything.

Many games at once: ``rollout(..., num_envs=N)`` plays N environments of the agent's pipeline together
(:class:`VectorPlayer`), game ``i`` seeded with ``seed + i``, and returns N rollouts, game ``i`` equal to the
single-env rollout with seed ``seed + i``: one forward pass per step over the N games' observations and states
makes recording about as fast per step as the emulator allows, where a batch-1 forward costs nearly what a batch
of 16 does (the engine's agents pad rows to 16 for batch invariance). ``num_steps`` and ``max_episodes`` are per
game, so each game is exactly what it would be alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import overload

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.inputs import check_outputs, check_policy
from ..core.policy import PIPELINES, Policy, State, index_state, stack_states, state_to
from ..core.preprocessing import preprocess_bytes
from .pipelines import (  # noqa: F401  (make_env: re-exported)
    AtariPipeline,
    PipelineBatch,
    PipelineSpec,
    check_seed,
    make_env,
    make_pipeline,
)

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


def _agent_pipeline(agent: Policy, env_id: str, seed: int, pipeline_options: dict) -> AtariPipeline:
    """The agent's own pipeline on ``env_id`` (its action space seeded with ``seed``), checked against the agent;
    ``pipeline_options["pipeline"]`` plays it in another supported pipeline instead (with a warning: the agent then
    sees inputs prepared otherwise than in its training)."""
    options = dict(pipeline_options)
    name = options.pop("pipeline", None) or agent.pipeline
    if name not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)} (or None: the agent's own), got {name!r}")
    if name != agent.pipeline:
        warnings.warn(
            f"playing a {agent.pipeline} agent in the {name} pipeline: its maps explain how it acts on inputs "
            "prepared otherwise than in its training",
            stacklevel=3,
        )
    pipeline = make_pipeline(name, env_id, frame_stack=agent.frame_stack, first_seed=seed, **options)
    pipeline.env.action_space.seed(seed)
    if pipeline.num_actions != agent.num_actions:
        pipeline.close()
        raise ValueError(
            f"{env_id!r} has {pipeline.num_actions} actions but the agent has {agent.num_actions}: "
            "use the game (and action set: full_action_space) the agent was trained on"
        )
    if tuple(pipeline.observation_shape) != tuple(agent.observation_shape):
        pipeline.close()
        raise ValueError(
            f"the {name} pipeline makes observations {tuple(pipeline.observation_shape)} but the "
            f"agent takes {tuple(agent.observation_shape)}: check screen_size and the agent's frame_stack"
            + (f", or play it in its own pipeline ({agent.pipeline})" if name != agent.pipeline else "")
        )
    return pipeline


def _choose(logits: torch.Tensor, greedy: bool, sampler: torch.Generator) -> int:
    """The action for one row of logits (on the CPU): the argmax, or a sample from softmax(logits) drawn in
    float64 with ``sampler``."""
    if greedy:
        return int(logits.argmax())
    return int(torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=sampler))


class Player:
    """An agent playing one environment in its own pipeline: current observation, recurrent state and action
    sampler.

    Seeding lives here: the environment's first reset (emulator, sticky actions, noop count, the 2017 pipeline's
    random frameskip) and the CPU action sampler are both seeded with ``seed``, so the same seed gives the same
    game on every device. ``pipeline_options`` are :func:`engine.env.pipelines.make_pipeline`'s options.
    """

    def __init__(self, agent: Policy, env_id: str, seed: int = 0, greedy: bool = False, **pipeline_options):
        seed = check_seed(seed)
        check_policy(agent)
        self.agent, self.env_id, self.greedy = agent, env_id, greedy
        self.pipeline: AtariPipeline = _agent_pipeline(agent, env_id, seed, pipeline_options)
        self.env = self.pipeline.env
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
            out = check_outputs(self.agent, self.agent(x, state), 1)
            logits = out.logits[0].cpu()
            action = _choose(logits, self.greedy, self.sampler)
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


def check_num_envs(num_envs: object) -> int:
    """``num_envs`` as an int, or a ValueError naming the setting."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer (environments played together), got {num_envs!r}")
    return int(num_envs)


class VectorPlayer:
    """An agent playing ``num_envs`` environments of its own pipeline together, environment ``i`` seeded with
    ``seed + i`` and with its own action sampler (a CPU generator seeded with ``seed + i``), as a :class:`Player`
    with that seed would play it alone.

    One step runs the agent's forward once over the observations and states of the environments still playing
    (:attr:`active`), on its device, then steps each of them (:class:`engine.env.pipelines.PipelineBatch`) and
    resets the state rows of those whose episode ended (``agent.reset_state``). Each environment's game equals
    the :class:`Player` one's bit for bit when the agent's outputs for a row do not depend on the batch it is in:
    the engine's agents pad rows as in :mod:`engine.core.batching` for that (``batch_invariant``), exact on the
    CPU; on CUDA a kernel chosen by batch size can change a logit in its last bit, and so a sampled action.
    :meth:`stop` takes a game out of the batch (e.g. after its last episode); the others go on unchanged.
    """

    def __init__(
        self,
        agent: Policy,
        env_id: str,
        num_envs: int,
        seed: int = 0,
        greedy: bool = False,
        workers: int = 0,
        **pipeline_options,
    ):
        from .workers import WorkerPipelines, check_workers

        num_envs = check_num_envs(num_envs)
        workers = check_workers(workers, num_envs)
        seed = check_seed(seed, num_envs)
        check_policy(agent)
        self.agent, self.env_id, self.greedy, self.num_envs = agent, env_id, greedy, num_envs
        self.seeds = [seed + i for i in range(num_envs)]
        self.pipelines: PipelineBatch | WorkerPipelines
        if workers:  # the pipeline is checked against the agent here (one made and closed), then built in each worker
            first = _agent_pipeline(agent, env_id, self.seeds[0], pipeline_options)
            first.close()
            self.pipelines = WorkerPipelines(first.spec, self.seeds, workers)
        else:
            pipelines: list[AtariPipeline] = []
            try:
                for s in self.seeds:
                    pipelines.append(_agent_pipeline(agent, env_id, s, pipeline_options))
            except BaseException:
                for made in pipelines:
                    made.close()
                raise
            self.pipelines = PipelineBatch(pipelines)
        self.device, self.dtype = torch.device(agent.device), agent.dtype
        self.samplers = [torch.Generator().manual_seed(s) for s in self.seeds]  # CPU: same actions on every device
        try:  # a player that fails to start closes its emulators (and worker processes) itself: no one else can
            self.observations, self.frames = self.pipelines.reset(self.seeds)
            self.state: State = agent.initial_state(num_envs)  # the rows of the active environments, in order
        except BaseException:
            self.pipelines.close()
            raise
        self.active: list[int] = list(range(num_envs))

    @property
    def spec(self) -> PipelineSpec:
        return self.pipelines.pipelines[0].spec

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.pipelines.pipelines[0].action_names

    def step(self) -> dict[int, Step]:
        """Act on the active environments' observations in one forward pass, advance each of them (resetting
        those whose episode ended): each one's :class:`Step`, by environment index."""
        active = self.active
        if not active:
            raise RuntimeError("every environment was stopped")
        with torch.inference_mode():
            state = self.state
            observations = np.stack([self.observations[i] for i in active])
            x = torch.from_numpy(observations).to(self.device).to(self.dtype) / 255
            out = check_outputs(self.agent, self.agent(x, state), len(active))
            if self.device.type == "cpu":
                logits, values = out.logits, out.value
            else:  # one copy to the host per step, for all the environments
                both = torch.cat([out.logits, out.value[:, None].to(out.logits.dtype)], dim=1).cpu()
                logits, values = both[:, :-1], both[:, -1].to(out.value.dtype)
            if self.greedy:  # the argmax of a row does not depend on the others (ties: the first, as alone)
                actions = logits.argmax(dim=-1).tolist()
            else:
                actions = [_choose(logits[k], False, self.samplers[i]) for k, i in enumerate(active)]
            result = self.pipelines.step(active, actions)
            if any(result.dones):
                done = torch.tensor(result.dones, dtype=torch.bool, device=self.device)
                self.state = self.agent.reset_state(out.state, done)
            else:
                self.state = out.state
        steps = {}
        for k, i in enumerate(active):
            steps[i] = Step(
                self.frames[i],
                tuple(s[k : k + 1] for s in state),
                logits[k],
                values[k],
                actions[k],
                result.rewards[k],
                result.dones[k],
                self.observations[i],
            )
            self.observations[i], self.frames[i] = result.observations[k], result.frames[k]
        return steps

    def replay(
        self,
        index: int,
        actions,
        dones,
        frames=None,
        observations=None,
        sampler_state: torch.Tensor | None = None,
        last_state: State | None = None,
    ) -> None:
        """Bring game ``index`` to where a recording of its first ``len(actions)`` steps left it, the others not
        moving: step its environment alone with the recorded actions (resetting after recorded episode ends) as
        :meth:`Player.replay` does, comparing the recorded ``frames`` and ``observations`` of the last steps
        (aligned to the end) with what it shows, to catch divergence. Then ``sampler_state`` (the sampler's state
        saved after the last recorded step) is restored, and the game's row of :attr:`state` set to the state the
        agent passes on after the last recorded step: its output on the last recorded observation
        (``observations[-1]``) and state (``last_state``, a tuple of (1, ...) tensors), reset by
        ``agent.reset_state`` where that step ended an episode (the initial state where nothing was replayed)."""
        if index not in self.active:
            raise ValueError(f"environment {index} is not playing (active: {self.active})")
        checks = [
            (name, rec, len(actions) - len(rec))
            for name, rec in (("frame", frames), ("observation", observations))
            if rec is not None
        ]
        for t, (action, done) in enumerate(zip(actions, dones)):
            for name, recorded, first in checks:
                shown = self.frames[index] if name == "frame" else self.observations[index]
                if t >= first and not np.array_equal(shown, np.asarray(recorded[t - first])):
                    raise RuntimeError(
                        f"replaying game {index} of {self.env_id} diverged from the recording at step {t} "
                        f"({name}s differ)"
                    )
            result = self.pipelines.step([index], [int(action)])
            if bool(result.dones[0]) != bool(done):
                raise RuntimeError(
                    f"replaying game {index} of {self.env_id} diverged from the recording at step {t} (episode end)"
                )
            self.observations[index], self.frames[index] = result.observations[0], result.frames[0]
        if sampler_state is not None:
            self.samplers[index].set_state(sampler_state)
        with torch.inference_mode():
            row = self.agent.initial_state(1)
            if len(actions) and last_state is not None and observations is not None:
                x = torch.from_numpy(np.asarray(observations[-1:])).to(device=self.device, dtype=self.dtype) / 255
                row = self.agent(x, state_to(last_state, self.device, self.dtype)).state
                if bool(dones[-1]):  # as in play: a reset need not give the initial state
                    row = self.agent.reset_state(row, torch.ones(1, dtype=torch.bool, device=self.device))
            k = self.active.index(index)
            self.state = tuple(
                torch.cat([s[:k], r.to(device=s.device, dtype=s.dtype), s[k + 1 :]]) for s, r in zip(self.state, row)
            )

    def stop(self, index: int) -> None:
        """Stop playing environment ``index``: later steps leave it out of the batch."""
        if index in self.active:
            keep = [k for k, i in enumerate(self.active) if i != index]
            self.state = index_state(self.state, torch.tensor(keep, dtype=torch.long, device=self.device))
            self.active = [i for i in self.active if i != index]

    def close(self) -> None:
        self.pipelines.close()


@overload
def rollout(
    agent: Policy,
    env_id: str,
    num_steps: int,
    seed: int = ...,
    greedy: bool = ...,
    max_episodes: int | None = ...,
    progress: bool = ...,
    num_envs: None = ...,
    workers: int = ...,
    **pipeline_options,
) -> Rollout: ...


@overload
def rollout(
    agent: Policy,
    env_id: str,
    num_steps: int,
    seed: int = ...,
    greedy: bool = ...,
    max_episodes: int | None = ...,
    progress: bool = ...,
    *,
    num_envs: int,
    workers: int = ...,
    **pipeline_options,
) -> list[Rollout]: ...


def rollout(
    agent: Policy,
    env_id: str,
    num_steps: int,
    seed: int = 0,
    greedy: bool = False,
    max_episodes: int | None = None,
    progress: bool = False,
    num_envs: int | None = None,
    workers: int = 0,
    **pipeline_options,
) -> Rollout | list[Rollout]:
    """Play ``agent`` in its own environment pipeline for ``num_steps`` steps (or until ``max_episodes``
    episodes end) and record them; with ``num_envs``, play that many games together.

    Args:
        agent: any :class:`engine.core.policy.Policy` (its device/dtype are used; it is not modified). It plays
            in ``agent.pipeline`` with ``agent.frame_stack`` frames.
        env_id: a gymnasium ALE id: ``"Pong-v4"`` for the 2017/baby-a3c agents; ``"BreakoutNoFrameskip-v4"`` or
            ``"ALE/Breakout-v5"`` (sticky actions) for the standard pipelines, which skip frames themselves.
        num_steps: most steps to record (>= 1); with ``num_envs``, of each game.
        seed: seeds the environment's first reset and the action sampler; with ``num_envs``, game ``i`` is
            seeded with ``seed + i``.
        greedy: take the argmax action instead of sampling from softmax(logits).
        max_episodes: stop after this many episodes end (``None``: only ``num_steps`` limits); with
            ``num_envs``, each game stops after its own ``max_episodes`` (the others go on). With
            ``episodic_life`` every lost life ends an episode.
        num_envs: ``None`` (the default): one game, returned as a :class:`Rollout`. An integer N >= 1: N games
            played together (:class:`VectorPlayer`: one batched forward per step over the N games' observations
            and states, on the agent's device), returned as a list of N rollouts, game ``i`` exactly the
            rollout ``rollout(agent, env_id, num_steps, seed + i, ...)`` would record on its own (on the CPU bit
            for bit, greedy or sampled: each game has its own sampler, and the engine's agents compute each row
            independently of the batch; on CUDA up to the last bit of a logit, see :class:`VectorPlayer`).
            Games may differ in length where ``max_episodes`` ends some earlier.
        workers: with ``num_envs``, the processes that step the games' environments (0, the default: this
            process; W from 1 to ``num_envs``: :class:`engine.env.workers.WorkerPipelines`, W processes each
            stepping its share of the games while this one runs the agent's forward; the same games bit for bit).
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
    >>> games = rollout(agent, "PongNoFrameskip-v4", num_steps=5, seed=0, num_envs=3)  # seeds 0, 1, 2 together
    >>> [g.seed for g in games], torch.equal(games[0].logits, r.logits), torch.equal(games[0].states[0], r.states[0])
    ([0, 1, 2], True, True)
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1 or None, got {max_episodes!r}")
    seed = check_seed(seed, 1 if num_envs is None else check_num_envs(num_envs))
    if num_envs is not None:
        return _rollout_games(
            agent,
            env_id,
            num_steps,
            seed,
            greedy,
            max_episodes,
            progress,
            check_num_envs(num_envs),
            pipeline_options,
            workers,
        )
    if workers != 0:
        raise ValueError(f"workers={workers!r} steps the environments of num_envs games: give num_envs too")
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


def _rollout_games(
    agent: Policy,
    env_id: str,
    num_steps: int,
    seed: int,
    greedy: bool,
    max_episodes: int | None,
    progress: bool,
    num_envs: int,
    pipeline_options: dict,
    workers: int = 0,
) -> list[Rollout]:
    """:func:`rollout` of ``num_envs`` games played together."""
    player = VectorPlayer(agent, env_id, num_envs, seed, greedy, workers, **pipeline_options)
    steps: list[list[Step]] = [[] for _ in range(num_envs)]
    episodes = [0] * num_envs
    bar = tqdm(
        total=num_steps * num_envs,
        desc=f"rollout {env_id} x{num_envs}",
        unit="step",
        disable=None if progress else True,
    )
    try:
        for _ in range(num_steps):
            played = player.step()
            for i, step in played.items():
                steps[i].append(step)
                if step.done:
                    episodes[i] += 1
                    if max_episodes is not None and episodes[i] >= max_episodes:
                        player.stop(i)
            bar.update(len(played))
            bar.set_postfix(episodes=sum(episodes))
            if not player.active:
                break
    finally:
        bar.close()
        player.close()
    meta = dict(env_id=env_id, greedy=greedy, action_names=player.action_names, pipeline=player.spec.to_dict())
    return [rollout_from_steps(steps[i], seed=player.seeds[i], **meta) for i in range(num_envs)]


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
