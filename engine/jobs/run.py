"""The main job as plain functions, its front door: :func:`validate_job`, :func:`check_stores` and :func:`run_job`
hand a job of one game to :mod:`engine.jobs.game` and a job of ``rollout.num_envs`` games to :mod:`engine.jobs.games`.

A job is checked first (:mod:`engine.jobs.prepare`: settings, environment id, checkpoints, the agent's game and
actions, the stores' manifests), so a bad override fails in a second with a clear message, before any rollout or
scoring starts and before anything in the output directory is touched: a refused job leaves an earlier run there as
it was. Then its game is recorded into a rollout store and scored into a saliency store, chunk by chunk, and its
outputs are read back from the stores (:mod:`engine.jobs.outputs`). Progress and results are logged (``logging``).
"""

from __future__ import annotations

from pathlib import Path

from .config import JobConfig
from .game import run_game_job
from .games import check_games_stores, run_games_job, validate_games_job
from .prepare import PreparedJob, check_game_stores, check_memory_fits, validate_game_job


def validate_job(config: JobConfig, output_known: bool = True) -> PreparedJob:
    """Check everything that can refuse the job, and load its agents; nothing is played or written
    (:func:`engine.jobs.prepare.validate_game_job`, or :func:`engine.jobs.games.validate_games_job` with
    ``rollout.num_envs``). ``output_known=False`` while ``output.dir`` is not the job's yet (a Hydra run
    directory still to be made)."""
    if config.rollout.num_envs is not None:
        return validate_games_job(config, output_known)
    return validate_game_job(config, output_known)


def check_stores(prepared: PreparedJob, output_known: bool = True) -> None:
    """Refuse what the job's stores would refuse once it runs, before anything is written or removed (reads manifests
    only): :func:`engine.jobs.prepare.check_game_stores`, or :func:`engine.jobs.games.check_games_stores`."""
    if prepared.config.rollout.num_envs is not None:
        return check_games_stores(prepared, output_known)
    check_memory_fits(prepared)  # a job prepared for other settings: its memory stores may not fit
    return check_game_stores(prepared, output_known)


def run_job(config: JobConfig, prepared: PreparedJob | None = None) -> dict[str, Path | str]:
    """Run the main job into ``config.output.dir`` (``prepared``: by :func:`validate_job`, its stores checked again);
    returns the paths written (a store on object storage by its URL) and prints nothing.
    :func:`engine.jobs.game.run_game_job` runs one game, :func:`engine.jobs.games.run_games_job` many."""
    if config.rollout.num_envs is not None:
        return run_games_job(config, prepared)
    return run_game_job(config, prepared)
