"""The main job as plain functions: checkpoint -> rollout store -> saliency store -> statistics, metrics, arrays,
overlays, movie, figures, report, summary (:func:`run_job`: one path, the stores on disk or in memory).

``validate_job`` checks everything cheap first (settings, environment id, checkpoints, the agent's game and
actions, the stores' manifests) so a bad override fails in a second with a clear message, before any rollout or
scoring starts and before anything in the output directory is touched: a refused job leaves an earlier run there as
it was. Progress and results are logged (``logging``); the end-of-run statistics are accumulated chunk by chunk
(:class:`MapStatistics`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from zarr.storage import MemoryStore

from ..core.device import resolve_device, resolve_dtype
from ..core.errors import CheckpointError, EngineError
from ..core.policy import Policy, index_state
from ..core.saliency import compute_saliency
from ..core.settings import MAP_KINDS, map_names, selected_methods, validate_method_settings
from ..env.pipelines import library_defaults
from ..env.rollout import Rollout, make_env
from ..policies.loading import load_policy
from ..policies.registry import (
    BUILTIN_PREFIX,
    TrainedGame,
    ale_game,
    known_checkpoint,
    resolve_checkpoint,
    same_game,
    sha256_of,
    trained_game,
)
from ..storage.arrays import save_arrays
from ..storage.store import (
    ROLLOUT_FIELDS,
    ChunkStore,
    RolloutStore,
    SaliencyStore,
    StoreMismatchError,
    check_writable,
    is_memory,
    is_url,
    store_exists,
    store_root,
    writing_needed,
)
from .config import JobConfig, bundled_envs, check_config, engine_saliency
from .overlap import run_overlapped
from .record import Recording, open_recording, rollout_identity
from .score import Scoring, open_scoring, saliency_identity, scored_states, uses_recorded_states

if TYPE_CHECKING:
    from gymnasium.spaces import Discrete

    from ..viz.report import Panel, WindowedArray

log = logging.getLogger(__name__)

# the files a job writes into its output directory (a saliency store there is resumable and checks its settings)
OWNED_FILES = ("saliency.mp4", "saliency.npz", "rollout.npz", "summary.json", "report.html")
OWNED_PATTERNS = ("frame_[0-9][0-9][0-9][0-9][0-9].png", "jacobian_vs_perturbation_[0-9][0-9][0-9][0-9][0-9].png")


@dataclass
class PreparedJob:
    """A job whose settings, environment, agents and stores are checked (:func:`validate_job`): its agent loaded,
    ``store.player``'s too (None: the agent plays), and what the job says once it runs (``warnings``: logged, and
    kept in summary.json)."""

    config: JobConfig
    checkpoint: Path
    agent: Policy
    player: Policy | None = None
    player_checkpoint: Path | None = None
    warnings: list[str] = field(default_factory=list)


def pipeline_options(config: JobConfig, agent: Policy) -> dict:
    """The environment-pipeline options of the job for ``agent``'s pipeline (``engine.env.pipelines``)."""
    e = config.env
    options: dict[str, object] = dict(
        repeat_action_probability=e.repeat_action_probability, full_action_space=e.full_action_space
    )
    if e.pipeline:
        options["pipeline"] = e.pipeline
    if e.training_wrappers:
        trained = library_defaults(e.pipeline or agent.pipeline)
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


def validate_job(config: JobConfig, output_known: bool = True) -> PreparedJob:
    """Check the settings (:func:`engine.jobs.config.check_config`), the environment id, the checkpoints (the game
    each was trained on, where known, and their actions), load the agent and ``store.player``'s, and check the stores
    the job would open (:func:`check_stores`; ``output_known=False`` while ``output.dir`` is not the job's yet);
    nothing is played or written."""
    if config.rollout.num_envs is not None:  # many games at once: engine/jobs/games.py
        from .games import validate_games_job

        return validate_games_job(config, output_known)
    check_config(config)
    quiet_emulator()
    e = config.env
    actions = env_actions(e.id, e.full_action_space)  # an unknown id fails here
    if config.render.style == "paper" and (config.render.actor_gain is None or config.render.critic_gain is None):
        from ..viz.rendering import paper_gains

        try:
            paper_gains(e.id)
        except ValueError as exc:  # a game without published gains
            raise EngineError(str(exc)) from None
    a, st = config.agent, config.store
    path = resolve_checkpoint(a.checkpoint, a.checkpoint_dirs, a.cache_dir, a.allow_download)
    warnings = checked_game("agent.checkpoint", a.checkpoint, path, e.id)
    agent = load_job_agent(config, path)
    check_actions("agent.checkpoint", a.checkpoint, path, agent, config, actions)
    try:  # the methods' settings that depend on the observation's size (a window larger than it, ...)
        validate_method_settings(config.saliency, cast("tuple[int, int]", tuple(agent.observation_shape[1:])))
    except ValueError as exc:
        raise EngineError(f"saliency.{exc}") from None
    player, player_path = None, None
    if st.player:
        player_path = resolve_checkpoint(st.player, a.checkpoint_dirs, a.cache_dir, a.allow_download)
        warnings += checked_game("store.player", st.player, player_path, e.id)
        player = agent if player_path == path else load_job_agent(config, player_path)
        check_actions("store.player", st.player, player_path, player, config, actions)
        if (player.pipeline, player.frame_stack) != (agent.pipeline, agent.frame_stack):
            raise EngineError(
                f"store.player {st.player} plays in the {player.pipeline} pipeline ({player.frame_stack} frames "
                f"stacked) but agent.checkpoint {a.checkpoint} sees the {agent.pipeline} pipeline "
                f"({agent.frame_stack}): the game it records would not fit the agent; choose a player of the agent's "
                "kind, or unset store.player"
            )
    prepared = PreparedJob(config, path, agent, player, player_path, warnings)
    check_stores(prepared, output_known)
    return prepared


