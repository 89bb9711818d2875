"""The main job as plain functions: checkpoint -> rollout -> saliency -> arrays, overlays, movie, figures.

``validate_job`` checks everything cheap first (settings, environment id, checkpoint, agent/game match) so a
bad override fails in a second with a clear message, before any rollout or scoring starts. Progress and results
are logged (``logging``); the end-of-run statistics are accumulated chunk by chunk (:class:`MapStatistics`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .config import JobConfig, check_config, engine_saliency
from ..core.device import resolve_device, resolve_dtype
from ..core.errors import CheckpointError, EngineError
from ..core.policy import Policy, index_state
from ..core.saliency import compute_saliency, paper_shift
from ..env.pipelines import library_defaults
from ..env.rollout import make_env, rollout
from ..storage.arrays import save_arrays
from ..policies.registry import resolve_checkpoint
from ..policies.loading import load_policy

log = logging.getLogger(__name__)

# the files a job writes into its output directory (a saliency store there is resumable and checks its settings)
OWNED_FILES = ("saliency.mp4", "saliency.npz", "rollout.npz", "summary.json", "report.html")
OWNED_PATTERNS = ("frame_[0-9][0-9][0-9][0-9][0-9].png", "jacobian_vs_perturbation_[0-9][0-9][0-9][0-9][0-9].png")


@dataclass
class PreparedJob:
    config: JobConfig
    checkpoint: Path
    agent: Policy


def pipeline_options(config: JobConfig, agent: Policy) -> dict:
    """The environment-pipeline options of the job for ``agent``'s pipeline (``engine.env.pipelines``)."""
    e = config.env
    options = dict(repeat_action_probability=e.repeat_action_probability, full_action_space=e.full_action_space)
    if e.training_wrappers:
        trained = library_defaults(agent.pipeline)
        options.update({k: trained[k] for k in ("episodic_life", "clip_rewards") if k in trained})
    return options


def load_job_agent(config: JobConfig, path) -> Policy:
    """The agent of ``path`` as the job's settings ask (kind, device, dtype; the core of a 2017 agent)."""
    device, dtype = resolve_device(str(config.device)), resolve_dtype(str(config.dtype))
    agent = load_policy(path, device=device, dtype=dtype, kind=str(config.agent.kind))
    core = getattr(agent, "core", None)
    if core is not None and config.agent.core not in ("auto", core):
        raise CheckpointError(f"agent.core is {str(config.agent.core)!r} but {path} holds a {core.upper()} agent")
    return agent


def validate_job(config: JobConfig) -> PreparedJob:
    """Check the settings (:func:`engine.jobs.config.check_config`), the environment id and the checkpoints, and
    load the agent; no rollout yet."""
    check_config(config)
    quiet_emulator()
    env = make_env(config.env.id, full_action_space=config.env.full_action_space)  # an unknown id fails here
    actions = env.action_space.n
    env.close()
    if config.render.style == "paper" and (config.render.actor_gain is None or config.render.critic_gain is None):
        from ..viz.rendering import paper_gains

        try:
            paper_gains(config.env.id)
        except ValueError as exc:  # a game without published gains
            raise EngineError(str(exc)) from None
    a = config.agent
    path = resolve_checkpoint(a.checkpoint, a.checkpoint_dirs, a.cache_dir, a.allow_download)
    if config.store.player:
        resolve_checkpoint(config.store.player, a.checkpoint_dirs, a.cache_dir, a.allow_download)
    agent = load_job_agent(config, path)
    if agent.num_actions != actions:
        raise EngineError(
            f"{config.env.id} has {actions} actions but the agent from {path} has {agent.num_actions}: "
            "pair the checkpoint with the game it was trained on (e.g. env=breakout agent=baby_a3c_breakout)"
        )
    return PreparedJob(config, path, agent)


def quiet_emulator() -> None:
    """Keep the Arcade Learning Environment's banner off stderr (its warnings and errors still show)."""
    try:
        import ale_py

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    except (ImportError, AttributeError):
        pass


