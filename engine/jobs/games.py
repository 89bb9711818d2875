"""Many games in one job (``rollout.num_envs=N``): N games recorded together, each kept apart as its own game.

The N games are played by one :class:`engine.env.rollout.VectorPlayer` (one batched forward per step), game ``i``
seeded ``rollout.seed + i``; ``rollout.steps`` and ``rollout.max_episodes`` are per game. Each game is recorded
into its own rollout store, exactly the store the single-game job with seed ``seed + i`` records (same manifest,
same arrays, bit for bit on the CPU), scored into its own saliency store with :func:`engine.jobs.score.score_store`,
and gets its own output folder ``<output.dir>/game_000i/`` with the single-game job's outputs (summary, arrays,
movie, stills, report). ``<output.dir>/summary.json`` lists the games and the totals.

On disk (``store.rollout``) the stores are groups of games (:func:`engine.storage.games.open_games`): the root
holds a small manifest (kind ``games``, ``num_envs``, the seeds) and one store per game in ``game_0000/``,
``game_0001/``, ... (the saliency store likewise, default ``<output.dir>/saliency_store``), so every reader of one
game's store works unchanged and ``xarray.open_datatree(root, engine="zarr")`` opens them all. In memory (no
``store.rollout``) each game has its own memory store.

Recording is chunk by chunk (:func:`engine.jobs.record.open_games_recording`): chunk k of every game is written once
all N games played its steps (a game that ended, ``max_episodes``, leaves the batch). Resume after an interruption
starts at the fewest complete chunks of any game, replaying each game's recorded actions
(:meth:`engine.env.rollout.VectorPlayer.replay`) and skipping the chunks already complete.

With ``store.overlap`` (by default where the agent runs on CUDA) the games are scored while they are recorded
(:func:`_record_and_score_games`): saliency chunk j of every game, round after round, once the recorder (in its
thread, within :data:`engine.jobs.overlap.LEAD` rollout chunks) wrote its steps; each game's outputs are written in
a thread of their own once its last chunk is scored. Otherwise the games are recorded, then each one's job runs on
its store in turn (:func:`_score_games_in_turn`). Both give the same stores, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import cast

import torch
from tqdm.auto import tqdm
from zarr.storage import MemoryStore

from ..core.errors import EngineError
from ..core.files import atomic_write
from ..env.rollout import check_num_envs
from ..storage.games import games_manifest, open_games, root_manifest
from ..storage.keys import is_url, store_exists, store_root
from ..storage.layout import FORMAT, GAMES, game_name, game_root
from ..storage.store import RolloutStore, check_writable, engine_version
from .config import JobConfig, check_config, engine_saliency
from .game import run_game_job
from .outputs import agent_settings, clear_owned_outputs, finish_job
from .overlap import HandOff, overlapped
from .prepare import (
    PreparedJob,
    check_agent_settings,
    check_game_stores,
    check_identity,
    check_memory_fits,
    check_recorded,
    existing_store,
    pipeline_options,
    validate_game_job,
)
from .record import GamesRecording, open_games_recording, steps_recorded
from .score import Scoring, open_scoring

log = logging.getLogger(__name__)


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
                    f"the {kind} store {root} holds {have} game{'' if have == 1 else 's'} (rollout.num_envs={have}), but rollout.num_envs={n}: "
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
    """:func:`engine.jobs.prepare.validate_game_job` for a job of ``rollout.num_envs`` games: the settings, the games roots
    (:func:`check_games_roots`), the agent (checked as game 0's job) and every game's stores; nothing is played or
    written."""
    check_config(config)
    check_num_envs(config.rollout.num_envs)
    check_games_roots(config, output_known)
    prepared = validate_game_job(game_config(config, 0, output_known), output_known)
    prepared = dataclasses.replace(prepared, config=config)
    check_games_stores(prepared, output_known, roots_checked=True)
    return prepared


def check_games_stores(prepared: PreparedJob, output_known: bool = True, roots_checked: bool = False) -> None:
    """:func:`engine.jobs.prepare.check_game_stores` for a job of games: its settings against the agent, the roots,
    then each game's stores."""
    check_agent_settings(prepared)
    check_memory_fits(prepared, check_num_envs(prepared.config.rollout.num_envs))
    config = prepared.config
    if not roots_checked:
        check_games_roots(config, output_known)
    if not config.store.rollout:
        return
    games = [game_config(config, i, output_known) for i in range(check_num_envs(config.rollout.num_envs))]
    for game in games:
        check_game_stores(dataclasses.replace(prepared, config=game), output_known)
    recorded = [existing_store(store_root(str(g.store.rollout)), "rollout") for g in games]
    done = [store is not None and RolloutStore(store).complete for store in recorded]
    if all(done):
        return  # the recorded games are replayed, as one recorded game is by the single-game job
    player = prepared.player or prepared.agent
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
                checkpoint_sha256=prepared.played_by_sha256,
                num_actions=player.num_actions,
                dtype=str(player.dtype),
            )
            check_identity(game.store.rollout, store.identity, wanted)


