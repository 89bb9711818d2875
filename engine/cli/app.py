"""``python -m engine`` / ``atari-saliency``: a thin Hydra entry point over :mod:`engine.jobs.run`.

Before Hydra creates a run directory, :func:`precheck` composes the configuration of every job the command
line asks for (each combination of a ``--multirun`` sweep) against the typed schema (:mod:`engine.jobs.config`),
checks ranges, the environment id, the checkpoint and the stores, and so refuses a bad command in about a second
with one line on stderr and exit code 2, before Hydra writes into a run directory (an earlier run there stays as it
was): Hydra's own errors (unknown key, bad override syntax, missing group option) included. Results and progress
messages go through ``logging`` (Hydra writes them to the console and to ``<run dir>/engine.log``).

Where the configs are, Hydra's command line and the one-line errors are :mod:`engine.cli.scaffold`'s, shared with
the trainers' command line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..core.files import atomic_write, check_writable_directory
from ..jobs.config import JobConfig, register_configs

if TYPE_CHECKING:  # jobs.run imports torch (seconds): only once a command line is known to be good
    from ..jobs.prepare import PreparedJob
from .scaffold import (  # noqa: F401  (the app's names for where the configs are)
    CONFIG_DIR,
    PROJECT_ROOT,
    ConfigError,
    check_one_mode,
    compose,
    config_dir,
    fail,
    hydra_own_mode,
    interrupted,
    one_line,
    parse_args,
    plain,
    run_hydra,
    sweep_jobs,
)

log = logging.getLogger(__name__)

register_configs()

MAX_PRECHECKED_AGENTS = 16  # distinct environment/agent pairs loaded by the precheck

# settings whose checks need the environment or the agent (validate_job); jobs that agree on them share one check
_AGENT_KEYS = ("env", "agent", "device", "dtype", "render")


def job_config(cfg: DictConfig) -> JobConfig:
    """The checked, typed job configuration of a composed Hydra config (its ``hydra`` node left out)."""
    return JobConfig.from_dict(plain(cfg))


# --- the command line, checked before Hydra starts -----------------------------------------------------------

_BOOL_TOKEN = re.compile(r"(?<![\w'\"])(true|false)(?![\w'\"])", re.IGNORECASE)
_ENUM_BOOL_KEYS = ("saliency.incremental",)  # enum options whose members are named true and false


def quote_enum_bools(overrides: list[str]) -> list[str]:
    """``saliency.incremental=true`` -> ``saliency.incremental='true'``: Hydra's grammar reads true/false as
    booleans, which an enum option refuses; quoted they are the members' names."""
    fixed = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+~") in _ENUM_BOOL_KEYS:
            override = key + "=" + _BOOL_TOKEN.sub(lambda m: f"'{m.group(1).lower()}'", value)
        fixed.append(override)
    return fixed


def _renamed(overrides: list[str]) -> None:
    from ..jobs.config import RENAMED

    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key in RENAMED:
            raise ConfigError(f"{key} was renamed: use {RENAMED[key]}")


def compose_job(config_name: str, overrides: list[str], multirun: bool = False) -> tuple[JobConfig, bool]:
    """Compose one job's configuration outside a Hydra run (so its run directory is not made), and say whether its
    ``output.dir`` is the job's: the run directory where the command line names it (``hydra.run.dir=...``); one
    named by the clock, or a multirun's job directory, is known once Hydra runs the job."""
    cfg = compose(config_name, overrides, return_hydra_config=True)
    output = OmegaConf.to_container(cfg.output, resolve=False)
    out_dir = str(output.get("dir", "")) if isinstance(output, dict) else ""
    if "${hydra:" not in out_dir:
        return job_config(cfg), True
    run = OmegaConf.to_container(cfg.hydra.run, resolve=False)
    run_dir = str(run.get("dir", "")) if isinstance(run, dict) else ""
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    made_by_hydra = str(sweep.get("dir", "")) if multirun and isinstance(sweep, dict) else run_dir
    # the folder Hydra makes the job's directory in (its name is known once the job runs): it must be writable
    static = made_by_hydra.split("${", 1)[0]
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        check_writable_directory(Path(static).parent if not static.endswith("/") else Path(static), key)
    except ValueError as exc:
        raise ConfigError(f"{exc} (the folder the job's output.dir is made in)") from None
    known = not multirun and out_dir == "${hydra:runtime.output_dir}" and bool(run_dir) and "${" not in run_dir
    cfg.output.dir = run_dir if known else "."
    return job_config(cfg), known


