"""Many games in one job (``rollout.num_envs=N``): N games recorded together, each kept apart as its own game.

The N games are played by one :class:`engine.env.rollout.VectorPlayer` (one batched forward per step), game ``i``
seeded ``rollout.seed + i``; ``rollout.steps`` and ``rollout.max_episodes`` are per game. Each game is recorded
into its own rollout store, exactly the store the single-game job with seed ``seed + i`` records (same manifest,
same arrays, bit for bit on the CPU), scored into its own saliency store with :func:`engine.jobs.score.score_store`,
and gets its own output folder ``<output.dir>/game_000i/`` with the single-game job's outputs (summary, arrays,
movie, stills, report). ``<output.dir>/summary.json`` lists the games and the totals.

On disk (``store.rollout``) the stores are groups of games (:func:`engine.storage.store.open_games`): the root
holds a small manifest (kind ``games``, ``num_envs``, the seeds) and one store per game in ``game_0000/``,
``game_0001/``, ... (the saliency store likewise, default ``<output.dir>/saliency_store``), so every reader of one
game's store works unchanged and ``xarray.open_datatree(root, engine="zarr")`` opens them all. In memory (no
``store.rollout``) each game has its own memory store.

Recording is chunk by chunk: chunk k of every game is written once all N games played its steps (a game that ended,
``max_episodes``, leaves the batch). Resume after an interruption starts at the fewest complete chunks of any game,
replaying each game's recorded actions (:meth:`VectorPlayer.replay`) and skipping the chunks already complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm
from zarr.storage import MemoryStore

from ..core.errors import EngineError
from ..core.policy import Policy
from ..env.rollout import Step, VectorPlayer, check_num_envs, rollout_from_steps
from ..policies.registry import sha256_of
from ..storage.store import (
    FORMAT,
    GAMES,
    ROLLOUT_FIELDS,
    ChunkStore,
    RolloutStore,
    check_chunk_count,
    check_writable,
    engine_version,
    game_name,
    game_root,
    games_manifest,
    is_memory,
    is_url,
    open_games,
    rollout_layout,
    root_manifest,
    store_exists,
    store_root,
    writing_needed,
)
from .config import JobConfig, check_config
from .record import rollout_identity

if TYPE_CHECKING:
    from .run import PreparedJob

log = logging.getLogger(__name__)


def record_games(
    agent: Policy,
    env_id: str,
    num_steps: int,
    roots: list,
    seed: int = 0,
    greedy: bool = False,
    chunk_steps: int = 256,
    checkpoint_sha256: str = "",
    extras: list[dict] | None = None,
    progress: bool = False,
    storage_options: dict | None = None,
    max_episodes: int | None = None,
    workers: int = 0,
    **pipeline_options,
) -> list[RolloutStore]:
    """Play ``len(roots)`` games together and record game ``i`` (seed ``seed + i``) into the rollout store at
    ``roots[i]``, chunk by chunk; resumes an interrupted recording.

    Each store is the one :func:`engine.jobs.record.record_rollout` records with seed ``seed + i`` (its identity,
    layout, chunks and sampler states; ``extras[i]`` is its manifest's ``extra``), bit for bit where the agent's rows
    do not depend on the batch (the engine's agents on the CPU). ``num_steps`` and ``max_episodes`` are per game;
    ``max_episodes`` needs memory stores, as for one game. ``workers`` processes step the emulators
    (:class:`engine.env.workers.WorkerPipelines`; 0: this process): the games do not depend on it. Chunk k of every game is written once the games still
    playing have played its steps. Resuming starts at the fewest complete leading chunks of any game: each game's
    recorded actions are replayed, its sampler and recurrent state restored, and chunks already complete are not
    written again.
    """
    num_envs = check_num_envs(len(roots))
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
        raise ValueError(f"chunk_steps must be an integer >= 1, got {chunk_steps!r}")
    if max_episodes is not None and (max_episodes < 1 or not all(is_memory(r) for r in roots)):
        raise ValueError(
            f"max_episodes must be >= 1 and needs memory stores (their length is fixed otherwise), got {max_episodes!r}"
        )
    extras = extras or [{} for _ in roots]
    check_chunk_count("rollout", num_steps, chunk_steps, f"recording into {roots[0]}")
    for root in roots:
        if store_exists(root, storage_options):
            RolloutStore.open(root, storage_options)  # refuses a damaged, edited or foreign store before playing
        if writing_needed(root, "rollout", storage_options):
            check_writable(root, storage_options)
    player = VectorPlayer(agent, env_id, num_envs, seed, greedy, workers=workers, **pipeline_options)
    try:
        layout = rollout_layout(agent, np.shape(player.frames[0]), np.shape(player.observations[0]))
        rstores = []
        for i, root in enumerate(roots):
            identity = rollout_identity(
                agent,
                env_id,
                seed + i,
                greedy,
                num_steps,
                chunk_steps,
                checkpoint_sha256,
                player.spec,
                player.action_names,
            )
            store = ChunkStore.open_or_create(
                root, identity, layout, num_steps, chunk_steps, extras[i], storage_options
            )
            rstores.append(RolloutStore(store))
        first = min(r.completed_chunks() for r in rstores)
        num_chunks = len(rstores[0].bounds)
        if first < num_chunks:
            if first > 0:
                for i, rstore in enumerate(rstores):
                    _resume_game(player, i, rstore, first)
            _play_chunks(player, rstores, first, max_episodes, progress)
    finally:
        player.close()
    return rstores


def _resume_game(player: VectorPlayer, index: int, rstore: RolloutStore, done_chunks: int) -> None:
    """Game ``index`` brought to the end of its chunk ``done_chunks - 1`` (as ``record._resume_player`` does for
    one game)."""
    played = rstore.store.read_range(0, rstore.bounds[done_chunks][0], ("actions", "dones"))
    last = rstore.store.read(done_chunks - 1)
    state = tuple(torch.from_numpy(last[f"state_{i}"][-1:]) for i in range(len(rstore.identity["state_shapes"])))
    player.replay(
        index,
        played["actions"],
        played["dones"],
        frames=last["frames"],
        observations=last["observations"],
        sampler_state=torch.from_numpy(np.ascontiguousarray(last["sampler_state"])),
        last_state=state,
    )


def _play_chunks(
    player: VectorPlayer, rstores: list[RolloutStore], first: int, max_episodes: int | None, progress: bool
) -> None:
    bounds = list(rstores[0].bounds)  # a game that ends early (max_episodes) shortens its own store only
    total = rstores[0].num_steps * len(rstores)
    bar = tqdm(
        total=total,
        initial=bounds[first][0] * len(rstores),
        desc=f"record {player.env_id} x{len(rstores)}",
        unit="step",
        disable=None if progress else True,
    )
    episodes = [0] * len(rstores)
    try:
        for k in range(first, len(bounds)):
            a, b = bounds[k]
            steps: dict[int, list[Step]] = {i: [] for i in player.active}
            for _ in range(b - a):
                if not player.active:
                    break
                for i, step in player.step().items():
                    steps[i].append(step)
                    if step.done:
                        episodes[i] += 1
                        if max_episodes is not None and episodes[i] >= max_episodes:
                            player.stop(i)
            for i, played in steps.items():
                rstore = rstores[i]
                if i not in player.active and a + len(played) < rstore.num_steps:  # ends with its last episode
                    rstore.store.truncate(a + len(played))
                if not rstore.store.has(k):  # a chunk complete before an interruption is this very chunk
                    r = rollout_from_steps(played)
                    arrays = {name: getattr(r, name) for name in ROLLOUT_FIELDS}
                    arrays.update({f"state_{j}": s for j, s in enumerate(r.states)})
                    arrays["sampler_state"] = player.samplers[i].get_state()
                    rstore.store.write(k, arrays)
                bar.update(len(played))
            if not player.active:
                break
    finally:
        bar.close()


# --- the job ---------------------------------------------------------------------------------------------------


def _root(path: str) -> Path | str:
    """A games root as the stores take it: a local path as a Path, a URL as it is."""
    return path if is_url(path) else Path(path)


def saliency_games_root(config: JobConfig) -> Path | str:
    """The saliency games root of a store job: ``store.saliency``, or ``<output.dir>/saliency_store``."""
    st = config.store
    return _root(st.saliency) if st.saliency else Path(config.output.dir) / "saliency_store"


def game_config(config: JobConfig, index: int, output_known: bool = True) -> JobConfig:
    """The single-game job of game ``index``: seed ``seed + index``, its stores the games roots' ``game_000i``
    (where the job has stores on disk), its outputs in ``<output.dir>/game_000i``; ``num_envs`` unset."""
    st, name = config.store, game_name(index)
    store = st
    if st.rollout:
        saliency = None
        if st.saliency or output_known:
            saliency = str(game_root(saliency_games_root(config), index))
        store = dataclasses.replace(st, rollout=str(game_root(st.rollout, index)), saliency=saliency)
    out = Path(config.output.dir) / name if output_known else Path(config.output.dir)
    return dataclasses.replace(
        config,
        rollout=dataclasses.replace(config.rollout, seed=config.rollout.seed + index, num_envs=None, workers=0),
        store=store,
        output=dataclasses.replace(config.output, dir=str(out)),
    )


def _games_roots(config: JobConfig, output_known: bool) -> list[tuple[str, str, Path | str]]:
    st = config.store
    if not st.rollout:
        return []
    roots = [("rollout", "store.rollout", _root(st.rollout))]
    if st.saliency or output_known:
        roots.append(
            (
                "saliency",
                "store.saliency" if st.saliency else "store.saliency (default: <output.dir>/saliency_store)",
                saliency_games_root(config),
            )
        )
    return roots


def _wanted_manifest(config: JobConfig, kind: str) -> dict:
    r = config.rollout
    return games_manifest(kind, config.env.id, r.seed, int(r.num_envs or 1))


def check_games_roots(config: JobConfig, output_known: bool = True) -> None:
    """Refuse, before anything is written, games roots that this job cannot use: a store of one game (written
    without ``rollout.num_envs``), games of another ``num_envs``, seeds or game, a path holding something else or
    not writable. Reads the roots' manifests only."""
    n = config.rollout.num_envs
    for kind, setting, root in _games_roots(config, output_known):
        found = root_manifest(root)
        if found is None and store_exists(root):
            raise EngineError(
                f"{root} is a zarr group without a games manifest: not adopting it; delete it or use another {setting}"
            )
        if found is not None and found.get("kind") != GAMES:
            raise EngineError(
                f"the {kind} store {root} holds one game (written without rollout.num_envs), but rollout.num_envs={n}: "
                f"unset rollout.num_envs to use it, or set {setting} to another directory"
            )
        if found is not None:
            if found.get("num_envs") != n:
                have = found.get("num_envs")
                raise EngineError(
                    f"the {kind} store {root} holds {have} games (rollout.num_envs={have}), but rollout.num_envs={n}: "
                    f"set rollout.num_envs={have} to use it, or set {setting} to another directory"
                )
            wanted = _wanted_manifest(config, kind)
            differences = [
                f"{k}: store has {found.get(k)!r}, this job {v!r}" for k, v in wanted.items() if found.get(k) != v
            ]
            if differences:
                raise EngineError(
                    f"the {kind} store {root} holds games written with other settings ({'; '.join(differences)}): "
                    f"refusing to mix them; set {setting} to another directory, or delete this one to start over"
                )
            continue
        if isinstance(root, Path):
            if root.exists() and not root.is_dir():
                raise EngineError(f"the store path {root} is a file, not a directory: use another {setting}")
            if root.is_dir() and any(root.iterdir()):
                raise EngineError(
                    f"{root} is not empty but has no games manifest (zarr.json): not adopting its files; delete it or "
                    f"use another {setting}"
                )
        check_writable(root)


def validate_games_job(config: JobConfig, output_known: bool = True) -> PreparedJob:
    """:func:`engine.jobs.run.validate_job` for a job of ``rollout.num_envs`` games: the settings, the games roots
    (:func:`check_games_roots`), the agent (checked as game 0's job) and every game's stores; nothing is played or
    written."""
    from .run import validate_job

    check_config(config)
    check_num_envs(config.rollout.num_envs)
    check_games_roots(config, output_known)
    prepared = validate_job(game_config(config, 0, output_known), output_known)
    prepared = dataclasses.replace(prepared, config=config)
    check_games_stores(prepared, output_known, roots_checked=True)
    return prepared


def check_games_stores(prepared: PreparedJob, output_known: bool = True, roots_checked: bool = False) -> None:
    """:func:`engine.jobs.run.check_stores` for a job of games: the roots, then each game's stores."""
    from .run import check_identity, check_stores, existing_store

    config = prepared.config
    if not roots_checked:
        check_games_roots(config, output_known)
    if not config.store.rollout:
        return
    games = [game_config(config, i, output_known) for i in range(check_num_envs(config.rollout.num_envs))]
    for game in games:
        check_stores(dataclasses.replace(prepared, config=game), output_known)
    recorded = [existing_store(store_root(str(g.store.rollout)), "rollout") for g in games]
    done = [store is not None and RolloutStore(store).complete for store in recorded]
    if all(done):
        return  # the recorded games are replayed, as one recorded game is by the single-game job
    player, played_by = prepared.player or prepared.agent, prepared.player_checkpoint or prepared.checkpoint
    for game, store, complete in zip(games, recorded, done):
        if store is not None and complete:  # recorded again with the others: it must be this job's game
            wanted = dict(
                format=FORMAT,
                engine=engine_version(),
                env_id=config.env.id,
                seed=game.rollout.seed,
                greedy=config.rollout.greedy,
                num_steps=config.rollout.steps,
                chunk_steps=config.store.chunk_steps,
                checkpoint_sha256=sha256_of(played_by),
                num_actions=player.num_actions,
                dtype=str(player.dtype),
            )
            check_identity(game.store.rollout, store.identity, wanted)


def run_games_job(config: JobConfig, prepared: PreparedJob | None = None) -> dict[str, Path | str]:
    """The main job for ``rollout.num_envs`` games (module docstring): record them together, then each game's
    single-game job on its recorded stores (scoring, outputs in ``<output.dir>/game_000i``), then the root
    ``summary.json``. Returns the paths written."""
    from .run import check_recorded, clear_owned_outputs

    if prepared is None:
        prepared = validate_games_job(config)
    else:
        check_games_stores(prepared)
    n, st, r = check_num_envs(config.rollout.num_envs), config.store, config.rollout
    out_dir = Path(config.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    games = [game_config(config, i) for i in range(n)]
    started = time.perf_counter()
    if st.rollout:
        open_games(_root(st.rollout), _wanted_manifest(config, "rollout"))
        open_games(saliency_games_root(config), _wanted_manifest(config, "saliency"))
        roots: list = [_root(str(g.store.rollout)) for g in games]
    else:
        roots = [MemoryStore() for _ in range(n)]
    agent = prepared.agent
    if all(store_exists(root) and RolloutStore.open(root).complete for root in roots):
        rstores = [RolloutStore.open(root) for root in roots]
        log.info("replaying %d recorded games of %s in %s", n, config.env.id, st.rollout)
    else:
        from .run import pipeline_options

        player, player_path = agent, prepared.checkpoint
        if prepared.player is not None and prepared.player_checkpoint is not None and st.rollout:
            player, player_path = prepared.player, prepared.player_checkpoint
        rstores = record_games(
            player,
            config.env.id,
            r.steps,
            roots,
            seed=r.seed,
            greedy=r.greedy,
            chunk_steps=st.chunk_steps,
            checkpoint_sha256=sha256_of(player_path),
            extras=[{"checkpoint": str(player_path), "config": asdict(g)} for g in games],
            progress=config.progress,
            max_episodes=r.max_episodes,
            workers=r.workers,
            **pipeline_options(config, player),
        )
        played = sum(s.num_steps for s in rstores)
        log.info(
            "played %d games of %s, %d steps in all, in %.1f s", n, config.env.id, played, time.perf_counter() - started
        )
    for root, rstore in zip(roots, rstores):
        check_recorded(rstore, root, config, agent)
    rollout_s = time.perf_counter() - started
    summaries, written_games = [], []
    for i, game in enumerate(games):
        log.info("game %d of %d (seed %d) into %s", i + 1, n, game.rollout.seed, game.output.dir)
        from .run import run_job

        # each game's own job on its recorded store: on disk by its path, in memory handed over
        written = run_job(game, dataclasses.replace(prepared, config=game), None if st.rollout else roots[i])
        summary_path = Path(written["summary"])
        summaries.append(json.loads(summary_path.read_text()))
        written_games.append(summary_path)
    clear_owned_outputs(out_dir)
    settings = _games_summary(config, prepared, summaries, written_games, rollout_s, time.perf_counter() - started)
    if st.rollout:
        settings["stores"] = {"rollout": str(_root(st.rollout)), "saliency": str(saliency_games_root(config))}
    path = out_dir / "summary.json"
    done: dict[str, Path | str] = {}
    if st.rollout:
        done.update({"rollout_store": _root(st.rollout), "saliency_store": saliency_games_root(config)})
    done.update({game_name(i): Path(g.output.dir) for i, g in enumerate(games)})
    settings["written"] = {k: str(v) for k, v in done.items()}
    path.write_text(json.dumps(settings, indent=2, default=str))
    return {**done, "summary": path}


def _games_summary(
    config: JobConfig, prepared: PreparedJob, summaries: list[dict], paths: list[Path], rollout_s: float, seconds: float
) -> dict:
    """The root summary: the games (seed, steps, returns, frames scored, their summary) and the totals."""
    from .run import agent_settings

    games = [
        dict(
            game=game_name(i),
            seed=config.rollout.seed + i,
            steps=s["frames"],
            episode_returns=s["episode_returns"],
            frames_scored=s["frames_scored"],
            complete=s["complete"],
            saliency_seconds=s["saliency_seconds"],
            summary=str(p),
        )
        for i, (s, p) in enumerate(zip(summaries, paths))
    ]
    frames = sum(g["steps"] for g in games)
    scored = sum(g["frames_scored"] for g in games)
    saliency_s = sum(g["saliency_seconds"] for g in games)
    statistics: dict[str, float] = {}
    for key in summaries[0]:
        if key.endswith(("_mean", "_max")) and all(isinstance(s.get(key), float | int) for s in summaries):
            if key.endswith("_max"):
                statistics[key] = max(s[key] for s in summaries)
            else:  # every frame's map has the same size: the mean over all frames
                statistics[key] = sum(s[key] * s["frames"] for s in summaries) / frames
    return dict(
        config={**asdict(config), "agent": agent_settings(config, prepared.agent)},
        checkpoint=str(prepared.checkpoint),
        checkpoint_sha256=sha256_of(prepared.checkpoint),
        num_envs=len(games),
        games=games,
        frames=frames,
        frames_scored=scored,
        complete=all(g["complete"] for g in games),
        rollout_seconds=rollout_s,
        saliency_seconds=saliency_s,
        seconds=seconds,
        frames_per_second=scored / seconds if seconds > 0 else None,
        seconds_per_frame=saliency_s / scored if scored else None,
        warnings=list(prepared.warnings),
        **statistics,
    )
