"""``python -m engine.train``: PPO training of CleanRL's ``ppo_atari_lstm`` agent on the standard Atari pipeline.

The agent is exactly CleanRL's (:class:`engine.policies.cleanrl.CleanRLPPOLSTM`: one 84x84 grayscale frame, Nature
CNN, ``LSTM(512, 128)``, actor and critic heads, CleanRL's orthogonal initialisation), so its checkpoints are
plain ``agent.state_dict()`` files that CleanRL's ``Agent`` loads unchanged and that the engine explains with a
real ``(h, c)``. The update is CleanRL's: ``num_envs`` environments, ``num_steps``-step rollouts, GAE, minibatches
of whole environments (so every sequence is replayed through the LSTM from its stored initial state, with the
state reset at episode starts), clipped policy and value losses, annealed learning rate.

Environments (``envs``):

- ``gymnasium`` (default): the engine's own ``cleanrl_atari`` pipeline (CleanRL's wrapper chain, byte for byte;
  episodic life during training), stepped in this process. The shipped agent is then evaluated by the engine's
  rollout in exactly the pipeline it was trained in.
- ``envpool``: envpool's C++ vectorised Atari (``pip install envpool``) with CleanRL's envpool settings; faster
  per step, but its preprocessing (grayscale before resizing) is not the engine's, so its agents are evaluated
  in a pipeline that differs from training by rounding.

Rewards are clipped to their sign for learning; episode returns are logged unclipped, per full game (all lives).

A run directory holds ``resume.pt`` (agent, optimizer, counters, RNG states, recent returns; overwritten in place
every ``resume_every`` updates), ``checkpoints/step_<frames>.pt`` (every ``checkpoint_every`` frames, with a
``.json`` beside it), ``progress.csv`` and TensorBoard event files in ``tensorboard/``. Started again with the same
command, a run continues from ``resume.pt``; the emulators cannot be saved, so they are re-created with seeds
derived from the seed and the update counter (recorded in the resume state), and recurrent states restart at zero.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.device import resolve_device
from ..core.errors import EngineError
from ..core.files import atomic_write
from ..env.pipelines import make_pipeline
from ..env.rollout import make_env
from ..env.wrappers import ale_env
from ..policies.cleanrl import CleanRLPPOLSTM
from .resume import RESUME_FILE, load_resume_file, load_training_state, resume_of, rng_state, save_torch

FRAME_SKIP = 4  # frames per agent step in both environment back ends


TENSORBOARD_MISSING = (
    "tensorboard=true needs the tensorboard package: pip install tensorboard "
    "(or set tensorboard=false; progress.csv is written either way)"
)


@dataclass
class PPOConfig:
    """Settings of :func:`train_ppo` (CleanRL's ``ppo_atari_lstm`` defaults); also the schema of
    ``configs/ppo.yaml`` (``ppo_schema``). Frames count emulator frames (agent steps x 4), as CleanRL's reports do."""

    env_id: str = "PongNoFrameskip-v4"
    envs: str = "gymnasium"  # gymnasium (the engine's cleanrl_atari pipeline) | envpool
    num_envs: int = 8
    num_steps: int = 128
    total_frames: int = 10_000_000
    target_return: float | None = 18.0  # stop once the mean unclipped return of the last 100 games reaches it
    lr: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.1
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    checkpoint_every: int = 500_000  # frames
    resume_every: int = 10  # updates
    seed: int = 1
    threads: int = 0  # torch threads for the learner; 0: torch's default
    device: str = "auto"
    run_dir: str = "runs/ppo_${env_id}"
    tensorboard: bool = True
    progress: bool = True

    CHOICES = {"envs": ("gymnasium", "envpool")}

    def __post_init__(self) -> None:
        if isinstance(self.run_dir, str):
            self.run_dir = os.path.expanduser(self.run_dir.replace("${env_id}", str(self.env_id)))  # '~/runs': home

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def frames_per_update(self) -> int:
        return self.batch_size * FRAME_SKIP

    def check(self) -> None:
        """Raise :class:`EngineError` (one line, naming the option) at the first setting out of range."""

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        for name, options in self.CHOICES.items():
            if getattr(self, name) not in options:
                raise EngineError(f"{name} must be one of {', '.join(options)}, got {getattr(self, name)!r}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:  # before anything is written
            raise EngineError(TENSORBOARD_MISSING)
        for name in (
            "num_envs",
            "num_steps",
            "total_frames",
            "num_minibatches",
            "update_epochs",
            "checkpoint_every",
            "resume_every",
        ):
            if not integer(getattr(self, name)) or getattr(self, name) < 1:
                raise EngineError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.num_envs % self.num_minibatches:
            raise EngineError(
                f"num_envs ({self.num_envs}) must be a multiple of num_minibatches ({self.num_minibatches}): a "
                "minibatch holds whole environments' sequences, so the LSTM replays them from their initial state"
            )
        if not integer(self.threads) or self.threads < 0:
            raise EngineError(f"threads must be an integer >= 0, got {self.threads!r}")
        if not integer(self.seed) or not 0 <= self.seed < 2**31:
            raise EngineError(f"seed must be in 0..2**31-1, got {self.seed!r}")
        for name in ("lr", "max_grad_norm", "clip_coef"):
            if not (number(getattr(self, name)) and getattr(self, name) > 0):
                raise EngineError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not (number(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise EngineError(f"{name} must be in 0..1, got {getattr(self, name)!r}")
        for name in ("ent_coef", "vf_coef"):
            if not (number(getattr(self, name)) and getattr(self, name) >= 0):
                raise EngineError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.target_return is not None and not number(self.target_return):
            raise EngineError(f"target_return must be a finite number or null, got {self.target_return!r}")
        if not self.run_dir:
            raise EngineError("run_dir must name a directory")
        resolve_device(self.device)


# --- the agent ----------------------------------------------------------------------------------------------------


def make_agent(num_actions: int) -> CleanRLPPOLSTM:
    """CleanRL's ``ppo_atari_lstm`` ``Agent`` with its initialisation: orthogonal weights (gain sqrt(2) in the
    trunk, 0.01 for the actor, 1 for the critic and the LSTM), zero biases."""
    agent = CleanRLPPOLSTM(num_actions, channels=1)
    for layer in agent.network:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    for head, gain in ((agent.actor, 0.01), (agent.critic, 1.0)):
        nn.init.orthogonal_(head.weight, gain)
        nn.init.zeros_(head.bias)
    for name, param in agent.lstm.named_parameters():
        if "bias" in name:
            nn.init.zeros_(param)
        else:
            nn.init.orthogonal_(param, 1.0)
    return agent


def unroll(agent: CleanRLPPOLSTM, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], dones: torch.Tensor):
    """CleanRL's ``get_states`` + heads: ``obs`` (T*N, 1, 84, 84) in [0, 1] ordered time-major, ``dones`` (T*N,)
    (1 where the observation starts an episode: the state is zeroed before it), ``state`` ``(h, c)`` each (N, 128).
    Returns logits (T*N, A), values (T*N,) and the last state. The convolutions run on all T*N frames at once;
    only the LSTM steps through time."""
    n = state[0].shape[0]
    hidden = agent.network(obs).reshape(-1, n, agent.lstm.input_size)
    keep = (1.0 - dones).reshape(-1, n, 1)
    h, c = state[0].unsqueeze(0), state[1].unsqueeze(0)
    # The state is only reset where an episode starts, so the LSTM runs over whole segments between such steps in
    # one call (the same recurrence as CleanRL's step-by-step loop; far fewer autograd nodes).
    starts = [0] + [t for t in range(1, hidden.shape[0]) if bool((keep[t] == 0).any())] + [hidden.shape[0]]
    outputs = []
    for a, b in zip(starts[:-1], starts[1:]):
        out, (h, c) = agent.lstm(hidden[a:b], (keep[a] * h, keep[a] * c))
        outputs.append(out)
    out = torch.cat(outputs).flatten(0, 1)
    return agent.actor(out), agent.critic(out).squeeze(-1), (h[0], c[0])


# --- environments ---------------------------------------------------------------------------------------------------


class PipelineEnvs:
    """``num_envs`` copies of the engine's ``cleanrl_atari`` pipeline (one frame, episodic life, rewards unclipped:
    the learner clips), auto-reset after every ``done`` like a gymnasium vector env: the observation returned with
    ``done`` is the first of the next episode (or of the next life)."""

    def __init__(self, env_id: str, num_envs: int, seed: int):
        self.pipes = [
            make_pipeline("cleanrl_atari", env_id, frame_stack=1, episodic_life=True, clip_rewards=False)
            for _ in range(num_envs)
        ]
        self.num_actions = self.pipes[0].num_actions
        self.seed = seed

    def reset(self) -> np.ndarray:
        return np.stack([p.reset(seed=self.seed + i).observation for i, p in enumerate(self.pipes)])

    def step(self, actions: np.ndarray):
        obs, rewards, dones, game_over = [], [], [], []
        for pipe, action in zip(self.pipes, actions):
            s = pipe.step(int(action))
            done = s.terminated or s.truncated
            over = s.truncated or (s.terminated and ale_env(pipe.env).ale.game_over())
            if done:
                s = s._replace(observation=pipe.reset().observation)
            obs.append(s.observation)
            rewards.append(s.reward)
            dones.append(done)
            game_over.append(over)
        return np.stack(obs), np.asarray(rewards, np.float32), np.asarray(dones), np.asarray(game_over)

    def close(self) -> None:
        for p in self.pipes:
            p.close()


class EnvpoolEnvs:
    """envpool's Atari with CleanRL's envpool settings (episodic life, noop reset 30, one 84x84 grayscale frame, no
    sticky actions); rewards unclipped here (the learner clips). envpool resets a finished environment on the step
    after ``done``."""

    def __init__(self, env_id: str, num_envs: int, seed: int):
        try:
            import envpool
        except ImportError as exc:
            raise EngineError("envs=envpool needs envpool: pip install envpool (or use envs=gymnasium)") from exc
        task = env_id.replace("NoFrameskip-v4", "-v5").replace("ALE/", "")
        self.env = envpool.make(
            task,
            env_type="gymnasium",
            num_envs=num_envs,
            batch_size=num_envs,
            seed=envpool_seed(seed, num_envs),
            episodic_life=True,
            reward_clip=False,
            stack_num=1,
            noop_max=30,
            repeat_action_probability=0.0,
            num_threads=1,
        )
        self.num_actions = int(self.env.action_space.n)

    def reset(self) -> np.ndarray:
        return self.env.reset()[0]

    def step(self, actions: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions))
        return obs, reward.astype(np.float32), terminated | truncated, info["terminated"].astype(bool) | truncated

    def close(self) -> None:
        self.env.close()


def envpool_seed(seed: int, num_envs: int) -> int:
    """``seed`` folded into the range envpool takes: its seed is a C++ ``int`` and environment i gets ``seed + i``,
    while a run's seeds (``seed * 100_003 + update * num_envs``) grow past 2**31 for large seeds and long runs."""
    return seed % (2**31 - num_envs)


def make_envs(config: PPOConfig, seed: int):
    if config.envs == "envpool":
        return EnvpoolEnvs(config.env_id, config.num_envs, seed)
    return PipelineEnvs(config.env_id, config.num_envs, seed)


# --- logging and saving -------------------------------------------------------------------------------------------

PROGRESS_FIELDS = (
    "update",
    "frames",
    "wall_seconds",
    "frames_per_second",
    "episodes",
    "mean_return_100",
    "lr",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clipfrac",
    "explained_variance",
)


class TrainingLog:
    """``progress.csv`` (one row per update, appended: a resumed run continues the file) and TensorBoard event
    files (``tensorboard/``) with the same scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool, first_update: int, first_frames: int):
        self.path = run_dir / "progress.csv"
        if self.path.is_file() and first_update > 0:
            # drop rows after the resume point: they belong to updates this run repeats
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["update"]) <= first_update]
        else:
            rows = []
        with atomic_write(self.path) as tmp, open(tmp, "w", newline="") as f:  # a kill here keeps the old rows
            writer = csv.DictWriter(f, PROGRESS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise EngineError(TENSORBOARD_MISSING) from exc
            # purge_step: events after the resume point are dropped, as the CSV rows are
            self.writer = SummaryWriter(
                str(run_dir / "tensorboard"), purge_step=first_frames + 1 if first_update else None
            )

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, PROGRESS_FIELDS).writerow({k: row.get(k) for k in PROGRESS_FIELDS})
        if self.writer is not None:
            for key in PROGRESS_FIELDS[3:]:
                value = row.get(key)
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, row["frames"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


RESUME_FORMAT = 1
_RESUME_FIELDS = {
    "format": int,
    "kind": str,
    "agent": dict,
    "optimizer": dict,
    "update": int,
    "frames": int,
    "episodes": int,
    "returns": list,
    "config": dict,
    "wall_seconds": float,
    "rng": dict,
    "next_checkpoint": int,
}


def save_resume(
    path: Path,
    agent,
    optimizer,
    config: PPOConfig,
    update: int,
    frames: int,
    episodes: int,
    returns,
    next_checkpoint: int,
    wall_seconds: float,
) -> None:
    """Everything a resumed run needs, atomically, as tensors and plain types (read with ``weights_only=True``)."""
    save_torch(
        dict(
            format=RESUME_FORMAT,
            kind="ppo_atari_lstm",
            agent=agent.state_dict(),
            optimizer=optimizer.state_dict(),
            update=int(update),
            frames=int(frames),
            episodes=int(episodes),
            returns=[float(r) for r in returns],
            next_checkpoint=int(next_checkpoint),
            config=asdict(config),
            wall_seconds=float(wall_seconds),
            rng=rng_state(),
        ),
        path,
    )


def load_resume(path: Path) -> dict | None:
    resume = load_resume_file(path, _RESUME_FIELDS)
    if resume is not None and (resume["format"] != RESUME_FORMAT or resume["kind"] != "ppo_atari_lstm"):
        raise EngineError(
            f"{path} is not a PPO resume state of this version: delete or move it, or use another run_dir"
        )
    return resume


def save_checkpoint(run_dir: Path, agent, config: PPOConfig, frames: int, returns, wall_seconds: float) -> Path:
    """``checkpoints/step_<frames>.pt``: CleanRL's ``agent.state_dict()`` (what ``engine.load_policy`` and
    CleanRL's ``Agent.load_state_dict`` read), and a ``.json`` with the game, frames and recent returns."""
    path = run_dir / "checkpoints" / f"step_{frames}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        game=config.env_id,
        agent="cleanrl ppo_atari_lstm",
        frames=frames,
        envs=config.envs,
        mean_return_100=float(np.mean(returns)) if returns else None,
        episodes_in_mean=len(returns),
        wall_seconds=round(wall_seconds, 1),
    )
    with atomic_write(path.with_suffix(".json")) as tmp:  # read by registry.metadata_game: never half written
        tmp.write_text(json.dumps(meta, indent=2))
    save_torch(agent.state_dict(), path)  # after its metadata: a checkpoint file is never without it
    return path


def seed_all(seed: int) -> None:
    """The one place where randomness is seeded (python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- training ------------------------------------------------------------------------------------------------------


# what may change when a run goes on (the learning rate's annealing follows the new total_frames)
RESUMABLE = frozenset(
    {"total_frames", "target_return", "checkpoint_every", "resume_every", "threads", "device", "run_dir"}
    | {"tensorboard", "progress"}
)


def check_resume(config: PPOConfig) -> dict | None:
    """The resume state in ``config.run_dir`` (None: a new run), refused where it was trained with other settings
    than ``config`` beyond :data:`RESUMABLE`."""
    return resume_of(Path(config.run_dir), load_resume, config, RESUMABLE)


def train_ppo(config: PPOConfig) -> Path:
    """Train (or resume) into ``config.run_dir`` until ``total_frames`` or ``target_return``; returns the path of
    the last checkpoint written."""
    config.check()
    run_dir = Path(config.run_dir)
    resume = check_resume(config)  # before any environment starts
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    seed_all(config.seed)
    update, frames, episodes = 0, 0, 0
    returns: deque[float] = deque(maxlen=100)
    next_checkpoint, earlier_seconds = config.checkpoint_every, 0.0
    probe = make_env(config.env_id)  # an unknown id fails here, clearly
    num_actions = int(cast(gym.spaces.Discrete, probe.action_space).n)
    probe.close()
    agent = make_agent(num_actions).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=1e-5)
    if resume is not None:
        load_training_state(resume, agent, optimizer)
        update, frames, episodes = resume["update"], resume["frames"], resume["episodes"]
        returns = deque(resume["returns"], maxlen=100)
        next_checkpoint, earlier_seconds = resume["next_checkpoint"], resume["wall_seconds"]
    total_updates = max(1, math.ceil(config.total_frames / config.frames_per_update))
    # the emulators cannot be saved: a resumed run re-creates them with seeds of its own (recorded by `update`)
    envs = make_envs(config, seed=config.seed * 100_003 + update * config.num_envs)
    log = TrainingLog(run_dir, config.tensorboard, update, frames)
    n, T = config.num_envs, config.num_steps
    obs_buf = torch.zeros((T, n, 1, 84, 84), dtype=torch.uint8)
    actions = torch.zeros((T, n), dtype=torch.long)
    logprobs, rewards, dones, values = (torch.zeros((T, n)) for _ in range(4))
    next_obs = torch.from_numpy(envs.reset())
    next_done = torch.zeros(n)
    state = agent.initial_state(n)
    game_return = np.zeros(n)
    last_path = None
    started = time.perf_counter()
    bar = tqdm(
        total=config.total_frames,
        initial=min(frames, config.total_frames),
        desc=f"ppo {config.env_id}",
        unit="frame",
        disable=not config.progress,
    )
    try:
        while update < total_updates and not _reached(returns, config.target_return):
            initial_state = tuple(s.clone() for s in state)
            lr = config.lr * (1.0 - update / total_updates) if config.anneal_lr else config.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            for t in range(T):
                obs_buf[t], dones[t] = next_obs, next_done
                with torch.no_grad():
                    out = agent(
                        next_obs.to(device, torch.float32) / 255.0,
                        agent.reset_state(state, next_done.to(device).bool()),
                        batch_invariant=False,
                    )
                    dist = torch.distributions.Categorical(logits=out.logits)
                    action = dist.sample()
                state = out.state
                actions[t], logprobs[t], values[t] = action.cpu(), dist.log_prob(action).cpu(), out.value.cpu()
                o, r, d, over = envs.step(action.cpu().numpy())
                game_return += r
                for g in game_return[over]:
                    returns.append(float(g))
                episodes += int(over.sum())
                game_return[over] = 0.0
                rewards[t] = torch.from_numpy(np.sign(r))
                next_obs, next_done = torch.from_numpy(o), torch.from_numpy(d.astype(np.float32))
            with torch.no_grad():
                next_value = agent(
                    next_obs.to(device, torch.float32) / 255.0,
                    agent.reset_state(state, next_done.to(device).bool()),
                    batch_invariant=False,
                ).value.cpu()
            advantages = gae(rewards, values, dones, next_value, next_done, config.gamma, config.gae_lambda)
            stats = ppo_update(
                agent, optimizer, config, obs_buf, actions, logprobs, values, advantages, dones, initial_state, device
            )
            update += 1
            frames += config.frames_per_update
            wall = earlier_seconds + time.perf_counter() - started
            bar.update(config.frames_per_update)
            mean_return = float(np.mean(returns)) if returns else None
            if mean_return is not None:
                bar.set_postfix(ret=f"{mean_return:.2f}")
            session_frames = frames - (resume["frames"] if resume else 0)
            log.write(
                dict(
                    update=update,
                    frames=frames,
                    wall_seconds=round(wall, 1),
                    frames_per_second=session_frames / (time.perf_counter() - started),
                    episodes=episodes,
                    mean_return_100=mean_return,
                    lr=lr,
                    **stats,
                )
            )
            finished = update >= total_updates or _reached(returns, config.target_return)
            if frames >= next_checkpoint or finished:
                last_path = save_checkpoint(run_dir, agent, config, frames, returns, wall)
                next_checkpoint = (frames // config.checkpoint_every + 1) * config.checkpoint_every
            if update % config.resume_every == 0 or finished:
                save_resume(
                    run_dir / RESUME_FILE,
                    agent,
                    optimizer,
                    config,
                    update,
                    frames,
                    episodes,
                    returns,
                    next_checkpoint,
                    wall,
                )
    finally:
        bar.close()
        log.close()
        envs.close()
    if last_path is None:  # resumed a run that had already finished
        last_path = save_checkpoint(run_dir, agent, config, frames, returns, earlier_seconds)
    return last_path


def _reached(returns, target: float | None) -> bool:
    return target is not None and len(returns) >= 100 and float(np.mean(returns)) >= target


def gae(rewards, values, dones, next_value, next_done, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates (T, N), CleanRL's loop: ``dones[t]`` flags that observation t starts an
    episode, so the bootstrap from t to t+1 is cut by ``dones[t+1]`` (``next_done`` after the last step)."""
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        nonterminal = 1.0 - (next_done if t == T - 1 else dones[t + 1])
        following = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        advantages[t] = last
    return advantages


def ppo_update(
    agent, optimizer, config: PPOConfig, obs, actions, logprobs, values, advantages, dones, initial_state, device
) -> dict:
    """``update_epochs`` passes over minibatches of whole environments (CleanRL's ``envsperbatch``): each minibatch
    replays its environments' sequences through the LSTM from their initial states. Returns the last epoch's
    losses and diagnostics."""
    T, n = actions.shape
    returns = advantages + values
    per_batch = n // config.num_minibatches
    clipfracs = []
    for _ in range(config.update_epochs):
        order = torch.randperm(n)
        for start in range(0, n, per_batch):
            envs = order[start : start + per_batch]
            mb_obs = obs[:, envs].reshape(-1, 1, 84, 84).to(device, torch.float32) / 255.0
            logits, new_values, _ = unroll(
                agent, mb_obs, tuple(s[envs] for s in initial_state), dones[:, envs].reshape(-1).to(device)
            )
            dist = torch.distributions.Categorical(logits=logits)
            mb_actions = actions[:, envs].reshape(-1).to(device)
            new_logprob, entropy = dist.log_prob(mb_actions), dist.entropy()
            log_ratio = new_logprob - logprobs[:, envs].reshape(-1).to(device)
            ratio = log_ratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean()
                clipfracs.append(float(((ratio - 1.0).abs() > config.clip_coef).float().mean()))
            mb_adv = advantages[:, envs].reshape(-1).to(device)
            if config.norm_adv:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            pg_loss = torch.max(
                -mb_adv * ratio, -mb_adv * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
            ).mean()
            mb_returns = returns[:, envs].reshape(-1).to(device)
            if config.clip_vloss:
                old = values[:, envs].reshape(-1).to(device)
                clipped = old + (new_values - old).clamp(-config.clip_coef, config.clip_coef)
                v_loss = 0.5 * torch.max((new_values - mb_returns) ** 2, (clipped - mb_returns) ** 2).mean()
            else:
                v_loss = 0.5 * ((new_values - mb_returns) ** 2).mean()
            entropy_loss = entropy.mean()
            loss = pg_loss - config.ent_coef * entropy_loss + config.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
            optimizer.step()
    flat_values, flat_returns = values.reshape(-1), returns.reshape(-1)
    variance = float(flat_returns.var())
    explained = float("nan") if variance == 0 else 1 - float((flat_returns - flat_values).var()) / variance
    return dict(
        policy_loss=pg_loss.item(),
        value_loss=v_loss.item(),
        entropy=entropy_loss.item(),
        approx_kl=approx_kl.item(),
        clipfrac=float(np.mean(clipfracs)),
        explained_variance=explained,
    )