class MapStatistics:
    """Mean and max of each kind of map, accumulated chunk by chunk (a running float64 sum, count and max), so a
    long store job never holds all its maps at once."""

    KEYS = ("actor", "critic", "jacobian_actor", "jacobian_critic")

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.maxima: dict[str, float] = {}

    def update(self, maps: dict) -> None:
        for key in self.KEYS:
            if key not in maps:
                continue
            values = torch.as_tensor(maps[key]).double()
            if values.numel() == 0:
                continue
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
            self.counts[key] = self.counts.get(key, 0) + values.numel()
            self.maxima[key] = max(self.maxima.get(key, -math.inf), float(values.max()))

    def result(self) -> dict[str, float]:
        stats = {}
        for key in self.KEYS:
            if self.counts.get(key):
                stats[f"{key}_mean"] = self.sums[key] / self.counts[key]
                stats[f"{key}_max"] = self.maxima[key]
        return stats


def map_statistics(maps: dict) -> dict[str, float]:
    """Mean and max of each kind of map, for the sweep summary."""
    stats = MapStatistics()
    stats.update(maps)
    return stats.result()


def clear_owned_outputs(out_dir: Path) -> list[Path]:
    """Remove what an earlier job wrote into ``out_dir`` (the files a job owns, nothing else), so that a rerun
    never leaves a mix of two runs' results; returns the paths removed."""
    found = [out_dir / name for name in OWNED_FILES if (out_dir / name).is_file()]
    for pattern in OWNED_PATTERNS:
        found += sorted(p for p in out_dir.glob(pattern) if p.is_file())
    for path in found:
        path.unlink()
    if found:
        log.warning("removed %d files of an earlier run from %s (%s)", len(found), out_dir,
                    ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else ""))
    return found


def render_outputs(frames: torch.Tensor, maps: dict, config: JobConfig, out_dir: Path, agent, states, observations,
                   actions=None, action_names=()) -> dict[str, Path]:
    """Overlays for every frame -> movie, stills, and (given ``states`` and the ``observations`` the agent saw)
    the Jacobian-vs-perturbation figure. Movie frames are labelled with the action taken, by name."""
    from ..viz import rendering

    r, written = config.render, {}
    actor, critic = maps["actor"], maps["critic"]
    n = frames.shape[0]
    taken = [""] * n if actions is None else [f"  {name_of(a, action_names)}" for a in torch.as_tensor(actions).tolist()]
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
        labels = [f"{config.env.id}  frame {t}{taken[t]}" for t in range(n)]
        written["movie"] = rendering.write_movie(
            out_dir / "saliency.mp4", overlays, fps=o.fps, labels=labels, scale=o.scale, progress=config.progress
        )
    for t in o.stills:
        if t >= n:  # the rollout ended early (rollout.max_episodes)
            log.warning("output.stills: frame %d was not played (the rollout ended after %d frames)", t, n)
            continue
        written[f"still_{t}"] = rendering.save_png(out_dir / f"frame_{t:05d}.png", overlays[t])
    t = o.comparison_frame if o.comparison_frame is not None else n // 2
    if t >= n:
        log.warning("output.comparison_frame: frame %d was not played (the rollout ended after %d frames)", t, n)
    elif config.saliency.method != "jacobian" and states is not None:
        from ..core.jacobian import jacobian_saliency

        jac = maps.get("jacobian_actor"), maps.get("jacobian_critic")
        if jac[0] is None:
            one = jacobian_saliency(agent, observations[t : t + 1], index_state(states, slice(t, t + 1)))
            jac = (one.actor[0].detach().cpu(), one.critic[0].detach().cpu())
        else:
            jac = (jac[0][t], jac[1][t])
        written["comparison"] = rendering.comparison_figure(
            out_dir / f"jacobian_vs_perturbation_{t:05d}.png", frames[t], jac[0], jac[1], actor[t], critic[t],
            title=f"{config.env.id}, frame {t}{taken[t]}: Jacobian vs perturbation saliency",
        )
    return {k: Path(v) for k, v in written.items()}


def name_of(action: int, names) -> str:
    """An action's name (``NOOP``, ``FIRE``, ... from the environment), or its index where none is known."""
    return names[action] if action < len(names) else str(action)


