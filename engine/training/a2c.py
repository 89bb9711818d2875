"""``python -m engine.training``: advantage actor-critic (A2C) training of the spec's agent on any ALE game.

Synchronous A2C over vectorised environments with the 2017 preprocessing, an LSTM (default) or GRU core,
n-step returns with GAE, entropy regularisation, gradient-norm clipping (the baby-a3c hyper-parameters:
Adam 1e-4, gamma 0.99, 20-step rollouts, rewards clipped to [-1, 1]). Every ``checkpoint_every`` frames it
writes ``<run>/checkpoints/step_<frames>.pt`` (a plain state dict that ``engine.load_agent`` reads) with a
``.json`` beside it (game, frames, mean episode reward), and ``<run>/resume.pt`` (agent, optimizer, counters,
RNG states): started again on the same run directory it continues from there. ``resume.pt`` holds tensors and
plain Python types only and is read with ``torch.load(weights_only=True)``, so it cannot run code; a file that
holds anything else is refused. Seeding happens in one place, ``seed_all``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.device import resolve_device
from ..core.errors import EngineError
from ..core.files import atomic_write
from ..core.preprocessing import SIZE, preprocess_bytes
from ..env.rollout import make_env
from ..policies.greydanus2017 import ActorCritic
from .resume import RESUME_FILE, load_resume_file, load_training_state, resume_of, rng_state, save_torch


@dataclass
class TrainConfig:
    """Settings of :func:`train`; also the schema of ``configs/train.yaml`` (registered as ``train_schema``), so
    the YAML holds only Hydra's settings. The choices stay plain strings: the resume state stores this config
    and is read with ``weights_only=True``."""

    env_id: str = "Pong-v4"
    core: str = "lstm"  # lstm (the paper's agents) | gru (baby-a3c's)
    hidden_size: int = 256
    num_envs: int = 16
    vector: str = "async"  # async (env workers in processes) | sync; async measured faster on 2 cores
    rollout_steps: int = 20
    total_frames: int = 5_000_000  # agent steps summed over environments (as baby-a3c counts them)
    optimizer: str = "rmsprop"  # rmsprop (the A2C baselines' choice) | adam (baby-a3c's)
    lr: float = 7e-4
    rmsprop_alpha: float = 0.99
    optimizer_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    checkpoint_every: int = 250_000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    run_dir: str = "runs/train_${env_id}_${core}"  # resolved by Hydra, or by __post_init__ from Python
    progress: bool = True  # a progress bar where stderr is a terminal

    CHOICES = {"core": ("lstm", "gru"), "vector": ("async", "sync"), "optimizer": ("rmsprop", "adam")}

    def __post_init__(self) -> None:
        if isinstance(self.run_dir, str):
            self.run_dir = self.run_dir.replace("${env_id}", str(self.env_id)).replace("${core}", str(self.core))
            self.run_dir = os.path.expanduser(self.run_dir)  # a quoted '~/runs' is the home folder, as in a shell

    def check(self) -> None:
        """Raise :class:`EngineError` (one line, naming the option) at the first setting out of range."""
        import math

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name, options in self.CHOICES.items():
            if getattr(self, name) not in options:
                raise EngineError(f"{name} must be one of {', '.join(options)}, got {getattr(self, name)!r}")
        for name in ("hidden_size", "num_envs", "rollout_steps", "total_frames", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EngineError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise EngineError(f"seed must be in 0..2**32-1, got {self.seed!r}")
        for name in ("lr", "optimizer_eps", "max_grad_norm"):
            if not (number(getattr(self, name)) and getattr(self, name) > 0):
                raise EngineError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda", "rmsprop_alpha"):
            if not (number(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise EngineError(f"{name} must be in 0..1, got {getattr(self, name)!r}")
        for name in ("entropy_coef", "value_coef"):
            if not (number(getattr(self, name)) and getattr(self, name) >= 0):
                raise EngineError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not self.run_dir:
            raise EngineError("run_dir must name a directory")
        resolve_device(self.device)  # an unknown device, or cuda without CUDA, fails here


def session_seeds(config: TrainConfig, frames: int) -> list[int]:
    """The environments' seeds of a session that starts at ``frames``: a resumed run re-creates its emulators with
    seeds of their own, ``seed + stride * k + i`` for the k-th checkpoint, with a stride of at least ``num_envs``
    so that no two sessions share a seed."""
    stride = max(1000, config.num_envs)
    first = config.seed + stride * (frames // config.checkpoint_every)
    return [first + i for i in range(config.num_envs)]


def seed_all(seed: int) -> None:
    """The one place where randomness is seeded (python, numpy, torch); environments get ``seed + i``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_preprocessed_env(env_id: str):
    """An ALE env whose observations are the spec's 80x80 uint8 images (``preprocess_bytes``, the same code the
    engine uses), so preprocessing runs in the env workers, in parallel, and only 6.4 KB a frame crosses to
    the learner."""
    import gymnasium as gym

    torch.set_num_threads(1)  # one worker per env process; the learner keeps the cores' threads
    env = make_env(env_id)
    space = gym.spaces.Box(0, 255, (SIZE, SIZE), np.uint8)
    return gym.wrappers.TransformObservation(env, lambda frame: preprocess_bytes(frame[None])[0].numpy(), space)