def run_games_job(config: JobConfig, prepared: PreparedJob | None = None) -> dict[str, Path | str]:
    """The main job for ``rollout.num_envs`` games (module docstring): record them together, then each game's
    single-game job on its recorded stores (scoring, outputs in ``<output.dir>/game_000i``), then the root
    ``summary.json``. Returns the paths written."""
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
    at_once = False  # recorded and scored at once (store.overlap)
    if all(store_exists(root) and RolloutStore.open(root).complete for root in roots):
        rstores = [RolloutStore.open(root) for root in roots]
        log.info("replaying %d recorded game%s of %s in %s", n, "" if n == 1 else "s", config.env.id, st.rollout)
    else:
        player, player_path, player_sha256 = agent, prepared.checkpoint, prepared.checkpoint_sha256
        if prepared.player is not None and prepared.player_checkpoint is not None and st.rollout:
            player, player_path, player_sha256 = prepared.player, prepared.player_checkpoint, prepared.player_sha256
        recording = open_games_recording(
            player,
            config.env.id,
            r.steps,
            roots,
            seed=r.seed,
            greedy=r.greedy,
            chunk_steps=st.chunk_steps,
            checkpoint_sha256=player_sha256,
            extras=[{"checkpoint": str(player_path), "config": asdict(g)} for g in games],
            progress=config.progress,
            max_episodes=r.max_episodes,
            workers=r.workers,
            **pipeline_options(config, player),
        )
        overlap = st.overlap if st.overlap is not None else torch.device(agent.device).type == "cuda"
        if overlap and player is not agent:
            log.info("store.overlap: the games are recorded before they are scored (store.player plays them)")
        if overlap and player is agent:
            at_once = True
            written, rollout_s = _record_and_score_games(config, prepared, games, recording, roots)
        else:
            before = [steps_recorded(s, recording.first) for s in recording.rstores]
            rstores = recording.run()
            played = sum(s.num_steps - b for s, b in zip(rstores, before))
            log.info(
                "played %d game%s of %s, %d steps in all, in %.1f s%s",
                n,
                "" if n == 1 else "s",
                config.env.id,
                played,
                time.perf_counter() - started,
                f" (the {sum(before)} steps before them were recorded by another run: an earlier one, or one this job waited for)"
                if any(before)
                else "",
            )
    if not at_once:
        rollout_s = time.perf_counter() - started
        written = _score_games_in_turn(config, prepared, games, roots, rstores)
    written_games = [Path(w["summary"]) for w in written]
    summaries = [json.loads(path.read_text()) for path in written_games]
    clear_owned_outputs(out_dir)
    settings = _games_summary(config, prepared, summaries, written_games, rollout_s, time.perf_counter() - started)
    settings["overlapped"] = at_once
    if st.rollout:
        settings["stores"] = {"rollout": str(_root(st.rollout)), "saliency": str(saliency_games_root(config))}
    path = out_dir / "summary.json"
    done: dict[str, Path | str] = {}
    if st.rollout:
        done.update({"rollout_store": _root(st.rollout), "saliency_store": saliency_games_root(config)})
    done.update({game_name(i): Path(g.output.dir) for i, g in enumerate(games)})
    settings["written"] = {k: str(v) for k, v in done.items()}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, default=str))
    return {**done, "summary": path}


def _score_games_in_turn(
    config: JobConfig, prepared: PreparedJob, games: list[JobConfig], roots: list, rstores: list[RolloutStore]
) -> list[dict[str, Path | str]]:
    """Each game's own job on its recorded store (on disk by its path, in memory handed over), one after the other:
    what each one wrote."""
    for root, rstore in zip(roots, rstores):
        check_recorded(rstore, root, config, prepared.agent)
    written = []
    for i, game in enumerate(games):
        log.info("game %d of %d (seed %d) into %s", i + 1, len(games), game.rollout.seed, game.output.dir)
        written.append(
            run_game_job(game, dataclasses.replace(prepared, config=game), None if config.store.rollout else roots[i])
        )
    return written