@functools.cache
def env_actions(env_id: str, full_action_space: bool) -> int:
    """How many actions ``env_id`` has (all 18 of the ALE with ``full_action_space``)."""
    env = make_env(env_id, full_action_space=full_action_space)
    try:
        return int(cast("Discrete", env.action_space).n)  # the Atari environments' actions are discrete
    finally:
        env.close()


def env_choice(env_id: str) -> str:
    """How to choose ``env_id``'s game on the command line: ``env=<option>`` of a bundled environment config of that
    game (of that very id, if one is), else ``env.id=<env_id>``."""
    options = sorted(
        ((other != env_id, option) for option, other in bundled_envs().items() if same_game(other, env_id)),
    )
    return f"env={options[0][1]}" if options else f"env.id={env_id}"


def checked_game(key: str, name: str, path: Path, env_id: str) -> list[str]:
    """Refuse the checkpoint ``name`` (setting ``key``) where its registry entry or built-in metadata names another
    game than ``env_id``; where a user's file has metadata that does, the warning (one, returned) that says so."""
    trained = trained_game(name, path)
    if trained is None or same_game(trained.env_id, env_id):
        return []
    fix, game = env_choice(trained.env_id), ale_game(env_id)
    if trained.source != "metadata":
        raise EngineError(
            f"{key} {name} was trained on {ale_game(trained.env_id)} ({trained.env_id}), but env.id is {env_id}: "
            f"set {fix} to run it on its own game, or choose an agent trained on {game}"
        )
    return [
        f"{key} {name} was trained on {trained.env_id} (its metadata {path.with_suffix('.json')} says so), not on "
        f"{env_id}: its maps show it playing a game it never learned; set {fix} to run it on its own game"
    ]


def check_actions(key: str, name: str, path: Path, agent: Policy, config: JobConfig, actions: int) -> None:
    """Refuse an agent whose action count is not the environment's, naming an environment that fits it."""
    if agent.num_actions == actions:
        return
    e = config.env
    where = f"{e.id} with env.full_action_space=true" if e.full_action_space else e.id
    file = "" if Path(name).expanduser().resolve() == path.resolve() else f" ({path})"
    raise EngineError(
        f"{where} has {actions} actions but {key} {name}{file} has {agent.num_actions}: "
        f"{fitting_env(agent.num_actions, trained_game(name, path), e.id, e.full_action_space)}"
    )


def fitting_env(num_actions: int, trained: TrainedGame | None, env_id: str, full_action_space: bool) -> str:
    """What to set for an agent of ``num_actions`` actions (trained on ``trained``, where known) instead of
    ``env_id``: its own game, the other action set of this one, or the bundled games with that many actions."""
    if trained is not None and not same_game(trained.env_id, env_id):
        return f"it was trained on {trained.env_id}: set {env_choice(trained.env_id)}"
    if env_actions(env_id, not full_action_space) == num_actions:
        return f"set env.full_action_space={str(not full_action_space).lower()}"
    if trained is not None:
        return f"it was trained on {trained.env_id}, whose action sets have other sizes: check the checkpoint"
    counts = {option: env_actions(other, full_action_space) for option, other in bundled_envs().items()}
    games = bundled_envs()
    fits = [f"env={option} ({games[option]})" for option, n in counts.items() if n == num_actions]
    if fits:
        return f"of the bundled games, {' and '.join(fits)} {'has' if len(fits) == 1 else 'have'} {num_actions} " + (
            "actions: set the one it was trained on (or env.id=<its game>)"
        )
    sizes = ", ".join(f"env={option}: {n}" for option, n in counts.items())
    return f"no bundled game has {num_actions} actions ({sizes}): set env.id to the game it was trained on"


def check_stores(prepared: PreparedJob, output_known: bool = True) -> None:
    """Refuse what the job's stores would refuse once it runs, before anything is written or removed: a path holding
    something that is no store, a store of another kind, an old format or damaged, a store written with other
    settings, a recorded game of another environment or pipeline, a place that is not writable. Reads manifests
    only. The default saliency store lies in ``output.dir``: checked where ``output_known``."""
    if prepared.config.rollout.num_envs is not None:  # many games at once: engine/jobs/games.py
        from .games import check_games_stores

        return check_games_stores(prepared, output_known)
    config, st = prepared.config, prepared.config.store
    if not st.rollout:
        return
    rollout_root = store_root(st.rollout)
    recorded = existing_store(rollout_root, "rollout")
    if recorded is not None and RolloutStore(recorded).complete:
        check_recorded(RolloutStore(recorded), rollout_root, config, prepared.agent)
    elif recorded is not None:
        player = prepared.player or prepared.agent
        played_by = prepared.player_checkpoint or prepared.checkpoint
        r = config.rollout
        wanted = rollout_identity(
            player, config.env.id, r.seed, r.greedy, r.steps, st.chunk_steps, sha256_of(played_by)
        )
        check_identity(rollout_root, recorded.identity, wanted)
    if writing_needed(rollout_root, "rollout", None):
        check_writable(rollout_root)
    if not (st.saliency or output_known):
        return
    saliency_root = store_root(st.saliency) if st.saliency else Path(config.output.dir) / "saliency_store"
    scored = existing_store(saliency_root, "saliency")
    if scored is not None:
        wanted = saliency_identity(
            prepared.agent,
            engine_saliency(config.saliency),
            sha256_of(prepared.checkpoint),
            st.frames_per_chunk,
            None if recorded is None else recorded.identity,
        )
        check_identity(saliency_root, scored.identity, wanted)
    if writing_needed(saliency_root, "saliency", None):
        check_writable(saliency_root)


