"""The main job of one game (:func:`run_game_job`): checkpoint -> rollout store -> saliency store -> outputs.

The game is recorded (or resumed, or reused) into a rollout store and scored chunk by chunk into a saliency store, one
after the other or both at once (``store.overlap``, :mod:`engine.jobs.overlap`), with the same stores bit for bit;
its outputs are then read back from the stores (:func:`engine.jobs.outputs.finish_job`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from zarr.storage import MemoryStore

from ..storage.keys import is_memory, place, store_exists, store_root
from ..storage.store import RolloutStore, SaliencyStore
from .config import JobConfig, engine_saliency
from .outputs import finish_job
from .overlap import run_overlapped
from .prepare import PreparedJob, check_game_stores, check_recorded, pipeline_options, validate_game_job
from .record import Recording, open_recording, steps_recorded
from .score import Scoring, open_scoring

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def run_game_job(
    config: JobConfig, prepared: PreparedJob | None = None, recorded: MemoryStore | None = None
) -> dict[str, Path | str]:
    """Run the main job of one game into ``config.output.dir``; returns the paths written (a store on object storage by its URL)
    and prints nothing.

    One path for every job: the game is recorded (or resumed, or reused) into a rollout store, scored chunk by chunk
    into a saliency store (this shard's chunks), and the statistics, metrics, overlays, report and summary are read
    back from the stores, one chunk or window at a time (the movie too: :func:`engine.jobs.outputs.render_outputs`). With
    ``store.rollout`` the stores are on disk or object storage: resumable, shardable, replayed by other jobs; the
    overlays and the report wait for the saliency store to be complete. Without it they are memory stores
    (:class:`zarr.storage.MemoryStore`) that live as long as the job, and ``output.arrays`` writes their arrays to
    ``rollout.npz`` and ``saliency.npz``.

    Everything that can refuse the job is checked before anything is written (:func:`engine.jobs.prepare.validate_game_job`,
    and :func:`engine.jobs.prepare.check_game_stores` again for a job prepared earlier); the files an earlier job wrote into ``output.dir`` are
    removed once this one's results are ready to be written (:func:`engine.jobs.outputs.clear_owned_outputs`), so that a refused or
    failed job leaves them as they were.

    ``recorded``: a memory store that already holds this job's game (:mod:`engine.jobs.games` records many games
    at once, then runs each one's job on its store), scored instead of a game recorded here; jobs without
    ``store.rollout`` only."""
    if recorded is not None and config.store.rollout:
        raise ValueError("recorded (a memory store) is for jobs without store.rollout, whose stores are in memory")
    if prepared is None:
        prepared = validate_game_job(config)
    else:
        check_game_stores(prepared)  # the stores may have changed since the job was prepared
    for warning in prepared.warnings:
        log.warning("%s", warning)
    out_dir, st = Path(config.output.dir), config.store
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = prepared.checkpoint_sha256
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


def game_recording(config: JobConfig, prepared: PreparedJob, root, checkpoint_sha256: str) -> Recording | None:
    """The recording of the job's game into the rollout store at ``root``, opened (:func:`engine.jobs.record.open_recording`: by
    ``store.player`` for a store on disk, else the job's agent), or None where that store is complete (replayed)."""
    if store_exists(root) and RolloutStore.open(root).complete:
        rstore = RolloutStore.open(root)
        log.info(
            "replaying the %d recorded steps of %s in %s", rstore.num_steps, rstore.identity["env_id"], place(root)
        )
        return None
    player, player_path, player_sha = prepared.agent, prepared.checkpoint, checkpoint_sha256
    if prepared.player is not None and prepared.player_checkpoint is not None and not is_memory(root):
        player, player_path = prepared.player, prepared.player_checkpoint
        player_sha = prepared.player_sha256
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
        before = steps_recorded(recording.rstore, recording.first)
        done = run_overlapped(recording, scorer)
        log.info(
            "played %d steps of %s and scored them at once in %.1f s (recording %.1f s, scoring %.1f s; the recorder "
            "was up to %d chunk(s) ahead)",
            done.rstore.num_steps - before,
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
        before = steps_recorded(recording.rstore, recording.first)
        rstore = recording.run()
        log.info(
            "played %d steps of %s in %.1f s%s",
            rstore.num_steps - before,
            config.env.id,
            time.perf_counter() - started,
            f" (the {before} before them were recorded by another run: an earlier one, or one this job waited for)"
            if before
            else "",
        )
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