def make_vector_env(config: TrainConfig):
    import gymnasium as gym

    make_env(config.env_id).close()  # a clear error for an unknown id, before any worker starts
    fns = [lambda: make_preprocessed_env(config.env_id) for _ in range(config.num_envs)]
    # an environment whose episode ends is reset in the same step: the next step's observation is the new
    # episode's (gymnasium's default, the next step, would step with an action it ignores and train on it)
    mode = gym.vector.AutoresetMode.SAME_STEP
    vector = gym.vector.AsyncVectorEnv if config.vector == "async" else gym.vector.SyncVectorEnv
    return vector(fns, autoreset_mode=mode)


def as_inputs(obs: np.ndarray, device: torch.device) -> torch.Tensor:
    """Vector-env observations uint8 (N, 80, 80) -> agent inputs (N, 1, 80, 80) float32, as ``preprocess_frames``."""
    return (torch.from_numpy(obs).to(device).to(torch.float32) / 255)[:, None]


def make_optimizer(agent: ActorCritic, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            agent.parameters(), lr=config.lr, alpha=config.rmsprop_alpha, eps=config.optimizer_eps
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(agent.parameters(), lr=config.lr, eps=config.optimizer_eps)
    raise EngineError(f"optimizer must be rmsprop or adam, got {config.optimizer!r}")


# --- resume state -------------------------------------------------------------------------------------------
#
# ``<run>/resume.pt`` is read back with ``torch.load(weights_only=True)``: tensors, dicts, lists, str, int, float,
# bool and None only. So the RNG states are stored as such (numpy's MT19937 key as an int64 tensor, python's
# state as nested lists of ints), not as the numpy arrays and tuples the RNG APIs hand out.

RESUME_FORMAT = 2  # 1: the pickled (weights_only=False) format of earlier versions, no longer read
_RESUME_FIELDS = {
    "format": int,
    "agent": dict,
    "optimizer": dict,
    "frames": int,
    "next_checkpoint": int,
    "returns": list,
    "config": dict,
    "wall_seconds": float,
    "rng": dict,
}


def save_resume(
    path: Path,
    agent: ActorCritic,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    frames: int,
    next_checkpoint: int,
    returns,
    wall_seconds: float,
) -> None:
    """Write everything a resumed run needs (atomically), in a form ``torch.load(weights_only=True)`` reads."""
    save_torch(
        dict(
            format=RESUME_FORMAT,
            agent=agent.state_dict(),
            optimizer=optimizer.state_dict(),
            frames=int(frames),
            next_checkpoint=int(next_checkpoint),
            returns=[float(r) for r in returns],
            config=asdict(config),
            wall_seconds=float(wall_seconds),
            rng=rng_state(),
        ),
        path,
    )


def load_resume(path: Path) -> dict | None:
    """The resume state in ``path`` (None if there is none), read with ``weights_only=True`` and checked."""
    resume = load_resume_file(path, _RESUME_FIELDS)
    if resume is not None and resume["format"] != RESUME_FORMAT:
        raise EngineError(f"{path} is not a resume state of this version (format {RESUME_FORMAT}): delete or move it")
    return resume


def restore_resume(resume: dict, agent: ActorCritic, optimizer: torch.optim.Optimizer):
    """Load agent, optimizer and RNG states; returns ``(frames, next_checkpoint, returns, wall_seconds)``."""
    load_training_state(resume, agent, optimizer)
    return resume["frames"], resume["next_checkpoint"], deque(resume["returns"], maxlen=100), resume["wall_seconds"]


RESUMABLE = frozenset({"total_frames", "device", "run_dir", "progress"})  # what may change when a run goes on


def check_resume(config: TrainConfig) -> dict | None:
    """The resume state in ``config.run_dir`` (None: a new run), refused where it was trained with other settings
    than ``config`` beyond :data:`RESUMABLE`."""
    return resume_of(Path(config.run_dir), load_resume, config, RESUMABLE)


def train(config: TrainConfig) -> Path:
    """Train (or resume) into ``config.run_dir``; returns the path of the last checkpoint written."""
    if config.core not in ("lstm", "gru"):
        raise EngineError(f"core must be lstm or gru, got {config.core!r}")
    if config.vector not in ("sync", "async"):
        raise EngineError(f"vector must be sync or async, got {config.vector!r}")
    if config.optimizer not in ("rmsprop", "adam"):
        raise EngineError(f"optimizer must be rmsprop or adam, got {config.optimizer!r}")
    if config.num_envs < 1 or config.rollout_steps < 1 or config.total_frames < 1 or config.checkpoint_every < 1:
        raise EngineError("num_envs, rollout_steps, total_frames and checkpoint_every must be >= 1")
    run_dir = Path(config.run_dir)
    resume = check_resume(config)  # before any environment worker starts
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    seed_all(config.seed)
    envs = make_vector_env(config)
    agent = ActorCritic(envs.single_action_space.n, core=config.core, hidden_size=config.hidden_size).to(device)
    optimizer = make_optimizer(agent, config)
    frames, next_checkpoint = 0, config.checkpoint_every
    returns: deque[float] = deque(maxlen=100)
    earlier_seconds = 0.0  # wall time of the sessions before a resume, so checkpoints report the total
    if resume is not None:
        try:
            frames, next_checkpoint, returns, earlier_seconds = restore_resume(resume, agent, optimizer)
        except BaseException:
            envs.close()
            raise
    obs, _ = envs.reset(seed=session_seeds(config, frames))
    state = agent.initial_state(config.num_envs)
    episode_return = np.zeros(config.num_envs)
    last_path = run_dir / "checkpoints" / f"step_{frames}.pt"
    bar = tqdm(
        total=config.total_frames,
        initial=frames,
        desc=f"train {config.env_id}",
        unit="frame",
        disable=not config.progress,
    )
    started, first_frames = time.perf_counter(), frames
    try:
        while frames < config.total_frames:
            state = tuple(s.detach() for s in state)
            log_probs, values, entropies, rewards, masks = [], [], [], [], []
            for _ in range(config.rollout_steps):
                out = agent(as_inputs(obs, device), state)
                dist = torch.distributions.Categorical(logits=out.logits)
                action = dist.sample()
                obs, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
                done = np.logical_or(terminated, truncated)
                episode_return += reward
                for r in episode_return[done]:
                    returns.append(float(r))
                episode_return[done] = 0
                keep = torch.as_tensor(~done, dtype=torch.float32, device=device)[:, None]
                state = tuple(s * keep for s in out.state)  # zero state after an episode ends
                log_probs.append(dist.log_prob(action))
                entropies.append(dist.entropy())
                values.append(out.value)
                rewards.append(torch.as_tensor(np.clip(reward, -1, 1), dtype=torch.float32, device=device))
                masks.append(keep[:, 0])
            with torch.no_grad():
                next_value = agent(as_inputs(obs, device), state).value
            steps: list[torch.Tensor] = []
            gae = torch.zeros_like(next_value)
            for t in reversed(range(config.rollout_steps)):
                following = next_value if t == config.rollout_steps - 1 else values[t + 1].detach()
                delta = rewards[t] + config.gamma * following * masks[t] - values[t].detach()
                gae = delta + config.gamma * config.gae_lambda * masks[t] * gae
                steps.insert(0, gae)
            advantages = torch.stack(steps)
            value_targets = advantages + torch.stack(values).detach()
            policy_loss = -(torch.stack(log_probs) * advantages).mean()
            value_loss = F.mse_loss(torch.stack(values), value_targets)
            loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * torch.stack(entropies).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
            optimizer.step()
            frames += config.rollout_steps * config.num_envs
            bar.update(config.rollout_steps * config.num_envs)
            if returns:
                bar.set_postfix(
                    reward=f"{np.mean(returns):.2f}",
                    fps=f"{(frames - first_frames) / (time.perf_counter() - started):.0f}",
                )
            if frames >= next_checkpoint or frames >= config.total_frames:
                wall_seconds = earlier_seconds + time.perf_counter() - started
                last_path = save_checkpoint(run_dir, agent, config, frames, returns, wall_seconds)
                next_checkpoint = (frames // config.checkpoint_every + 1) * config.checkpoint_every
                save_resume(
                    run_dir / RESUME_FILE, agent, optimizer, config, frames, next_checkpoint, returns, wall_seconds
                )
    finally:
        bar.close()
        envs.close()
    return last_path


def save_checkpoint(run_dir: Path, agent, config: TrainConfig, frames: int, returns, wall_seconds: float) -> Path:
    """``<run>/checkpoints/step_<frames>.pt`` (the agent's state dict) and its ``.json`` metadata."""
    path = run_dir / "checkpoints" / f"step_{frames}.pt"
    meta = dict(
        game=config.env_id,
        frames=frames,
        core=config.core,
        mean_episode_reward=float(np.mean(returns)) if returns else None,
        episodes=len(returns),
        wall_seconds=round(wall_seconds, 1),
    )
    with atomic_write(path.with_suffix(".json")) as tmp:  # read by registry.metadata_game: never half written
        tmp.write_text(json.dumps(meta, indent=2))
    save_torch(agent.state_dict(), path)  # after its metadata: a checkpoint file is never without it
    return path