def existing_store(root, kind: str) -> ChunkStore | None:
    """The store of ``kind`` at ``root``, opened read-only (an old format, a group without a manifest, a store of
    another kind or a damaged one refused as opening it refuses), or None where there is none yet; a local path that
    holds a file, or a folder of other files, is refused: a store never adopts them."""
    if store_exists(root):
        return ChunkStore.open_kind(root, kind, read_only=True)
    if is_memory(root) or is_url(root):
        return None  # the store's own check refuses foreign keys or objects when the job creates it
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise EngineError(f"the store path {path} is a file, not a directory: use another path")
    if path.is_dir() and any(path.iterdir()):
        if (path / "manifest.json").is_file():
            ChunkStore.open_kind(path, kind, read_only=True)  # refuses an older engine's store, saying so
        raise EngineError(
            f"{path} is not empty but has no store manifest (zarr.json): not adopting its files; delete it or use "
            "another path"
        )
    return None


def check_identity(root, found: dict, wanted: dict) -> None:
    """Refuse a store whose manifest differs from this job's settings in any of ``wanted`` (nested dicts compared
    key by key)."""
    wanted = json.loads(json.dumps(wanted, default=str))  # as a manifest reads back
    differences = identity_differences(found, wanted)
    if differences:
        raise StoreMismatchError(
            f"the store {root} was written with other settings ({'; '.join(differences)}): refusing to mix them; use "
            "another directory, or delete this one to start over"
        )


def identity_differences(found: dict, wanted: dict, prefix: str = "") -> list[str]:
    differences = []
    for key, value in wanted.items():
        have = found.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            differences += identity_differences(have, value, f"{prefix}{key}.")
        elif have != value:
            differences.append(f"{prefix}{key}: store has {have!r}, this job {value!r}")
    return differences


def check_recorded(rstore: RolloutStore, root, config: JobConfig, agent: Policy) -> None:
    """Refuse a recorded game of another environment than the job's, or recorded in another pipeline than the
    agent's."""
    if rstore.identity["env_id"] != config.env.id:
        raise EngineError(f"the rollout store {root} holds {rstore.identity['env_id']}, not {config.env.id}")
    recorded, played = rstore.identity["pipeline"], config.env.pipeline or agent.pipeline
    if (recorded["name"], recorded["frame_stack"]) != (played, agent.frame_stack):
        raise EngineError(
            f"the rollout store {root} was recorded in the {recorded['name']} pipeline ({recorded['frame_stack']} "
            f"frames stacked), but this job plays the agent in the {played} pipeline ({agent.frame_stack}): replay a "
            "game recorded for agents of the same kind (or set env.pipeline to the store's)"
        )


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

    KEYS = MAP_KINDS  # every method's maps (engine.core.settings.map_names)

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


def streamed_statistics(sstore) -> dict[str, float]:
    """:class:`MapStatistics` of a saliency store's marked chunks, read chunk by chunk: memory stays bounded by one
    chunk."""
    stats = MapStatistics()
    keys = tuple(k for k in MapStatistics.KEYS if k in sstore.store.layout)
    for k in range(len(sstore.bounds)):
        if keys and sstore.store.has(k):
            stats.update(sstore.store.read(k, keys))
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
        log.warning(
            "removed %d files of an earlier run from %s (%s)",
            len(found),
            out_dir,
            ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else ""),
        )
    return found