def _record_and_score_games(
    config: JobConfig, prepared: PreparedJob, games: list[JobConfig], recording: GamesRecording, roots: list
) -> tuple[list[dict[str, Path | str]], float]:
    """The games recorded (in a thread) and scored (here) at once: saliency chunk j of every game is scored once
    the games' rollout steps it reads are written, while the recorder plays on, at most :data:`engine.jobs.overlap.LEAD` rollout chunks
    ahead (:class:`engine.jobs.overlap.HandOff`), so the slower stage sets the pace and the steps recorded but not
    scored stay bounded by the chunk sizes, not the games' length. A game that ends early (``max_episodes``) has its
    saliency store end with it. Each game's outputs (:func:`engine.jobs.outputs.finish_job`) are written in another thread
    as soon as its last chunk is scored, while the other games are scored. The stores are the ones
    :func:`_score_games_in_turn` gives, bit for bit. Returns what each game's job wrote, and the recorder's
    seconds."""
    agent, st = prepared.agent, config.store
    sha = prepared.checkpoint_sha256
    shard, num_shards = (st.shard, st.num_shards) if st.rollout else (0, 1)
    saliency_roots: list = (
        [_root(str(g.store.saliency)) for g in games] if st.rollout else [MemoryStore() for _ in games]
    )
    try:
        scorings = []
        for root, rstore, saliency_root in zip(roots, recording.rstores, saliency_roots):
            check_recorded(rstore, root, config, agent)
            scorings.append(
                open_scoring(
                    agent,
                    root,
                    saliency_root,
                    engine_saliency(config.saliency),
                    sha,
                    st.frames_per_chunk,
                    shard,
                    num_shards,
                    recording=True,
                    rstore=rstore,
                )
            )
    except BaseException:
        recording.close()
        raise
    hand = HandOff(recording.bounds, recording.first)
    seconds, waited, scored = [0.0] * len(games), [0.0] * len(games), [0] * len(games)
    todo = [set(s.todo) for s in scorings]
    bar = tqdm(
        total=sum(b - a for s in scorings for k, (a, b) in enumerate(s.out.bounds) if k in s.todo),
        desc=f"saliency x{len(games)}",
        unit="frame",
        disable=None if config.progress else True,
    )

    done: list[set[int]] = [set() for _ in games]
    recorded_at = [0.0] * len(games)
    finishing: dict[int, Future] = {}
    finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish")  # one: matplotlib is not thread-safe
    started = time.perf_counter()

    def finish(i: int) -> dict[str, Path | str]:
        game = games[i]
        log.info("game %d of %d (seed %d) into %s", i + 1, len(games), game.rollout.seed, game.output.dir)
        timing = dict(
            overlapped=True,
            rollout_seconds=recorded_at[i] - started,  # until this game's last step was written
            saliency_seconds=seconds[i],
            waited_seconds=waited[i],
            total_seconds=time.perf_counter() - started,
        )
        sstore = scorings[i].out
        game_prepared = dataclasses.replace(prepared, config=game)
        return finish_job(
            game, game_prepared, roots[i], saliency_roots[i], recording.rstores[i], sstore, timing, scored[i]
        )

    def wait(scoring: Scoring, stop: int) -> None:
        """Until the game's steps ``..stop-1`` are written, or its last step where it ended before them."""
        hand.wait_for(stop, length=partial(getattr, scoring.rstore, "num_steps"))

    def end_where_the_game_ended(scoring: Scoring) -> None:
        if scoring.rstore.num_steps < scoring.out.store.length:  # it ended early: its saliency store ends with it
            scoring.out.store.truncate(scoring.rstore.num_steps)

    def finish_if_complete(i: int) -> None:
        """Hand game ``i`` to the finisher once its last step is written and every chunk of it this job scores is
        scored (its saliency store cut to its length where it ended early)."""
        scoring = scorings[i]
        if i in finishing or hand.recorded < scoring.rstore.num_steps:
            return
        if not recorded_at[i]:
            recorded_at[i] = time.perf_counter()
        end_where_the_game_ended(scoring)
        if all(k in done[i] for k in todo[i] if k < len(scoring.out.bounds)):
            finishing[i] = finisher.submit(finish, i)

    def score_all() -> None:
        for j in range(max(len(s.out.bounds) for s in scorings)):
            for i, scoring in enumerate(scorings):
                if j in todo[i] and j < len(scoring.out.bounds) and i not in finishing:
                    waiting = time.perf_counter()
                    wait(scoring, scoring.out.bounds[j][1])
                    ready = time.perf_counter()
                    waited[i] += ready - waiting
                    end_where_the_game_ended(scoring)
                    if j < len(scoring.out.bounds):
                        frames = scoring.score_chunk(j)
                        done[i].add(j)
                        scored[i] += frames
                        seconds[i] += time.perf_counter() - ready
                        bar.update(frames)
                finish_if_complete(i)
            for future in finishing.values():  # a game's outputs failed: stop here, with its error
                if future.done() and future.exception() is not None:
                    raise cast(BaseException, future.exception())
        for i, scoring in enumerate(scorings):  # games whose last chunks are another shard's
            if i not in finishing:
                wait(scoring, scoring.rstore.num_steps)
                finish_if_complete(i)
            if i not in finishing:
                raise RuntimeError(f"game {i}'s chunks {sorted(set(todo[i]) - done[i])} were not scored")

    try:
        _, rollout_s, _, wall_s = overlapped(recording.run, score_all, hand)
        written = [finishing[i].result() for i in range(len(games))]
    finally:
        recording.close()
        bar.close()
        finisher.shutdown(wait=True, cancel_futures=True)
    log.info(
        "played %d game%s of %s and scored them at once in %.1f s (recording %.1f s, scoring %.1f s; the recorder was "
        "up to %d chunk(s) ahead); their outputs were written as each game was scored",
        len(games),
        "" if len(games) == 1 else "s",
        config.env.id,
        wall_s,
        rollout_s,
        sum(seconds),
        hand.max_lead,
    )
    return written, rollout_s


def _games_summary(
    config: JobConfig, prepared: PreparedJob, summaries: list[dict], paths: list[Path], rollout_s: float, seconds: float
) -> dict:
    """The root summary: the games (seed, steps, returns, frames scored, their summary) and the totals."""
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
        checkpoint_sha256=prepared.checkpoint_sha256,
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