def run_job(config: JobConfig, prepared: PreparedJob | None = None) -> dict[str, Path]:
    """Run the main job into ``config.output.dir``; returns the paths written (and prints nothing).

    Files that an earlier job wrote there are removed first (:func:`clear_owned_outputs`)."""
    prepared = prepared or validate_job(config)
    out_dir = Path(config.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_owned_outputs(out_dir)
    if config.store.rollout:
        return run_store_job(config, prepared)
    agent = prepared.agent
    started = time.perf_counter()
    played = rollout(
        agent, config.env.id, config.rollout.steps, seed=config.rollout.seed, greedy=config.rollout.greedy,
        max_episodes=config.rollout.max_episodes, progress=config.progress, **pipeline_options(config, agent),
    )
    states = played.states if config.saliency.state_alignment == "exact" else paper_shift(played.states)
    rollout_s = time.perf_counter() - started
    log.info("played %d steps of %s in %.1f s", len(played), config.env.id, rollout_s)
    maps = compute_saliency(agent, played.observations, states, engine_saliency(config.saliency), config.progress,
                            actions=played.actions)
    saliency_s = time.perf_counter() - started - rollout_s
    log.info("saliency of %d frames in %.1f s (%.3f s per frame)", len(played), saliency_s, saliency_s / len(played))
    metrics = job_metrics(config, agent, played, states, maps)
    settings = dict(config=asdict(config), checkpoint=str(prepared.checkpoint), frames=len(played),
                    **({"metrics": metrics} if metrics else {}),
                    frames_scored=len(played), rollout_seconds=rollout_s, saliency_seconds=saliency_s,
                    seconds_per_frame=saliency_s / len(played), episode_returns=played.episode_returns(),
                    pipeline=played.pipeline, action_names=list(played.action_names),
                    action_counts=action_counts(played.actions, played.action_names), **map_statistics(maps))
    written: dict[str, Path] = {}
    if config.output.arrays:
        written["rollout"] = save_arrays(
            out_dir / "rollout.npz",
            dict(frames=played.frames, observations=played.observations, logits=played.logits, values=played.values,
                 actions=played.actions,
                 rewards=played.rewards, dones=played.dones,
                 **{f"state_{i}": s for i, s in enumerate(played.states)}),
            settings,
        )
        written["saliency"] = save_arrays(out_dir / "saliency.npz", maps, settings)
    written.update(render_outputs(played.frames, maps, config, out_dir, agent, states, played.observations,
                                  actions=played.actions, action_names=played.action_names))
    if config.output.report:
        written["report"] = job_report(out_dir / "report.html", config, settings, played.frames, maps, played)
    return _write_summary(out_dir, settings, written)


def job_report(path: Path, config: JobConfig, settings: dict, frames, maps: dict, series) -> Path:
    """``report.html`` of a job (:func:`engine.viz.report.write_report`): ``frames`` (T, 210, 160, 3) and ``maps``
    (kind -> (T, H, W)) as array-likes read window by window; ``series`` has ``values``, ``actions``, ``rewards``,
    ``dones`` (T,) and ``action_names``."""
    from ..viz.report import MAP_KINDS, write_report

    shown = {k: v for k, v in settings.items() if k not in ("action_counts",)}
    return write_report(
        path, frames, {k: maps[k] for k in MAP_KINDS if k in maps}, values=series.values, actions=series.actions,
        rewards=series.rewards, dones=series.dones, action_names=series.action_names,
        title=f"{config.env.id}: {Path(str(settings['checkpoint'])).name}, {config.saliency.method} saliency",
        settings=shown, checkpoint=str(settings["checkpoint"]),
    )


class StoreSeries:
    """A rollout store as the array-likes a report reads: ``frames``, ``values``, ``actions``, ``rewards``,
    ``dones`` (each ``x[a:b]`` reads steps a..b-1 through ``RolloutStore.read``; the last window is kept, so the
    five fields of one window cost one read), and ``action_names``."""

    def __init__(self, rstore):
        from ..core.preprocessing import FRAME_SHAPE
        from ..viz.report import WindowedArray

        self.rstore, self._last = rstore, (None, None)
        n = rstore.num_steps
        self.frames = WindowedArray(lambda a, b: self._window(a, b).frames, (n, *FRAME_SHAPE))
        for name in ("values", "actions", "rewards", "dones"):
            setattr(self, name, WindowedArray(lambda a, b, name=name: getattr(self._window(a, b), name), (n,)))
        self.action_names = tuple(rstore.identity.get("action_names", ()))

    def _window(self, a: int, b: int):
        if self._last[0] != (a, b):
            self._last = ((a, b), self.rstore.read(a, b))
        return self._last[1]


def store_maps(sstore, num_frames: int) -> dict:
    """The maps of a complete saliency store as array-likes (kind -> (T, H, W)) that read only the store chunks
    holding a window (through ``ChunkStore.read(k, keys)``, the call the statistics stream with too)."""
    from ..viz.report import MAP_KINDS, WindowedArray

    first = sstore.store.read(0)
    bounds = sstore.bounds

    def read(kind: str, a: int, b: int):
        parts = [(lo, sstore.store.read(k, (kind,))[kind]) for k, (lo, hi) in enumerate(bounds) if lo < b and hi > a]
        joined = parts[0][1] if len(parts) == 1 else np.concatenate([part for _, part in parts])
        return joined[a - parts[0][0] : b - parts[0][0]]

    return {kind: WindowedArray(lambda a, b, kind=kind: read(kind, a, b), (num_frames, *first[kind].shape[1:]))
            for kind in MAP_KINDS if kind in first}


def metrics_summary(config: JobConfig, agent: Policy):
    """The streaming accumulator of the job's faithfulness metrics (engine.metrics.faithfulness), or None when off."""
    m = config.metrics
    if not (m.deletion_insertion or m.objects or m.stability):
        return None
    from ..metrics.faithfulness import MetricsSummary
    from ..core.preprocessing import CROP_ROWS
    from ..metrics.regions import game_of

    game = game_of(config.env.id)
    if m.objects and game is None:
        log.warning("metrics.objects: no object colours are known for %s (only Pong, Breakout, SpaceInvaders)", config.env.id)
    return MetricsSummary(kinds=list(m.kinds), steps=m.steps, deletion_insertion=m.deletion_insertion,
                          random_baseline=m.random_baseline, objects=m.objects, stability=m.stability, game=game,
                          rows=CROP_ROWS if agent.pipeline == "greydanus2017" else None, distance=m.distance, seed=m.seed)


def sanity_metrics(config: JobConfig, agent: Policy, observations, dones, actions) -> dict:
    """Cascading randomisation on ``metrics.sanity_frames`` frames evenly spaced over ``observations`` (the first
    ``metrics.sanity_window`` steps), the maps recomputed with the job's saliency settings."""
    from ..metrics.faithfulness import sanity_check

    m, s = config.metrics, engine_saliency(config.saliency)
    n = observations.shape[0]
    picks = torch.linspace(0, n - 1, min(m.sanity_frames, n)).round().long().unique()
    taken = torch.as_tensor(actions)[picks]

    def maps_fn(policy, obs, states):
        maps = compute_saliency(policy, obs, states, s, actions=taken)
        return {k: maps[k] for k in m.kinds if k in maps}

    result = sanity_check(agent, observations, maps_fn, dones=dones, frames=picks, seed=m.seed)
    return {**result.summary(), "frames": picks.tolist(), "stages": [list(stage) for stage in result.stages]}


def job_metrics(config: JobConfig, agent: Policy, played, states, maps: dict) -> dict:
    """The metrics of an in-memory job (``metrics=...``), over the frames in chunks of ``store.frames_per_chunk``."""
    out: dict = {}
    summary = metrics_summary(config, agent)
    if summary is not None:
        step = config.store.frames_per_chunk
        for a in range(0, len(played), step):
            b = min(a + step, len(played))
            summary.update(agent, played.observations[a:b], index_state(states, slice(a, b)),
                           {k: v[a:b] for k, v in maps.items()}, played.actions[a:b], played.frames[a:b], played.dones[a:b])
        out.update(summary.result())
    if config.metrics.sanity:
        w = min(len(played), config.metrics.sanity_window)
        out["sanity"] = sanity_metrics(config, agent, played.observations[:w], played.dones[:w], played.actions[:w])
    return out


def store_metrics(config: JobConfig, agent: Policy, rstore, sstore) -> dict:
    """The metrics of a store job, streamed chunk by chunk from the rollout and saliency stores (every scored chunk);
    the agent's states come from replaying the recorded game through it, carried across chunks."""
    from ..core.replay import replay_states

    out: dict = {}
    summary = metrics_summary(config, agent)
    if summary is not None:
        kinds = tuple(k for k in config.metrics.kinds if k in ("actor", "critic") or config.saliency.method == "both")
        if config.saliency.method == "jacobian":
            kinds = tuple(k.removeprefix("jacobian_") for k in config.metrics.kinds)
        state = None
        for k, (a, b) in enumerate(sstore.bounds):
            recorded = rstore.read(a, b)
            states, state = replay_states(agent, recorded.observations, recorded.dones, state, with_next=True)
            if sstore.store.has(k):
                maps = {key: torch.from_numpy(v) for key, v in sstore.store.read(k, kinds).items()}
                summary.update(agent, recorded.observations, states, maps, recorded.actions, recorded.frames, recorded.dones)
        out.update(summary.result())
    if config.metrics.sanity:
        recorded = rstore.read(0, min(rstore.num_steps, config.metrics.sanity_window))
        out["sanity"] = sanity_metrics(config, agent, recorded.observations, recorded.dones, recorded.actions)
    return out


def action_counts(actions, names) -> dict[str, int]:
    """How often each action was taken, by name (for the summary)."""
    counts = torch.bincount(torch.as_tensor(actions).long(), minlength=len(names)).tolist()
    return {name: int(c) for name, c in zip(names, counts)}


def _write_summary(out_dir: Path, settings: dict, written: dict) -> dict[str, Path]:
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps({**settings, "written": {k: str(v) for k, v in written.items()}}, indent=2, default=str))
    return {**written, "summary": summary}