def render_outputs(config: JobConfig, out_dir: Path, agent, rstore, sstore, recorded_states: bool) -> dict[str, Path]:
    """Overlays of every frame of complete stores -> movie and stills, and the Jacobian-vs-perturbation figure of
    one frame (where the 2017 method ran). Movie frames are labelled with the action taken, by name. The movie and
    stills show the first method's maps (in the order of ``engine.core.settings.METHODS``: the 2017 method's
    ``actor`` and ``critic`` whenever it ran; SARFA's actor map alone where it is first), and hold every frame and
    map in memory at once (set output.movie=false and no stills for very long rollouts); the figure reads its frame."""
    from ..viz import rendering

    r, o, written = config.render, config.output, {}
    n, names = rstore.num_steps, tuple(rstore.identity["action_names"])
    taken = [f"  {name_of(a, names)}" for a in rstore.store.read_range(0, n, ("actions",))["actions"].tolist()]
    methods = selected_methods(config.saliency.method)
    if o.movie or o.stills:
        frames = torch.from_numpy(rstore.store.read_range(0, n, ("frames",))["frames"])
        shown = map_names(methods)[methods[0]]  # (actor,) or (actor, critic) of the first method
        maps = {k: torch.from_numpy(v) for k, v in sstore.store.read_range(0, n, shown).items()}
        actor = maps[shown[0]]
        critic = maps[shown[1]] if len(shown) > 1 else torch.zeros_like(actor)
        if r.style == "paper":
            actor_gain, critic_gain = r.actor_gain, r.critic_gain
            if actor_gain is None or critic_gain is None:
                default_actor, default_critic = rendering.paper_gains(config.env.id)
                actor_gain = default_actor if actor_gain is None else actor_gain
                critic_gain = default_critic if critic_gain is None else critic_gain
            overlays = rendering.paper_overlay_pair(
                frames, actor, critic, actor_gain, critic_gain, blur_sigma=r.blur_sigma
            )
        else:
            actor_scale = rendering.movie_scales(actor, percentile=r.percentile)
            critic_scale = rendering.movie_scales(critic, percentile=r.percentile)
            overlays = rendering.clean_overlay(frames, actor, critic, actor_scale, critic_scale, alpha=r.alpha)
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
    elif "perturbation" in methods:
        maps = {k: torch.from_numpy(v[0]) for k, v in sstore.read(t, t + 1).items()}
        jac = maps.get("jacobian_actor"), maps.get("jacobian_critic")
        if jac[0] is None:  # no Jacobian maps stored: this frame's, on the states its maps were scored with
            from ..core.jacobian import jacobian_saliency

            k = next(k for k, (a, b) in enumerate(sstore.bounds) if a <= t < b)
            _, part, states = next(
                scored_states(agent, rstore, sstore.bounds, config.saliency.state_alignment, recorded_states, [k])
            )
            i = t - sstore.bounds[k][0]
            one = jacobian_saliency(agent, part.observations[i : i + 1], index_state(states, slice(i, i + 1)))
            jac = (one.actor[0].detach().cpu(), one.critic[0].detach().cpu())
        frame = torch.from_numpy(rstore.store.read_range(t, t + 1, ("frames",))["frames"][0])
        written["comparison"] = rendering.comparison_figure(
            out_dir / f"jacobian_vs_perturbation_{t:05d}.png",
            frame,
            jac[0],
            jac[1],
            maps["actor"],
            maps["critic"],
            title=f"{config.env.id}, frame {t}{taken[t]}: Jacobian vs perturbation saliency",
        )
    return {k: Path(v) for k, v in written.items()}


def name_of(action: int, names) -> str:
    """An action's name (``NOOP``, ``FIRE``, ... from the environment), or its index where none is known."""
    return names[action] if action < len(names) else str(action)


def run_job(
    config: JobConfig, prepared: PreparedJob | None = None, recorded: MemoryStore | None = None
) -> dict[str, Path | str]:
    """Run the main job into ``config.output.dir``; returns the paths written (a store on object storage by its URL)
    and prints nothing.

    One path for every job: the game is recorded (or resumed, or reused) into a rollout store, scored chunk by chunk
    into a saliency store (this shard's chunks), and the statistics, metrics, overlays, report and summary are read
    back from the stores, one chunk or window at a time (but the movie: :func:`render_outputs`). With
    ``store.rollout`` the stores are on disk or object storage: resumable, shardable, replayed by other jobs; the
    overlays and the report wait for the saliency store to be complete. Without it they are memory stores
    (:class:`zarr.storage.MemoryStore`) that live as long as the job, and ``output.arrays`` writes their arrays to
    ``rollout.npz`` and ``saliency.npz``.

    Everything that can refuse the job is checked before anything is written (:func:`validate_job`, and
    :func:`check_stores` again for a job prepared earlier); the files an earlier job wrote into ``output.dir`` are
    removed once this one's results are ready to be written (:func:`clear_owned_outputs`), so that a refused or
    failed job leaves them as they were.

    ``recorded``: a memory store that already holds this job's game (:mod:`engine.jobs.games` records many games
    at once, then runs each one's job on its store), scored instead of a game recorded here; jobs without
    ``store.rollout`` only."""
    if recorded is not None and config.store.rollout:
        raise ValueError("recorded (a memory store) is for jobs without store.rollout, whose stores are in memory")
    if config.rollout.num_envs is not None:  # many games at once: engine/jobs/games.py
        from .games import run_games_job

        return run_games_job(config, prepared)
    if prepared is None:
        prepared = validate_job(config)
    else:
        check_stores(prepared)  # the stores may have changed since the job was prepared
    for warning in prepared.warnings:
        log.warning("%s", warning)
    out_dir, st = Path(config.output.dir), config.store
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = sha256_of(prepared.checkpoint)
    if st.rollout:  # a path or an fsspec URL (s3://...)
        rollout_root = store_root(st.rollout)
        saliency_root = store_root(st.saliency) if st.saliency else out_dir / "saliency_store"
        shard, num_shards = st.shard, st.num_shards
    else:
        rollout_root = MemoryStore() if recorded is None else recorded
        saliency_root, shard, num_shards = MemoryStore(), 0, 1
    before = set(SaliencyStore.open(saliency_root).missing()) if store_exists(saliency_root) else None
    rstore, sstore, timing = record_and_score(config, prepared, rollout_root, saliency_root, sha, shard, num_shards)
    scored = sum(
        b - a for k, (a, b) in enumerate(sstore.bounds) if k % num_shards == shard and (before is None or k in before)
    )
    return finish_job(config, prepared, rollout_root, saliency_root, rstore, sstore, timing, scored)


