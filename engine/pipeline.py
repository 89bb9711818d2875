"""The main job as plain functions: checkpoint -> rollout -> saliency -> arrays, overlays, movie, figures.

``validate_job`` checks everything cheap first (settings, environment id, checkpoint, agent/game match) so a
bad override fails in a second with a clear message, before any rollout or scoring starts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import JobConfig, SaliencyConfig
from .device import resolve_device, resolve_dtype
from .errors import CheckpointError, EngineError
from .perturbation import perturbation_saliency, validate_settings
from .policy import ActorCritic, index_state, load_agent
from .registry import resolve_checkpoint
from .rollout import Rollout, make_env, rollout
from .storage import save_arrays

METHODS = ("perturbation", "jacobian", "both")
ALIGNMENTS = ("exact", "paper")
STYLES = ("paper", "clean")


@dataclass
class PreparedJob:
    config: JobConfig
    checkpoint: Path
    agent: ActorCritic


def paper_shift(states: tuple, previous: tuple | None = None) -> tuple[torch.Tensor, ...]:
    """The original code's off-by-one (spec, section 7): frame t gets the state the agent had one step
    earlier than the one it used (``states[t-1]``). ``previous`` is the state before the first frame (a
    chunk's predecessor); without one, the first frame gets the zero state of an episode start."""
    if previous is None:
        previous = tuple(torch.zeros_like(s[:1]) for s in states)
    return tuple(torch.cat([p.to(s.device, s.dtype), s[:-1]]) for p, s in zip(previous, states))


def paper_aligned_states(r: Rollout) -> tuple[torch.Tensor, ...]:
    """:func:`paper_shift` of a whole rollout's states."""
    return paper_shift(r.states)


def validate_job(config: JobConfig) -> PreparedJob:
    """Check settings, the environment id and the checkpoint, and load the agent; no rollout yet."""
    s = config.saliency
    if s.method not in METHODS:
        raise EngineError(f"saliency.method must be one of {METHODS}, got {s.method!r}")
    if s.state_alignment not in ALIGNMENTS:
        raise EngineError(f"saliency.state_alignment must be one of {ALIGNMENTS}, got {s.state_alignment!r}")
    if s.method != "jacobian":
        validate_settings(s.radius, s.density, s.interp, s.blur_sigma, s.compat)
    if s.frames_per_batch < 1:
        raise EngineError(f"saliency.frames_per_batch must be >= 1, got {s.frames_per_batch}")
    if config.rollout.steps < 1:
        raise EngineError(f"rollout.steps must be >= 1, got {config.rollout.steps}")
    st = config.store
    if not 0 <= st.shard < st.num_shards:
        raise EngineError(f"store.shard must be in 0..store.num_shards-1, got shard={st.shard} num_shards={st.num_shards}")
    if st.chunk_steps < 1 or st.frames_per_chunk < 1:
        raise EngineError("store.chunk_steps and store.frames_per_chunk must be >= 1")
    if st.rollout and config.rollout.max_episodes is not None:
        raise EngineError("rollout.max_episodes does not apply to a rollout store (it records rollout.steps steps): unset it")
    if config.render.style not in STYLES:
        raise EngineError(f"render.style must be one of {STYLES}, got {config.render.style!r}")
    if config.output.fps < 1 or config.output.scale < 1:
        raise EngineError("output.fps and output.scale must be >= 1")
    if config.agent.preprocessing != "greydanus2017":
        raise EngineError(f"agent.preprocessing {config.agent.preprocessing!r} is unknown: use greydanus2017")
    device, dtype = resolve_device(config.device), resolve_dtype(config.dtype)
    env = make_env(config.env.id)  # an unknown id fails here
    actions = env.action_space.n
    env.close()
    if config.render.style == "paper" and (config.render.actor_gain is None or config.render.critic_gain is None):
        from .rendering import paper_gains

        try:
            paper_gains(config.env.id)
        except ValueError as exc:  # a game without published gains
            raise EngineError(str(exc)) from None
    path = resolve_checkpoint(
        config.agent.checkpoint, config.agent.checkpoint_dirs, config.agent.cache_dir, config.agent.allow_download
    )
    agent = load_agent(path, device=device, dtype=dtype)
    if config.agent.core not in ("auto", agent.core):
        raise CheckpointError(f"agent.core is {config.agent.core!r} but {path} holds a {agent.core.upper()} agent")
    if agent.num_actions != actions:
        raise EngineError(
            f"{config.env.id} has {actions} actions but the agent from {path} has {agent.num_actions}: "
            "pair the checkpoint with the game it was trained on (e.g. env=breakout agent=baby_a3c_breakout)"
        )
    for index in config.output.stills:
        if not 0 <= index < config.rollout.steps:
            raise EngineError(f"output.stills: frame {index} is outside the rollout's 0..{config.rollout.steps - 1}")
    return PreparedJob(config, path, agent)


def compute_saliency(agent: ActorCritic, frames, states, s: SaliencyConfig, progress: bool = False) -> dict[str, torch.Tensor]:
    """Maps (and score grids) of every frame, scored ``s.frames_per_batch`` frames at a time (CPU tensors)."""
    n = frames.shape[0]
    batches = [(a, min(a + s.frames_per_batch, n)) for a in range(0, n, s.frames_per_batch)]
    parts: dict[str, list[torch.Tensor]] = {}
    bar = tqdm(total=n, desc="saliency", unit="frame", disable=not progress)
    for a, b in batches:
        state = index_state(states, slice(a, b))
        if s.method in ("perturbation", "both"):
            result = perturbation_saliency(
                agent, frames[a:b], state, radius=s.radius, density=s.density, interp=s.interp,
                blur_sigma=s.blur_sigma, compat=s.compat, chunk_size=s.chunk_size,
                memory_budget_mb=s.memory_budget_mb, incremental=s.incremental,
            )
            for key in ("actor", "critic", "actor_scores", "critic_scores"):
                parts.setdefault(key, []).append(getattr(result, key).cpu())
        if s.method in ("jacobian", "both"):
            from .jacobian import jacobian_saliency

            jac = jacobian_saliency(agent, frames[a:b], state, chunk_size=s.chunk_size)
            prefix = "" if s.method == "jacobian" else "jacobian_"
            parts.setdefault(prefix + "actor", []).append(jac.actor.detach().cpu())
            parts.setdefault(prefix + "critic", []).append(jac.critic.detach().cpu())
        bar.update(b - a)
    bar.close()
    return {k: torch.cat(v) for k, v in parts.items()}


def map_statistics(maps: dict) -> dict[str, float]:
    """Mean and max of each kind of map, for the sweep summary."""
    stats = {}
    for key in ("actor", "critic", "jacobian_actor", "jacobian_critic"):
        if key in maps:
            values = torch.as_tensor(maps[key]).double()
            stats[f"{key}_mean"], stats[f"{key}_max"] = float(values.mean()), float(values.max())
    return stats


def render_outputs(frames: torch.Tensor, maps: dict, config: JobConfig, out_dir: Path, agent, states) -> dict[str, Path]:
    """Overlays for every frame -> movie, stills, and (given ``states``) the Jacobian-vs-perturbation figure."""
    from . import rendering

    r, written = config.render, {}
    actor, critic = maps["actor"], maps["critic"]
    if r.style == "paper":
        default_actor, default_critic = (None, None)
        if r.actor_gain is None or r.critic_gain is None:
            default_actor, default_critic = rendering.paper_gains(config.env.id)
        overlays = rendering.paper_overlay_pair(
            frames, actor, critic,
            r.actor_gain if r.actor_gain is not None else default_actor,
            r.critic_gain if r.critic_gain is not None else default_critic,
            blur_sigma=r.blur_sigma,
        )
    else:
        actor_scale = rendering.movie_scales(actor, percentile=r.percentile)
        critic_scale = rendering.movie_scales(critic, percentile=r.percentile)
        overlays = rendering.clean_overlay(frames, actor, critic, actor_scale, critic_scale, alpha=r.alpha)
    o = config.output
    if o.movie:
        labels = [f"{config.env.id}  frame {t}" for t in range(frames.shape[0])]
        written["movie"] = rendering.write_movie(
            out_dir / "saliency.mp4", overlays, fps=o.fps, labels=labels, scale=o.scale, progress=config.progress
        )
    for t in o.stills:
        written[f"still_{t}"] = rendering.save_png(out_dir / f"frame_{t:05d}.png", overlays[t])
    if config.saliency.method != "jacobian" and states is not None:
        t = o.comparison_frame if o.comparison_frame is not None else frames.shape[0] // 2
        if not 0 <= t < frames.shape[0]:
            raise EngineError(f"output.comparison_frame {t} is outside the rollout's 0..{frames.shape[0] - 1}")
        from .jacobian import jacobian_saliency

        jac = maps.get("jacobian_actor"), maps.get("jacobian_critic")
        if jac[0] is None:
            one = jacobian_saliency(agent, frames[t : t + 1], index_state(states, slice(t, t + 1)))
            jac = (one.actor[0].detach().cpu(), one.critic[0].detach().cpu())
        else:
            jac = (jac[0][t], jac[1][t])
        written["comparison"] = rendering.comparison_figure(
            out_dir / f"jacobian_vs_perturbation_{t:05d}.png", frames[t], jac[0], jac[1], actor[t], critic[t],
            title=f"{config.env.id}, frame {t}: Jacobian vs perturbation saliency",
        )
    return {k: Path(v) for k, v in written.items()}


def run_job(config: JobConfig, prepared: PreparedJob | None = None) -> dict[str, Path]:
    """Run the main job into ``config.output.dir``; returns the paths written (and prints nothing)."""
    prepared = prepared or validate_job(config)
    if config.store.rollout:
        return run_store_job(config, prepared)
    agent, out_dir = prepared.agent, Path(config.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    played = rollout(
        agent, config.env.id, config.rollout.steps, seed=config.rollout.seed, greedy=config.rollout.greedy,
        max_episodes=config.rollout.max_episodes, progress=config.progress,
    )
    states = played.states if config.saliency.state_alignment == "exact" else paper_aligned_states(played)
    rollout_s = time.perf_counter() - started
    maps = compute_saliency(agent, played.frames, states, config.saliency, config.progress)
    saliency_s = time.perf_counter() - started - rollout_s
    settings = dict(config=asdict(config), checkpoint=str(prepared.checkpoint), frames=len(played),
                    frames_scored=len(played), rollout_seconds=rollout_s, saliency_seconds=saliency_s,
                    seconds_per_frame=saliency_s / len(played), episode_returns=played.episode_returns(),
                    **map_statistics(maps))
    written: dict[str, Path] = {}
    if config.output.arrays:
        written["rollout"] = save_arrays(
            out_dir / "rollout.npz",
            dict(frames=played.frames, logits=played.logits, values=played.values, actions=played.actions,
                 rewards=played.rewards, dones=played.dones,
                 **{f"state_{i}": s for i, s in enumerate(played.states)}),
            settings,
        )
        written["saliency"] = save_arrays(out_dir / "saliency.npz", maps, settings)
    written.update(render_outputs(played.frames, maps, config, out_dir, agent, states))
    return _write_summary(out_dir, settings, written)


def _write_summary(out_dir: Path, settings: dict, written: dict) -> dict[str, Path]:
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps({**settings, "written": {k: str(v) for k, v in written.items()}}, indent=2, default=str))
    return {**written, "summary": summary}


def run_store_job(config: JobConfig, prepared: PreparedJob) -> dict[str, Path]:
    """Streaming mode: record (or resume, or reuse) the rollout store, score this shard's chunks into the
    saliency store, and render once every chunk is there. Memory stays bounded by the chunk sizes, except
    for rendering the movie of a complete store (set output.movie=false for very long rollouts)."""
    from .registry import sha256_of
    from .store import RolloutStore, SaliencyStore, record_rollout, score_store

    agent, out_dir, st = prepared.agent, Path(config.output.dir), config.store
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = sha256_of(prepared.checkpoint)
    rollout_root = Path(st.rollout)
    started = time.perf_counter()
    if (rollout_root / "manifest.json").is_file() and RolloutStore.open(rollout_root).complete:
        rstore = RolloutStore.open(rollout_root)  # replay one recorded game, whoever played it
    else:
        player, player_path = agent, prepared.checkpoint
        if st.player:
            a = config.agent
            player_path = resolve_checkpoint(st.player, a.checkpoint_dirs, a.cache_dir, a.allow_download)
            player = load_agent(player_path, device=resolve_device(config.device), dtype=resolve_dtype(config.dtype))
        rstore = record_rollout(
            player, config.env.id, config.rollout.steps, rollout_root, seed=config.rollout.seed,
            greedy=config.rollout.greedy, chunk_steps=st.chunk_steps, checkpoint_sha256=sha256_of(player_path),
            extra={"checkpoint": str(player_path), "config": asdict(config)}, progress=config.progress,
        )
    if rstore.identity["env_id"] != config.env.id:
        raise EngineError(f"the rollout store {rollout_root} holds {rstore.identity['env_id']}, not {config.env.id}")
    rollout_s = time.perf_counter() - started
    saliency_root = Path(st.saliency) if st.saliency else out_dir / "saliency_store"
    before = set(SaliencyStore.open(saliency_root).missing()) if (saliency_root / "manifest.json").is_file() else None
    sstore = score_store(agent, rollout_root, saliency_root, config.saliency, sha, st.frames_per_chunk,
                         st.shard, st.num_shards, config.progress)
    saliency_s = time.perf_counter() - started - rollout_s
    bounds = sstore.bounds
    scored = sum(b - a for k, (a, b) in enumerate(bounds) if k % st.num_shards == st.shard and (before is None or k in before))
    present = [k for k in range(len(bounds)) if sstore.store.has(k)]
    stats = map_statistics({key: np.concatenate([sstore.store.read(k, (key,))[key] for k in present])
                            for key in ("actor", "critic") if config.saliency.method != "jacobian"}) if present else {}
    settings = dict(config=asdict(config), checkpoint=str(prepared.checkpoint), checkpoint_sha256=sha,
                    rollout_store=str(rollout_root), saliency_store=str(saliency_root), frames=rstore.num_steps,
                    frames_scored=scored, complete=sstore.complete, rollout_seconds=rollout_s,
                    saliency_seconds=saliency_s, seconds_per_frame=saliency_s / scored if scored else None, **stats)
    written: dict[str, Path] = {"rollout_store": rollout_root, "saliency_store": saliency_root}
    if sstore.complete and (config.output.movie or config.output.stills):
        maps = {k: torch.from_numpy(v) for k, v in sstore.read().items()}
        written.update(render_outputs(rstore.read().frames, maps, config, out_dir, agent, None))
    return _write_summary(out_dir, settings, written)