def _agent_key(config: JobConfig) -> str:
    from dataclasses import asdict

    data = asdict(config)
    return json.dumps({k: data[k] for k in _AGENT_KEYS} | {"player": config.store.player}, sort_keys=True, default=str)


_PREPARED: dict[str, PreparedJob] = {}  # prepared jobs of the precheck, by _agent_key, reused by jobs of this process


def _flat(prefix: str, value: object) -> dict[str, object]:
    """A config section as ``{"rollout.seed": 0, ...}``."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(f"{prefix}.{key}", item).items()}
    return {prefix: value}


def _shared_store(seen: dict[str, tuple[int, dict]], key: str, path: str, job: int, wanted: dict, what: str) -> None:
    """Refuse job ``job`` writing ``what`` into the store at ``path`` where an earlier job writes something else."""
    earlier = seen.setdefault(path, (job, wanted))
    if earlier[1] == wanted:
        return
    differ = [k for k in wanted if wanted[k] != earlier[1].get(k)]
    shown = ", ".join(f"{k}: {earlier[1].get(k)!s} and {wanted[k]!s}" for k in differ[:3])
    hint = ""
    if "played by (store.player, else agent.checkpoint)" in differ and key == "store.rollout":
        hint = "; to score one recorded game with every agent, set store.player to the checkpoint that plays it"
    raise ConfigError(
        f"jobs {earlier[0]} and {job} of this sweep share {key}={path} but {what} ({shown}): a store holds one "
        f"{'game' if key == 'store.rollout' else 'set of maps'}, so the second job would be refused after the first "
        f"ran; give each job its own {key} (e.g. one naming the swept value){hint}"
    )


def check_shards_share_their_store(configs: list[tuple[JobConfig, bool]]) -> None:
    """Refuse shards (``store.num_shards`` > 1) whose saliency store would be their own: without ``store.saliency``
    it is in the job's folder, which Hydra names by the clock or by the job's number, so each shard fills a store of
    its own that never completes."""
    for config, output_known in configs:
        st = config.store
        if st.num_shards > 1 and not st.saliency and not output_known:
            raise ConfigError(
                f"store.num_shards={st.num_shards} splits one saliency store between jobs, but without store.saliency "
                "each job's store is in its own run folder, where the other shards never write: set "
                "store.saliency=<dir> (the same for every shard)"
            )


def _recorded_game(root: str) -> bool:
    """Whether ``root`` holds a complete rollout store, or a games root (``rollout.num_envs``) whose every game's store
    is complete: every job replays it, whoever it names as player."""
    from ..storage.games import root_manifest
    from ..storage.keys import store_exists
    from ..storage.layout import GAMES, game_root
    from ..storage.store import RolloutStore

    try:
        if not store_exists(root):
            return False
        manifest = root_manifest(root) or {}
        if manifest.get("kind") == GAMES:
            return all(RolloutStore.open(game_root(root, i)).complete for i in range(int(manifest["num_envs"])))
        return RolloutStore.open(root).complete
    except Exception:  # not a store, or a damaged one: each job's own checks say so
        return False


def check_sweep_conflicts(configs: list[tuple[JobConfig, bool]]) -> None:
    """Refuse a sweep whose jobs would write over each other: one ``output.dir`` for several jobs (each would remove
    the others' files), or one ``store.rollout`` / ``store.saliency`` for jobs that record other games or score
    other maps (shards of one job share their stores, as they should)."""
    if len(configs) < 2:
        return
    outputs: dict[str, int] = {}
    rollouts: dict[str, tuple[int, dict]] = {}
    saliencies: dict[str, tuple[int, dict]] = {}
    recorded_games: set[str] = set()
    for job, (config, known) in enumerate(configs):
        st = config.store
        if known:
            out = str(Path(config.output.dir).expanduser().absolute())
            if out in outputs and st.num_shards == 1:
                raise ConfigError(
                    f"jobs {outputs[out]} and {job} of this sweep both write to output.dir={config.output.dir}: each "
                    "would replace the other's outputs; leave output.dir unset (each job gets its own folder) or make "
                    "it name the swept values, e.g. output.dir=runs/radius_${saliency.radius}"
                )
            outputs.setdefault(out, job)
        if not st.rollout:
            continue
        data = dataclasses.asdict(config)
        rollout = {k: v for k, v in data["rollout"].items() if k != "workers"}  # workers play the same games
        game = {
            **_flat("env", data["env"]),
            **_flat("rollout", rollout),
            "store.chunk_steps": st.chunk_steps,
            "played by (store.player, else agent.checkpoint)": st.player or config.agent.checkpoint,
            "dtype": str(config.dtype),
        }
        if str(st.rollout) not in rollouts and _recorded_game(str(st.rollout)):
            recorded_games.add(str(st.rollout))
        if str(st.rollout) in recorded_games:  # recorded already: every job replays it in its own chunking
            del game["played by (store.player, else agent.checkpoint)"], game["store.chunk_steps"]
        _shared_store(rollouts, "store.rollout", str(st.rollout), job, game, "record other games")
        if st.saliency:
            maps = {
                **game,
                **_flat("saliency", data["saliency"]),
                "agent.checkpoint": config.agent.checkpoint,
                "store.frames_per_chunk": st.frames_per_chunk,
            }
            _shared_store(saliencies, "store.saliency", str(st.saliency), job, maps, "score other maps")


def precheck(argv: list[str]) -> None:
    """Check every job of a command line; raise :class:`ConfigError` with one line at the first bad one."""
    args = parse_args(argv)
    check_one_mode(args)  # before Hydra's own modes: --info with -m is one of them
    if hydra_own_mode(args):
        return  # the jobs check themselves
    overrides = list(args.overrides)
    _renamed(overrides)
    multirun = args.multirun or any(o.replace(" ", "") in ("hydra.mode=MULTIRUN",) for o in overrides)
    try:
        jobs = sweep_jobs(overrides, multirun)
        configs = [compose_job(args.config_name or "main", job, multirun) for job in jobs]
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's and OmegaConf's composition errors, the schema's checks
        raise ConfigError(one_line(exc)) from None
    if args.cfg:
        return  # --cfg prints the configuration: nothing is loaded
    check_shards_share_their_store(configs)
    check_sweep_conflicts(configs)
    from ..jobs.config import check_config
    from ..jobs.run import check_stores, validate_job
    from ..policies.registry import resolve_checkpoint

    checked: set[str] = set()
    for config, output_known in configs:
        key = _agent_key(config)
        try:
            if key in checked:  # the agents are checked: this job's stores
                check_stores(dataclasses.replace(_PREPARED[key], config=config), output_known)
            elif len(checked) < MAX_PRECHECKED_AGENTS:
                checked.add(key)
                _PREPARED[key] = validate_job(config, output_known)
            else:  # beyond the agents loaded here: the settings and that each checkpoint is there (loaded as it runs)
                check_config(config)
                a = config.agent
                resolve_checkpoint(a.checkpoint, a.checkpoint_dirs, a.cache_dir, a.allow_download)
        except ValueError as exc:  # EngineError, CheckpointError and the engine's argument checks
            raise ConfigError(str(exc)) from None


# --- the Hydra job ------------------------------------------------------------------------------------------


def _hydras_own() -> set[str]:
    """What Hydra writes into a run directory before the job starts: ``.hydra/`` and the job's log."""
    from hydra.core.hydra_config import HydraConfig

    return {".hydra", f"{HydraConfig.get().job.name}.log"}


def new_run_dir() -> Path | None:
    """The run directory, if Hydra made it for this job: called as the job starts, it then holds Hydra's own files
    only, the log still empty. None for a directory that holds an earlier run (or anything else)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        ours = _hydras_own()
        entries = list(run_dir.iterdir())
    except Exception:  # no Hydra run, or no directory
        return None
    fresh = all(p.name in ours and (p.is_dir() or p.stat().st_size == 0) for p in entries)
    return run_dir if fresh else None


def remove_empty_run_dir(run_dir: Path | None) -> None:
    """Remove the run directory Hydra made for this job (:func:`new_run_dir`) if the job wrote nothing there (only
    ``.hydra/`` and its log); a directory that held an earlier run is never removed."""
    if run_dir is None or not run_dir.is_dir():
        return
    ours = _hydras_own()
    if any(p.name not in ours for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent  # outputs/<date> of the default run directory, if this job left it empty
    if (
        re.fullmatch(r"\d{4}-\d{2}-\d{2}", parent.name)
        and parent.parent.name == "outputs"
        and parent.is_dir()
        and not any(parent.iterdir())
    ):
        parent.rmdir()
        if not any(parent.parent.iterdir()):
            parent.parent.rmdir()


def _prepared_job(config: JobConfig):
    from ..jobs.run import validate_job

    cached = _PREPARED.get(_agent_key(config))
    if cached is None:
        return validate_job(config)
    return dataclasses.replace(cached, config=config)  # run_job checks this job's stores


def sweep_dir() -> Path | None:
    """The directory of the multirun this job is part of; None for a single run (or no Hydra run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra = HydraConfig.get()
        return Path(hydra.sweep.dir).absolute() if hydra.mode == RunMode.MULTIRUN else None
    except Exception:  # no Hydra run
        return None


def resume_hint(config: JobConfig, sweep: Path | None = None) -> str:
    """What an interrupted job kept and the command line that goes on from it; ``sweep``: the directory of the
    multirun the job is part of, whose folders (one per job) a rerun with ``hydra.sweep.dir`` uses again."""
    st = config.store
    if not st.rollout:
        kept = "an in-memory job keeps nothing; set store.rollout to a path to make a long job resumable"
        return kept if sweep is None else f"the finished jobs are in {sweep}; {kept}"
    saliency = st.saliency or str((Path(config.output.dir) / "saliency_store").absolute())
    kept = f"the complete chunks are kept in store.rollout={st.rollout} and {saliency}"
    if sweep is not None:  # each job's folder (and the saliency store in it) is the sweep's, numbered
        return (
            f"{kept}; go on with the same command and hydra.sweep.dir={sweep}: each job goes on from its stores "
            "(a finished job replays them)"
        )
    if st.saliency:
        return f"{kept}; run the same command again to go on from them"
    return (
        f"{kept}; the saliency store lies in this run's folder, so go on with the same command and "
        f"store.saliency={saliency} (or output.dir={Path(config.output.dir).absolute()})"
    )


def keep_summary_in_job_folder(written: dict) -> None:
    """A sweep's summary.csv is made from the job folders Hydra makes: a job whose ``output.dir`` lies elsewhere
    leaves a copy of its summary.json in its folder."""
    from hydra.core.hydra_config import HydraConfig

    summary = written.get("summary")
    try:
        job_dir = Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # no Hydra run
        return
    if summary is None or not job_dir.is_dir() or Path(summary).parent.resolve() == job_dir.resolve():
        return
    with atomic_write(job_dir / "summary.json") as tmp:
        shutil.copyfile(summary, tmp)


def hydra_main(cfg: DictConfig) -> None:
    """The Hydra job: run the checked job (prepared by the precheck when it ran in this process)."""
    from ..core.errors import EngineError
    from ..jobs.run import run_job

    run_dir = new_run_dir()
    config: JobConfig | None = None
    started = False  # whether run_job began: before, a single run has written nothing
    try:
        try:
            config = job_config(cfg)
            prepared = _prepared_job(config)
        except (ValueError, OmegaConfBaseException) as exc:  # EngineError and the engine's argument checks
            remove_empty_run_dir(run_dir)
            fail(one_line(exc))
        started = True
        written = run_job(config, prepared)
    except EngineError as exc:  # settings that conflict with what is on disk (a store of other settings, ...)
        remove_empty_run_dir(run_dir)
        fail(str(exc))
    except KeyboardInterrupt:  # in the job, or while it loads its agent (a download, a large file)
        sweep = sweep_dir()
        if sweep is not None and _sweep_started is not None:  # a sweep in this process: its finished jobs' summary
            try:
                write_sweep_summary(cfg, sweep, _sweep_started)
            except (Exception, KeyboardInterrupt) as exc:  # the hint below matters more than the summary
                log.warning("summary of the finished jobs not written: %s", str(exc) or type(exc).__name__)
        remove_empty_run_dir(run_dir)
        if config is None or (sweep is None and not started):
            interrupted(BEFORE_THE_JOB if sweep is None else f"{BEFORE_THE_JOB}; the finished jobs are in {sweep}")
        interrupted(resume_hint(config, sweep))
    keep_summary_in_job_folder(written)
    log.info("saliency of %s by %s written to %s:", config.env.id, prepared.checkpoint, config.output.dir)
    for name, path in written.items():
        log.info("  %12s: %s", name, path)


BEFORE_THE_JOB = "stopped before the job began: nothing was written"


def main(argv: list[str] | None = None) -> None:
    """The command line: checked first (one line and exit code 2 for a bad one), then run by Hydra. Ctrl-C is one
    line and exit code 130 wherever it comes: in the checks, in Hydra's own start (or between a sweep's jobs), or in
    the job (:func:`hydra_main`)."""
    global _sweep, _sweep_started
    _sweep = _sweep_started = None  # an earlier call's multirun in this process (a notebook) is not this one's
    argv = quote_enum_bools(list(sys.argv[1:] if argv is None else argv))
    try:
        precheck(argv)
        run_hydra(hydra_main, "main", argv)
    except ConfigError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        if _sweep is None:
            interrupted(BEFORE_THE_JOB)
        config, sweep = _sweep
        try:
            write_sweep_summary(config, sweep, _sweep_started)
        except (Exception, KeyboardInterrupt) as exc:  # the line below matters more than the summary
            log.warning("summary of the finished jobs not written: %s", str(exc) or type(exc).__name__)
        interrupted(
            f"stopped between the sweep's jobs: the finished ones are in {sweep}; the same command with "
            f"hydra.sweep.dir={sweep} runs the sweep into it again"
        )


# --- sweeps -------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    "job",
    "env",
    "checkpoint",
    "checkpoint_file",
    "method",
    "radius",
    "density",
    "interp",
    "compat",
    "state_alignment",
    "shard",
    "num_shards",
    "frames",
    "frames_scored",
    "seconds_per_frame",
    "actor_mean",
    "actor_max",
    "critic_mean",
    "critic_max",
    "complete",
    "output_dir",
)


# the summary's columns that show a setting of the job's config (the others are results)
_SETTING_COLUMNS = {
    "env.id": "env",
    "agent.checkpoint": "checkpoint",
    "saliency.method": "method",
    "saliency.radius": "radius",
    "saliency.density": "density",
    "saliency.interp": "interp",
    "saliency.compat": "compat",
    "saliency.state_alignment": "state_alignment",
    "store.shard": "shard",
    "store.num_shards": "num_shards",
    "output.dir": "output_dir",
}


def _cells(config: dict) -> dict[str, object]:
    """A job's config as dotted keys, a list as one CSV cell (``perturbation+rise``)."""
    flat = {k: v for key, value in config.items() for k, v in _flat(key, value).items()}
    return {k: "+".join(map(str, v)) if isinstance(v, list) else v for k, v in flat.items()}


def summary_rows(sweep_dir: Path, since: float | None = None) -> list[dict]:
    """One row per job of a sweep directory, from each job's summary.json: its checkpoint as the command line named
    it (a registry name, a path as given), the file that resolved to in ``checkpoint_file``, and a column for each
    other setting whose value differs between the jobs (its dotted key: ``saliency.blur_sigma``). ``since``: leave
    out the jobs whose summary was written before then (a sweep directory used again holds an earlier sweep's)."""
    from ..metrics.faithfulness import scalar_columns  # torch: not on the path of a command line that fails early

    paths = sorted(sweep_dir.glob("*/summary.json"), key=lambda p: (len(p.parent.name), p.parent.name))
    stale = [p for p in paths if since is not None and p.stat().st_mtime < since]
    if stale:
        log.warning(
            "summary: left out %d job folder(s) that an earlier sweep left in %s (jobs %s)",
            len(stale),
            sweep_dir,
            ", ".join(p.parent.name for p in stale),
        )
    summaries = [(p, json.loads(p.read_text())) for p in paths if p not in stale]
    flats = [_cells(s["config"]) for _, s in summaries]
    differ = [k for k in dict.fromkeys(k for f in flats for k in f) if len({repr(f.get(k)) for f in flats}) > 1]
    rows = []
    for (path, s), flat in zip(summaries, flats):
        c = s["config"]
        rows.append(
            dict(
                job=path.parent.name,
                env=c["env"]["id"],
                checkpoint=c["agent"]["checkpoint"],  # as the user gave it
                checkpoint_file=s["checkpoint"],
                method=flat["saliency.method"],
                radius=c["saliency"]["radius"],
                density=c["saliency"]["density"],
                interp=c["saliency"]["interp"],
                compat=c["saliency"]["compat"],
                state_alignment=c["saliency"]["state_alignment"],
                shard=c["store"]["shard"],
                num_shards=c["store"]["num_shards"],
                **{key: flat.get(key) for key in differ if key not in _SETTING_COLUMNS},
                frames=s["frames"],
                frames_scored=s.get("frames_scored"),
                seconds_per_frame=s.get("seconds_per_frame"),
                actor_mean=s.get("actor_mean"),
                actor_max=s.get("actor_max"),
                critic_mean=s.get("critic_mean"),
                critic_max=s.get("critic_max"),
                complete=s.get("complete", True),
                # the job's folder, or the output.dir it was given (relative to where the sweep ran, as the job read it)
                output_dir=str(Path(c["output"]["dir"]).absolute()),
                **scalar_columns(s.get("metrics") or {}),
            )
        )
    # shards of one saliency store: each summary holds the store as its shard left it; the shard that completed it
    # has the statistics and metrics of the whole store, which are every shard's row's
    stores = [s.get("saliency_store") if s["config"]["store"]["num_shards"] > 1 else None for _, s in summaries]
    for store in {st for st in stores if st}:
        group = [row for row, st in zip(rows, stores, strict=True) if st == store]
        done = next((row for row in reversed(group) if row["complete"]), None)
        if done is None or len(group) < 2:
            continue
        whole = {k: v for k, v in done.items() if k in _STORE_COLUMNS or k.startswith("metrics_")}
        for row in group:
            row.update(whole)
    return rows


# summary.csv's columns that describe a saliency store as a whole, not the job that wrote part of it
_STORE_COLUMNS = ("frames", "actor_mean", "actor_max", "critic_mean", "critic_max", "complete")


def summary_columns(rows: list[dict]) -> list[str]:
    """SUMMARY_COLUMNS with the settings that differ between the jobs after ``num_shards``, then every metric column
    any job has (in first-seen order)."""
    extra = dict.fromkeys(k for row in rows for k in row if k not in SUMMARY_COLUMNS)
    settings = [k for k in extra if "." in k]
    at = SUMMARY_COLUMNS.index("num_shards") + 1
    return [*SUMMARY_COLUMNS[:at], *settings, *SUMMARY_COLUMNS[at:], *(k for k in extra if k not in settings)]


_sweep_started: float | None = None  # when this process's multirun began (its summary leaves out older jobs)
_sweep: tuple[DictConfig, Path] | None = None  # this process's multirun: its configuration and directory


def write_sweep_summary(config: DictConfig, sweep_dir: Path, since: float | None) -> None:
    """``summary.csv`` (one row per job of this sweep) and, unless ``output.report`` is off, the sweep's
    ``report.html`` in ``sweep_dir``."""
    rows = summary_rows(sweep_dir, since)
    with atomic_write(sweep_dir / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=summary_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    log.info("summary of %d jobs: %s", len(rows), sweep_dir / "summary.csv")
    if rows and OmegaConf.select(config, "output.report", default=True):
        from ..core.errors import EngineError
        from ..jobs.outputs import sweep_report

        try:  # summary.csv is written: a page that cannot be built is reported, not fatal to the sweep
            steps = OmegaConf.select(config, "output.report_steps", default=None)
            steps = None if steps is None else list(steps)
            log.info("sweep report: %s", sweep_report(sweep_dir, rows, summary_columns(rows), steps))
        except (EngineError, OSError) as exc:
            log.warning("sweep report not written: %s", exc)


class SweepSummary(Callback):
    """After a multirun, write ``summary.csv`` (one row per job of this multirun) into the sweep directory."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Mark the sweep's start in its directory: the jobs' summaries are dated by the same file system's clock
        (a launcher's clock may differ from a shared file system's)."""
        global _sweep_started, _sweep
        sweep_dir = Path(config.hydra.sweep.dir)
        _sweep = (config, sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        marker = sweep_dir / ".sweep_started"
        marker.touch()
        _sweep_started = marker.stat().st_mtime - 1  # file times have a second's resolution on some file systems

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_sweep_summary(config, Path(config.hydra.sweep.dir), _sweep_started)


if __name__ == "__main__":
    main()