def finish_job(
    config: JobConfig,
    prepared: PreparedJob,
    rollout_root,
    saliency_root,
    rstore: RolloutStore,
    sstore: SaliencyStore,
    timing: dict,
    scored: int,
) -> dict[str, Path | str]:
    """The end of :func:`run_job`, once its game is recorded and scored (``scored`` frames by this job, ``timing``
    as :func:`record_and_score` returns it): the statistics, metrics, arrays, overlays, movie, figures, report and
    summary.json in ``config.output.dir``, read back from the stores. Returns the paths written."""
    agent, out_dir, st = prepared.agent, Path(config.output.dir), config.store
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings = list(prepared.warnings)
    sha = sha256_of(prepared.checkpoint)
    saliency_s = timing["saliency_seconds"]
    log.info(
        "scored %d frames into %s in %.1f s (%.3f s per frame%s)",
        scored,
        saliency_root,
        saliency_s,
        saliency_s / scored if scored else 0.0,
        f"; {timing['waited_seconds']:.1f} s more waiting for the recording" if timing["overlapped"] else "",
    )
    recorded_states = uses_recorded_states(agent, rstore, sha)
    metrics = job_metrics(config, agent, rstore, sstore, recorded_states)
    series = rstore.store.read_range(0, rstore.num_steps, ("actions", "rewards", "dones"))
    names = rstore.identity["action_names"]
    stores = {"rollout_store": str(rollout_root), "saliency_store": str(saliency_root)} if st.rollout else {}
    statistics = streamed_statistics(sstore)
    methods = selected_methods(config.saliency.method)
    for warning in zero_map_warnings(statistics, methods):
        log.warning("%s", warning)
        warnings.append(warning)
    settings = dict(
        config={**asdict(config), "agent": agent_settings(config, agent)},
        checkpoint=str(prepared.checkpoint),
        checkpoint_sha256=sha,
        **stores,
        frames=rstore.num_steps,
        **({"metrics": metrics} if metrics else {}),
        frames_scored=scored,
        complete=sstore.complete,
        **timing,
        seconds_per_frame=saliency_s / scored if scored else None,
        episode_returns=episode_returns(series["rewards"], series["dones"]),
        pipeline=rstore.identity["pipeline"],
        action_names=list(names),
        action_counts=action_counts(series["actions"], names),
        warnings=warnings,
        methods=list(methods),  # the methods that ran, and the arrays that hold each one's maps
        maps={method: list(kinds) for method, kinds in map_names(methods).items()},
        **statistics,
    )
    clear_owned_outputs(out_dir)  # the job has run: the earlier run's files go now, before this one's are written
    written: dict[str, Path | str] = {}
    if st.rollout:  # then both stores are paths or URLs, never memory stores
        written.update(cast("dict[str, Path | str]", {"rollout_store": rollout_root, "saliency_store": saliency_root}))
    if not st.rollout and config.output.arrays:  # the memory stores go with the job: their arrays stay
        played = rstore.read()
        arrays = {name: getattr(played, name) for name in ROLLOUT_FIELDS}
        written["rollout"] = save_arrays(
            out_dir / "rollout.npz", {**arrays, **{f"state_{i}": s for i, s in enumerate(played.states)}}, settings
        )
        written["saliency"] = save_arrays(out_dir / "saliency.npz", sstore.read(), settings)
    if sstore.complete:
        written.update(render_outputs(config, out_dir, agent, rstore, sstore, recorded_states))
        if config.output.report:  # streamed from the stores, one window of frames at a time
            written["report"] = job_report(out_dir / "report.html", config, settings, rstore, sstore)
    elif config.output.report or config.output.movie or config.output.stills:
        log.info(
            "the movie, stills and report.html wait for the saliency store to be complete (the other shards' chunks)"
        )
    return _write_summary(out_dir, settings, written)


def recorded_game(config: JobConfig, prepared: PreparedJob, root, checkpoint_sha256: str):
    """The job's game in the rollout store at ``root``: reused if that store is complete (whoever played it), else
    recorded or resumed there by ``store.player`` (a store on disk) or the job's agent; checked against the job's
    game and the agent's pipeline."""
    recording = game_recording(config, prepared, root, checkpoint_sha256)
    if recording is None:
        rstore = RolloutStore.open(root)  # replay one recorded game, whoever played it
    else:
        started = time.perf_counter()
        rstore = recording.run()
        log.info("played %d steps of %s in %.1f s", rstore.num_steps, config.env.id, time.perf_counter() - started)
    check_recorded(rstore, root, config, prepared.agent)
    return rstore


def game_recording(config: JobConfig, prepared: PreparedJob, root, checkpoint_sha256: str) -> Recording | None:
    """The recording of the job's game into the rollout store at ``root``, opened (:func:`open_recording`: by
    ``store.player`` for a store on disk, else the job's agent), or None where that store is complete (replayed)."""
    if store_exists(root) and RolloutStore.open(root).complete:
        rstore = RolloutStore.open(root)
        log.info("replaying the %d recorded steps of %s in %s", rstore.num_steps, rstore.identity["env_id"], root)
        return None
    player, player_path, player_sha = prepared.agent, prepared.checkpoint, checkpoint_sha256
    if prepared.player is not None and prepared.player_checkpoint is not None and not is_memory(root):
        player, player_path = prepared.player, prepared.player_checkpoint
        player_sha = sha256_of(player_path)
    return open_recording(
        player,
        config.env.id,
        config.rollout.steps,
        root,
        seed=config.rollout.seed,
        greedy=config.rollout.greedy,
        chunk_steps=config.store.chunk_steps,
        checkpoint_sha256=player_sha,
        extra={"checkpoint": str(player_path), "config": asdict(config)},
        progress=config.progress,
        max_episodes=config.rollout.max_episodes,
        **pipeline_options(config, player),
    )