# settings that tell the jobs of a sweep apart on the sweep page (those that differ label each job's panel)
_SWEPT_COLUMNS = ("checkpoint", "method", "radius", "density", "interp", "compat", "state_alignment")


def sweep_report(sweep_dir: Path, rows: list[dict], columns) -> Path:
    """``report.html`` of a multirun in ``sweep_dir`` (``rows``: summary.csv's rows, ``columns`` its header).

    Jobs that replayed one recorded game (the same ``store.rollout``, each saliency store complete) are shown side
    by side on the same frame, one panel per saliency store (shards of one store are one panel), labelled by the
    settings that differ; otherwise the page has the sortable table and links to each job's ``report.html``."""
    from ..viz.report import Panel, write_sweep_report
    from ..storage.store import RolloutStore, SaliencyStore

    sweep_dir = Path(sweep_dir)
    links = {row["job"]: f"{row['job']}/report.html" for row in rows if (sweep_dir / row["job"] / "report.html").is_file()}
    summaries = {row["job"]: json.loads((sweep_dir / row["job"] / "summary.json").read_text()) for row in rows}
    games = {s.get("rollout_store") for s in summaries.values()}
    path = sweep_dir / "report.html"
    shared = len(games) == 1 and None not in games and rows and all(s.get("complete") for s in summaries.values())
    if not shared:
        log.info("sweep report: the jobs did not all replay one complete recorded game; table and links only")
        return write_sweep_report(path, rows, columns, links=links, title=f"sweep {sweep_dir.name}: {len(rows)} jobs")
    swept = [c for c in _SWEPT_COLUMNS if len({str(row.get(c)) for row in rows}) > 1]
    rstore = RolloutStore.open(next(iter(games)))
    recorded, panels, seen = StoreSeries(rstore), [], {}
    for row in rows:
        store = summaries[row["job"]]["saliency_store"]
        if store in seen:  # another shard of a store already shown
            seen[store].label += f", {row['job']}"
            continue
        label = f"job {row['job']}: " + (", ".join(
            f"{c}={Path(str(row[c])).name if c == 'checkpoint' else row[c]}" for c in swept) or "same settings")
        seen[store] = Panel(row["job"], store_maps(SaliencyStore.open(store), rstore.num_steps), label=label,
                            link=links.get(row["job"]))
        panels.append(seen[store])
    return write_sweep_report(
        path, rows, columns, frames=recorded.frames, panels=panels, values=recorded.values, actions=recorded.actions,
        rewards=recorded.rewards, dones=recorded.dones, action_names=recorded.action_names, links=links,
        title=f"sweep {sweep_dir.name}: {len(panels)} jobs on one recorded game of {rstore.identity['env_id']}",
        settings={"rollout_store": next(iter(games)), "swept": swept},
    )


