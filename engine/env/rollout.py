"""Playing an agent in gymnasium + ale-py and recording what saliency needs.

Per step ``t`` a :class:`Rollout` holds the raw frame the agent saw, the recurrent state it used on that
frame (the state the previous frame produced, or zeros at an episode start), the logits and value it
computed, the action taken, the reward received and whether the episode ended with that step. So
``agent(preprocess(frames[t]), states[t])`` reproduces ``logits[t]`` and ``values[t]`` bit for bit on the
same device, and ``rollout[a:b]`` can be scored without replaying anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.errors import UnknownEnvironmentError
from ..core.policy import ActorCritic, State, index_state, stack_states, state_to
from ..core.preprocessing import FRAME_SHAPE, preprocess_frames

_PER_STEP = ("frames", "logits", "values", "actions", "rewards", "dones")


@dataclass(frozen=True)
class Rollout:
    """A recorded rollout of T steps (all tensors on the CPU, indexed by step).

    Attributes:
        frames: raw RGB frames (T, 210, 160, 3) uint8.
        states: the recurrent state used on each frame: tuple of (T, hidden) (``(hx, cx)`` or ``(hx,)``).
        logits: (T, actions); values: (T,); actions: (T,) int64; rewards: (T,) float32;
        dones: (T,) bool, True where the episode ended with that step (the next step starts from zeros).
        env_id, seed, greedy: how it was played.
    """

    frames: torch.Tensor
    states: State
    logits: torch.Tensor
    values: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    env_id: str = ""
    seed: int | None = None
    greedy: bool = False
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, index) -> "Rollout":
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


def make_env(env_id: str, seed: int | None = None) -> gym.Env:
    """A gymnasium ALE environment by id (``Pong-v4``, ``ALE/Breakout-v5``, ...); unknown ids are a clear error."""
    import ale_py

    gym.register_envs(ale_py)
    try:
        env = gym.make(env_id)
    except (gym.error.Error, ValueError, TypeError) as exc:
        known = sorted(k for k in gym.registry if "Pong" in k)[:6]
        raise UnknownEnvironmentError(
            f"unknown environment id {env_id!r} ({type(exc).__name__}: {exc}). Use a gymnasium ALE id such as "
            f"'Pong-v4', 'Breakout-v4', 'ALE/SpaceInvaders-v5' (e.g. {known})"
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


@dataclass
class Step:
    """One recorded step: the frame seen, the state used on it, the outputs, the action and its result."""

    frame: np.ndarray
    state: State
    logits: torch.Tensor
    value: torch.Tensor
    action: int
    reward: float
    done: bool


class Player:
    """An agent playing one environment: current observation, recurrent state and action sampler.

    Seeding lives here: the environment's reset (and its random frameskip) and the CPU action sampler are both
    seeded with ``seed``, so the same seed gives the same game on every device.
    """

    def __init__(self, agent: ActorCritic, env_id: str, seed: int = 0, greedy: bool = False):
        self.agent, self.env_id, self.greedy = agent, env_id, greedy
        self.env = make_env(env_id, seed)
        if self.env.action_space.n != agent.num_actions:
            self.env.close()
            raise ValueError(
                f"{env_id!r} has {self.env.action_space.n} actions but the agent has {agent.num_actions}: "
                "use the game (and action set) the agent was trained on"
            )
        self.device = agent.actor_linear.weight.device
        self.sampler = torch.Generator().manual_seed(seed)  # CPU generator: same actions on every device
        self.obs, _ = self.env.reset(seed=seed)
        self.state = agent.initial_state(1)

    def step(self) -> Step:
        """Act on the current frame, advance the environment (resetting it after an episode ends)."""
        with torch.inference_mode():
            frame, state = self.obs, self.state
            out = self.agent(preprocess_frames(frame[None], device=self.device, dtype=state[0].dtype), state)
            logits = out.logits[0].cpu()
            if self.greedy:
                action = int(logits.argmax())
            else:
                action = int(torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=self.sampler))
            obs, reward, terminated, truncated, _ = self.env.step(action)
            done = bool(terminated or truncated)
            if done:
                self.obs, _ = self.env.reset()
                self.state = self.agent.initial_state(1)
            else:
                self.obs, self.state = obs, out.state
        return Step(frame, state, logits, out.value[0].cpu(), action, float(reward), done)

    def replay(self, actions, dones, frames=None) -> None:
        """Bring the environment to where a recording of these steps left it, without the agent: step with
        the recorded actions (resetting after recorded episode ends). ``frames`` (the recorded frames of the
        last steps, aligned to the end) are compared with what the environment shows, to catch divergence."""
        first_checked = len(actions) - (0 if frames is None else len(frames))
        for t, (action, done) in enumerate(zip(actions, dones)):
            if t >= first_checked and not np.array_equal(self.obs, frames[t - first_checked]):
                raise RuntimeError(f"replaying {self.env_id} diverged from the recording at step {t}")
            obs, _, terminated, truncated, _ = self.env.step(int(action))
            if bool(terminated or truncated) != bool(done):
                raise RuntimeError(f"replaying {self.env_id} diverged from the recording at step {t} (episode end)")
            self.obs = self.env.reset()[0] if done else obs

    def close(self) -> None:
        self.env.close()


def rollout(
    agent: ActorCritic,
    env_id: str,
    num_steps: int,
    seed: int = 0,
    greedy: bool = False,
    max_episodes: int | None = None,
    progress: bool = False,
) -> Rollout:
    """Play ``agent`` for ``num_steps`` steps (or until ``max_episodes`` episodes end) and record them.

    Args:
        agent: the policy (its device/dtype are used; it is not modified).
        env_id: a gymnasium ALE id, e.g. ``"Pong-v4"`` (the baby-a3c agents were trained on ``-v4``).
        num_steps: most steps to record (>= 1).
        seed: seeds the environment (its reset and its random frameskip) and the action sampler.
        greedy: take the argmax action instead of sampling from softmax(logits).
        max_episodes: stop after this many episodes end (``None``: only ``num_steps`` limits).
        progress: show a progress bar with the step rate (where stderr is a terminal).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1 or None, got {max_episodes!r}")
    player = Player(agent, env_id, seed, greedy)
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
    return rollout_from_steps(steps, env_id=env_id, seed=seed, greedy=greedy)


def play_episodes(
    agent: ActorCritic, env_id: str, episodes: int, seed: int = 0, greedy: bool = False, max_steps: int = 10**6,
    progress: bool = False,
) -> list[float]:
    """Returns of ``episodes`` full episodes played from one seeded environment (actions sampled unless
    ``greedy``), keeping nothing else, so memory does not grow with episode length."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    player = Player(agent, env_id, seed, greedy)
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
    raise RuntimeError(f"only {len(returns)} of {episodes} episodes of {env_id} ended within {max_steps} steps")


def rollout_from_steps(steps: list[Step], **meta) -> Rollout:
    """Stack recorded steps into a :class:`Rollout` (tensors on the CPU)."""
    return Rollout(
        frames=torch.from_numpy(np.stack([s.frame for s in steps])),
        states=state_to(stack_states([s.state for s in steps]), device="cpu"),
        logits=torch.stack([s.logits for s in steps]),
        values=torch.stack([s.value for s in steps]),
        actions=torch.tensor([s.action for s in steps], dtype=torch.int64),
        rewards=torch.tensor([s.reward for s in steps], dtype=torch.float32),
        dones=torch.tensor([s.done for s in steps], dtype=torch.bool),
        **meta,
    )