def record_and_score(
    config: JobConfig, prepared: PreparedJob, rollout_root, saliency_root, checkpoint_sha256: str, shard, num_shards
) -> tuple[RolloutStore, SaliencyStore, dict]:
    """The job's game recorded (or resumed, or reused) into the rollout store and scored into the saliency store:
    both at once where the game is recorded and ``store.overlap`` is on (by default where the agent runs on CUDA:
    :mod:`engine.jobs.overlap`), else one
    after the other; the results are the same, bit for bit. Also returns the timing for the summary: the seconds
    each stage ran (``saliency_seconds`` without its waits for the recording, ``waited_seconds``), the seconds
    of both together, and whether they overlapped."""
    agent, st = prepared.agent, config.store
    started = time.perf_counter()

    def scoring(recording: bool) -> Scoring:
        return open_scoring(
            agent,
            rollout_root,
            saliency_root,
            engine_saliency(config.saliency),
            checkpoint_sha256,
            st.frames_per_chunk,
            shard,
            num_shards,
            config.progress,
            recording=recording,
        )

    overlap = st.overlap if st.overlap is not None else torch.device(agent.device).type == "cuda"
    recording = game_recording(config, prepared, rollout_root, checkpoint_sha256)
    if recording is not None and overlap and config.rollout.max_episodes is not None:
        log.info(
            "store.overlap: the game is recorded before it is scored (with rollout.max_episodes its length is known "
            "only once it ends)"
        )
    elif recording is not None and overlap:
        try:
            check_recorded(recording.rstore, rollout_root, config, agent)
            scorer = scoring(recording=True)
        except BaseException:
            recording.close()
            raise
        done = run_overlapped(recording, scorer)
        log.info(
            "played %d steps of %s and scored them at once in %.1f s (recording %.1f s, scoring %.1f s; the recorder "
            "was up to %d chunks ahead)",
            done.rstore.num_steps,
            config.env.id,
            done.wall_s,
            done.rollout_s,
            done.saliency_s,
            done.max_lead,
        )
        timing = dict(
            overlapped=True,
            rollout_seconds=done.rollout_s,
            saliency_seconds=done.saliency_s,
            waited_seconds=done.waited_s,
            total_seconds=done.wall_s,
        )
        return done.rstore, done.sstore, timing
    if recording is None:
        rstore = RolloutStore.open(rollout_root)
    else:
        rstore = recording.run()
        log.info("played %d steps of %s in %.1f s", rstore.num_steps, config.env.id, time.perf_counter() - started)
    rollout_s = time.perf_counter() - started
    check_recorded(rstore, rollout_root, config, agent)
    sstore = scoring(recording=False).run()
    total_s = time.perf_counter() - started
    timing = dict(
        overlapped=False,
        rollout_seconds=rollout_s,
        saliency_seconds=total_s - rollout_s,
        waited_seconds=0.0,
        total_seconds=total_s,
    )
    return rstore, sstore, timing


def agent_kind(agent: Policy) -> str:
    """The kind of agent: ``greydanus2017``, ``sb3``, ``cleanrl`` or ``module`` (a network wrapped with
    :func:`engine.policies.module.wrap_policy`); another :class:`Policy` by its class."""
    from ..policies.cleanrl import CleanRLPolicy
    from ..policies.greydanus2017 import ActorCritic
    from ..policies.module import ModulePolicy
    from ..policies.sb3 import SB3Policy

    kinds = ((ActorCritic, "greydanus2017"), (SB3Policy, "sb3"), (CleanRLPolicy, "cleanrl"), (ModulePolicy, "module"))
    return next(
        (kind for cls, kind in kinds if isinstance(agent, cls)), f"{type(agent).__module__}.{type(agent).__name__}"
    )


def agent_settings(config: JobConfig, agent: Policy) -> dict:
    """``config.agent`` as the job used it, for the summary: the agent's kind and pipeline, and the core only where it
    applies (a 2017 agent's); ``preprocessing``, a 2017 agent's pipeline, is in ``pipeline``."""
    settings = {k: v for k, v in asdict(config.agent).items() if k not in ("core", "preprocessing")}
    kind = agent_kind(agent)
    settings["kind"] = kind
    if kind == "greydanus2017":
        settings["core"] = getattr(agent, "core", config.agent.core)
    settings["pipeline"] = agent.pipeline
    return settings


def zero_map_warnings(
    statistics: dict[str, float], methods: tuple[str, ...] = ("perturbation", "jacobian")
) -> list[str]:
    """What to say where every map of a method is zero (their maxima in ``statistics``): no perturbation, or no
    gradient, changed any output. Only the methods whose maps are never negative (the 2017 method, the Jacobian,
    SARFA) are judged so: a zero maximum of the others' signed maps does not mean zero maps."""
    said = []
    hints = {
        "perturbation": ("no perturbation changed any output", "saliency.radius, saliency.interp"),
        "jacobian": ("no output has a gradient with respect to the input", "saliency.method"),
        "sarfa": ("no perturbation lowered the most likely action's probability", "saliency.sarfa.*"),
    }
    for method, kinds in map_names(methods).items():
        if method not in hints:
            continue
        what, settings = hints[method]
        maxima = {k: statistics[f"{k}_max"] for k in kinds if f"{k}_max" in statistics}
        if maxima and all(v == 0 for v in maxima.values()):
            said.append(
                f"{what}: the {' and '.join(maxima)} maps are zero everywhere; the agent's outputs do not depend on "
                "its input (saturated units: check the checkpoint's weights) or the settings cannot show it "
                f"({settings})"
            )
    return said