def run_store_job(config: JobConfig, prepared: PreparedJob) -> dict[str, Path]:
    """Streaming mode: record (or resume, or reuse) the rollout store, score this shard's chunks into the
    saliency store, and render once every chunk is there. Memory stays bounded by the chunk sizes, except
    for rendering the movie of a complete store (set output.movie=false for very long rollouts)."""
    from ..policies.registry import sha256_of
    from ..storage.store import RolloutStore, SaliencyStore, is_url, store_exists
    from .record import record_rollout
    from .score import score_store

    agent, out_dir, st = prepared.agent, Path(config.output.dir), config.store
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = sha256_of(prepared.checkpoint)
    rollout_root = st.rollout if is_url(st.rollout) else Path(st.rollout)  # a path or an fsspec URL (s3://...)
    started = time.perf_counter()
    if store_exists(rollout_root) and RolloutStore.open(rollout_root).complete:
        rstore = RolloutStore.open(rollout_root)  # replay one recorded game, whoever played it
    else:
        player, player_path = agent, prepared.checkpoint
        if st.player:
            a = config.agent
            player_path = resolve_checkpoint(st.player, a.checkpoint_dirs, a.cache_dir, a.allow_download)
            player = load_job_agent(config, player_path)
        rstore = record_rollout(
            player, config.env.id, config.rollout.steps, rollout_root, seed=config.rollout.seed,
            greedy=config.rollout.greedy, chunk_steps=st.chunk_steps, checkpoint_sha256=sha256_of(player_path),
            extra={"checkpoint": str(player_path), "config": asdict(config)}, progress=config.progress,
            **pipeline_options(config, player),
        )
    if rstore.identity["env_id"] != config.env.id:
        raise EngineError(f"the rollout store {rollout_root} holds {rstore.identity['env_id']}, not {config.env.id}")
    recorded = rstore.identity["pipeline"]
    if (recorded["name"], recorded["frame_stack"]) != (agent.pipeline, agent.frame_stack):
        raise EngineError(
            f"the rollout store {rollout_root} was recorded in the {recorded['name']} pipeline ({recorded['frame_stack']} "
            f"frames stacked), but this agent sees the {agent.pipeline} pipeline ({agent.frame_stack}): replay a game "
            "recorded for agents of the same kind"
        )
    rollout_s = time.perf_counter() - started
    saliency_root = (st.saliency if is_url(st.saliency) else Path(st.saliency)) if st.saliency else out_dir / "saliency_store"
    before = set(SaliencyStore.open(saliency_root).missing()) if store_exists(saliency_root) else None
    sstore = score_store(agent, rollout_root, saliency_root, engine_saliency(config.saliency), sha, st.frames_per_chunk,
                         st.shard, st.num_shards, config.progress)
    saliency_s = time.perf_counter() - started - rollout_s
    bounds = sstore.bounds
    scored = sum(b - a for k, (a, b) in enumerate(bounds) if k % st.num_shards == st.shard and (before is None or k in before))
    log.info("scored %d frames into %s in %.1f s", scored, saliency_root, saliency_s)
    streamed = MapStatistics()  # chunk by chunk: memory stays bounded by one chunk
    if config.saliency.method != "jacobian":
        for k in range(len(bounds)):
            if sstore.store.has(k):
                streamed.update(sstore.store.read(k, ("actor", "critic")))
    stats = streamed.result()
    metrics = store_metrics(config, agent, rstore, sstore)
    if metrics:
        stats["metrics"] = metrics
    settings = dict(config=asdict(config), checkpoint=str(prepared.checkpoint), checkpoint_sha256=sha,
                    rollout_store=str(rollout_root), saliency_store=str(saliency_root), frames=rstore.num_steps,
                    frames_scored=scored, complete=sstore.complete, rollout_seconds=rollout_s,
                    saliency_seconds=saliency_s, seconds_per_frame=saliency_s / scored if scored else None, **stats)
    written: dict[str, Path] = {"rollout_store": rollout_root, "saliency_store": saliency_root}
    if sstore.complete and (config.output.movie or config.output.stills):
        maps = {k: torch.from_numpy(v) for k, v in sstore.read().items()}
        recorded = rstore.read()
        written.update(render_outputs(recorded.frames, maps, config, out_dir, agent, None, None,
                                      actions=recorded.actions, action_names=recorded.action_names))
    if config.output.report and sstore.complete:  # streamed from the stores, one window of frames at a time
        recorded = StoreSeries(rstore)
        written["report"] = job_report(out_dir / "report.html", config, settings, recorded.frames,
                                       store_maps(sstore, rstore.num_steps), recorded)
    elif config.output.report:
        log.info("report.html waits for the saliency store to be complete (the other shards' chunks)")
    return _write_summary(out_dir, settings, written)