def checkpoint_label(name: str) -> str:
    """A checkpoint as a label: a registry name as it is, a path by its file name."""
    return name if name.startswith(BUILTIN_PREFIX) or known_checkpoint(name) else Path(name).name


def job_report(path: Path, config: JobConfig, settings: dict, rstore, sstore) -> Path:
    """``report.html`` of a job (:func:`engine.viz.report.write_report`), streamed from its complete stores one
    window of frames at a time."""
    from ..viz.report import write_report

    series = StoreSeries(rstore)
    shown = {k: v for k, v in settings.items() if k not in ("action_counts",)}
    return write_report(
        path,
        series.frames,
        store_maps(sstore, rstore.num_steps),
        values=series.values,
        actions=series.actions,
        rewards=series.rewards,
        dones=series.dones,
        action_names=series.action_names,
        title=f"{config.env.id}: {Path(str(settings['checkpoint'])).name}, {method_title(config)} saliency",
        settings=shown,
        checkpoint=str(settings["checkpoint"]),
    )


def method_title(config: JobConfig) -> str:
    """The methods of a job in a title: ``perturbation``, ``both`` (perturbation and Jacobian), ``perturbation+rise``."""
    methods = selected_methods(config.saliency.method)
    return "both" if methods == ("perturbation", "jacobian") else "+".join(methods)


class StoreSeries:
    """A rollout store as the array-likes a report reads: ``frames``, ``values``, ``actions``, ``rewards``,
    ``dones`` (each ``x[a:b]`` reads steps a..b-1 through ``RolloutStore.read``; the last window is kept, so the
    five fields of one window cost one read), and ``action_names``."""

    def __init__(self, rstore: RolloutStore):
        from ..core.preprocessing import FRAME_SHAPE
        from ..viz.report import WindowedArray

        self.rstore = rstore
        self._last: tuple[tuple[int, int], Rollout] | None = None
        n = rstore.num_steps
        self.frames = WindowedArray(lambda a, b: self._window(a, b).frames, (n, *FRAME_SHAPE))

        def per_step(name: str) -> WindowedArray:
            return WindowedArray(lambda a, b: getattr(self._window(a, b), name), (n,))

        self.values, self.actions = per_step("values"), per_step("actions")
        self.rewards, self.dones = per_step("rewards"), per_step("dones")
        self.action_names = tuple(rstore.identity.get("action_names", ()))

    def _window(self, a: int, b: int) -> Rollout:
        if self._last is None or self._last[0] != (a, b):
            self._last = ((a, b), self.rstore.read(a, b))
        return self._last[1]


def store_maps(sstore, num_frames: int) -> dict[str, WindowedArray]:
    """The maps of a complete saliency store as array-likes (kind -> (T, H, W)) that read only the store chunks
    holding a window (through ``ChunkStore.read(k, keys)``, the call the statistics stream with too)."""
    from ..viz.report import MAP_KINDS, WindowedArray

    first = sstore.store.read(0)
    bounds = sstore.bounds

    def read(kind: str, a: int, b: int) -> np.ndarray:
        parts = [(lo, sstore.store.read(k, (kind,))[kind]) for k, (lo, hi) in enumerate(bounds) if lo < b and hi > a]
        joined = parts[0][1] if len(parts) == 1 else np.concatenate([part for _, part in parts])
        return joined[a - parts[0][0] : b - parts[0][0]]

    def reader(kind: str) -> Callable[[int, int], np.ndarray]:
        return lambda a, b: read(kind, a, b)

    return {
        kind: WindowedArray(reader(kind), (num_frames, *first[kind].shape[1:])) for kind in MAP_KINDS if kind in first
    }


def metrics_summary(config: JobConfig, agent: Policy):
    """The streaming accumulator of the job's faithfulness metrics (engine.metrics.faithfulness), or None when off."""
    m = config.metrics
    if not (m.deletion_insertion or m.objects or m.stability):
        return None
    from ..core.preprocessing import CROP_ROWS
    from ..metrics.faithfulness import MetricsSummary
    from ..metrics.regions import game_of

    game = game_of(config.env.id)
    if m.objects and game is None:
        log.warning(
            "metrics.objects: no object colours are known for %s (only Pong, Breakout, SpaceInvaders)", config.env.id
        )
    return MetricsSummary(
        kinds=list(m.kinds),
        steps=m.steps,
        deletion_insertion=m.deletion_insertion,
        random_baseline=m.random_baseline,
        objects=m.objects,
        stability=m.stability,
        game=game,
        rows=CROP_ROWS if (config.env.pipeline or agent.pipeline) == "greydanus2017" else None,
        distance=m.distance,
        seed=m.seed,
    )


def sanity_metrics(config: JobConfig, agent: Policy, observations, dones, actions) -> dict:
    """Cascading randomisation on ``metrics.sanity_frames`` frames evenly spaced over ``observations`` (the first
    ``metrics.sanity_window`` steps), the maps recomputed with the job's saliency settings."""
    from ..metrics.faithfulness import sanity_check

    m, s = config.metrics, engine_saliency(config.saliency)
    n = observations.shape[0]
    picks = torch.linspace(0, n - 1, min(m.sanity_frames, n)).round().long().unique()
    taken = torch.as_tensor(actions)[picks]

    def maps_fn(policy, obs, states):  # RISE masks and LIME samples seeded by each frame's index, as in the job
        maps = compute_saliency(policy, obs, states, s, actions=taken, frame_indices=picks)
        return {k: maps[k] for k in m.kinds if k in maps}

    result = sanity_check(agent, observations, maps_fn, dones=dones, frames=picks, seed=m.seed)
    return {**result.summary(), "frames": picks.tolist(), "stages": [list(stage) for stage in result.stages]}


def job_metrics(config: JobConfig, agent: Policy, rstore, sstore, recorded_states: bool) -> dict:
    """The metrics of a job (``metrics=...``), streamed chunk by chunk from the rollout and saliency stores (every
    scored chunk), on the states the maps were scored with (:func:`engine.jobs.score.scored_states`: the recorded
    ones, or the agent's replayed through the recorded game, carried across chunks)."""
    out: dict = {}
    summary = metrics_summary(config, agent)
    if summary is not None:
        kinds = tuple(k for k in config.metrics.kinds if k in sstore.store.layout)
        done = [k for k in range(len(sstore.bounds)) if sstore.store.has(k)] if kinds else []
        for k, part, states in scored_states(
            agent, rstore, sstore.bounds, config.saliency.state_alignment, recorded_states, done
        ):
            maps = {key: torch.from_numpy(v) for key, v in sstore.store.read(k, kinds).items()}
            summary.update(agent, part.observations, states, maps, part.actions, part.frames, part.dones)
        out.update(summary.result())
    if config.metrics.sanity:
        recorded = rstore.read(0, min(rstore.num_steps, config.metrics.sanity_window))
        out["sanity"] = sanity_metrics(config, agent, recorded.observations, recorded.dones, recorded.actions)
    return out


def action_counts(actions, names) -> dict[str, int]:
    """How often each action was taken, by name (for the summary)."""
    counts = torch.bincount(torch.as_tensor(actions).long(), minlength=len(names)).tolist()
    return {name: int(c) for name, c in zip(names, counts)}


def episode_returns(rewards, dones) -> list[float]:
    """Total reward of every episode that ended in the recording (for the summary)."""
    ends = np.flatnonzero(dones)
    return np.diff(np.cumsum(np.asarray(rewards, dtype=np.float64))[ends], prepend=0.0).tolist()


def _write_summary(out_dir: Path, settings: dict, written: dict[str, Path | str]) -> dict[str, Path | str]:
    summary = out_dir / "summary.json"
    summary.write_text(
        json.dumps({**settings, "written": {k: str(v) for k, v in written.items()}}, indent=2, default=str)
    )
    return {**written, "summary": summary}


# settings that tell the jobs of a sweep apart on the sweep page (those that differ label each job's panel)
_SWEPT_COLUMNS = ("checkpoint", "method", "radius", "density", "interp", "compat", "state_alignment")


def sweep_report(sweep_dir: Path, rows: list[dict], columns) -> Path:
    """``report.html`` of a multirun in ``sweep_dir`` (``rows``: summary.csv's rows, ``columns`` its header).

    Jobs that replayed one recorded game (the same ``store.rollout``, each saliency store complete) are shown side
    by side on the same frame, one panel per saliency store (shards of one store are one panel), labelled by the
    settings that differ; otherwise the page has the sortable table and links to each job's ``report.html``."""
    from ..viz.report import Panel, write_sweep_report

    sweep_dir = Path(sweep_dir)
    links = {
        row["job"]: f"{row['job']}/report.html" for row in rows if (sweep_dir / row["job"] / "report.html").is_file()
    }
    summaries = {row["job"]: json.loads((sweep_dir / row["job"] / "summary.json").read_text()) for row in rows}
    games = {s.get("rollout_store") for s in summaries.values()}
    path = sweep_dir / "report.html"
    shared = len(games) == 1 and None not in games and rows and all(s.get("complete") for s in summaries.values())
    if not shared:
        log.info("sweep report: the jobs did not all replay one complete recorded game; table and links only")
        return write_sweep_report(path, rows, columns, links=links, title=f"sweep {sweep_dir.name}: {len(rows)} jobs")
    swept = [c for c in _SWEPT_COLUMNS if len({str(row.get(c)) for row in rows}) > 1]
    rstore = RolloutStore.open(next(iter(games)))
    recorded = StoreSeries(rstore)
    panels: list[Panel] = []
    seen: dict[str, Panel] = {}  # saliency store -> its panel
    for row in rows:
        store = summaries[row["job"]]["saliency_store"]
        if store in seen:  # another shard of a store already shown
            seen[store].label += f", {row['job']}"
            continue
        label = f"job {row['job']}: " + (
            ", ".join(f"{c}={checkpoint_label(str(row[c])) if c == 'checkpoint' else row[c]}" for c in swept)
            or "same settings"
        )
        seen[store] = Panel(
            row["job"], store_maps(SaliencyStore.open(store), rstore.num_steps), label=label, link=links.get(row["job"])
        )
        panels.append(seen[store])
    return write_sweep_report(
        path,
        rows,
        columns,
        frames=recorded.frames,
        panels=panels,
        values=recorded.values,
        actions=recorded.actions,
        rewards=recorded.rewards,
        dones=recorded.dones,
        action_names=recorded.action_names,
        links=links,
        title=f"sweep {sweep_dir.name}: {len(panels)} jobs on one recorded game of {rstore.identity['env_id']}",
        settings={"rollout_store": next(iter(games)), "swept": swept},
    )
