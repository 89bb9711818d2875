"""The Hydra command line of the trainers: ``python -m engine.train [algo=ppo|a2c] [overrides...]``.

``algo`` is a config group of ``configs/train_entry.yaml`` (PPO by default): its option (``configs/algo/``) puts
the trainer's own config (``ppo.yaml`` on :class:`~engine.training.ppo.PPOConfig`, ``train.yaml`` on
:class:`~engine.training.a2c.TrainConfig`) at the top of the configuration, so one composition picks the trainer
and applies the other overrides to its schema. The chosen option (``hydra.runtime.choices.algo``) then names the
schema the composed configuration is checked against and the function that trains.

The command line is composed and checked (ranges, the environment id, the settings of a run it would resume) before
Hydra creates or rewrites ``<run_dir>/hydra``:
a bad one prints one line on stderr and exits with code 2. A run folder this command created and left without
results is removed again when the trainer refuses a setting. Progress and the result are logged.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..core.errors import EngineError
from ..core.files import check_writable_directory
from ..env.rollout import make_env
from ..training.resume import RESUME_FILE
from .scaffold import (
    ConfigError,
    check_one_mode,
    compose,
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

ENTRY = "train_entry"  # configs/train_entry.yaml: the algo group and Hydra's settings of a training run


@dataclass(frozen=True)
class Trainer:
    schema: type  # a dataclass with env_id, run_dir and a check() method
    schema_name: str  # its name in Hydra's ConfigStore, the first default of its config
    train: Callable[[Any], Path]  # trains (or resumes) into run_dir; returns the last checkpoint's path
    check_resume: Callable[[Any], Any]  # refuses a run_dir whose run was trained with other settings


def trainers() -> dict[str, Trainer]:
    """``algo`` -> its trainer (the options of ``configs/algo/``), the schemas put into Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from ..training import a2c, ppo

    table = {
        "ppo": Trainer(ppo.PPOConfig, "ppo_schema", ppo.train_ppo, ppo.check_resume),
        "a2c": Trainer(a2c.TrainConfig, "train_schema", a2c.train, a2c.check_resume),
    }
    for trainer in table.values():
        ConfigStore.instance().store(name=trainer.schema_name, node=trainer.schema)
    return table


def trainer_of(algo: str | None, table: dict[str, Trainer]) -> Trainer:
    if algo not in table:
        raise ConfigError(f"the configuration selects no trainer (algo={algo}): choose algo={' or algo='.join(table)}")
    return table[algo]


def checked(trainer: Trainer, cfg: DictConfig) -> Any:
    """The trainer's typed configuration of a composed one, its ranges checked."""
    config: Any = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(trainer.schema), plain(cfg)))
    config.check()
    return config


def precheck(argv: list[str], table: dict[str, Trainer]) -> Any:
    """The checked configuration of the command line (the environment id tried too, unless it only prints the
    configuration), and of every run of a sweep (``-m``: each checked the same way, and no two runs in one
    ``run_dir``); None where Hydra answers itself, or for a sweep. Raises :class:`ConfigError` with one line for a
    bad command line."""
    args = parse_args(argv)
    check_one_mode(args)  # before Hydra's own modes: --info with -m is one of them
    if hydra_own_mode(args):
        return None
    runs: dict[str, int] = {}
    tried: set[str] = set()
    try:
        jobs = sweep_jobs(list(args.overrides), args.multirun)
        for job, overrides in enumerate(jobs):
            cfg = compose(args.config_name or ENTRY, overrides, return_hydra_config=True)
            trainer = trainer_of(cfg.hydra.runtime.choices.get("algo"), table)
            config = checked(trainer, cfg)
            if args.cfg:
                continue
            if config.env_id not in tried:
                make_env(config.env_id).close()  # an unknown id fails here
                tried.add(config.env_id)
            trainer.check_resume(config)  # before Hydra rewrites the run's record in <run_dir>/hydra
            check_writable_directory(config.run_dir, "run_dir")
            run_dir = str(Path(config.run_dir).expanduser().absolute())
            if run_dir in runs:
                raise ConfigError(
                    f"runs {runs[run_dir]} and {job} of this sweep train into one run_dir={config.run_dir}: the second "
                    "would resume the first; make run_dir name the swept values, e.g. run_dir=runs/seed_${seed}"
                )
            runs[run_dir] = job
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's errors (syntax, unknown key, missing option), the schema's, ours
        raise ConfigError(one_line(exc)) from None
    return None if args.multirun else config


def remove_unfinished(run_dir: Path) -> None:
    """Remove ``run_dir`` (made by this command) where it holds no results: only Hydra's files and logs."""
    for folder in (run_dir / "hydra", run_dir / "checkpoints", run_dir):
        if folder.is_dir() and not [
            p for p in folder.rglob("*") if p.is_file() and p.parent.name != ".hydra" and p.suffix != ".log"
        ]:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m engine.train [algo=ppo|a2c] [overrides...]``: PPO (CleanRL's ppo_atari_lstm) by default, or A2C
    of the 2017 agent."""
    from hydra.core.hydra_config import HydraConfig

    from ..env.pipelines import quiet_emulator

    quiet_emulator()
    argv = list(sys.argv[1:] if argv is None else argv)
    table = trainers()
    try:
        config = precheck(argv, table)
    except ConfigError as exc:
        fail(str(exc))
    # the run folder this command makes, removed again on a refusal (None: not known, or there before)
    made = Path(config.run_dir) if config is not None else None
    if made is not None and made.exists():
        made = None

    def run(cfg: DictConfig) -> None:
        try:
            trainer = trainer_of(HydraConfig.get().runtime.choices.get("algo"), table)
            path = trainer.train(checked(trainer, cfg))
        except (ConfigError, EngineError, OmegaConfBaseException) as exc:
            if made is not None:
                remove_unfinished(made)
            fail(one_line(exc))
        except KeyboardInterrupt:
            run_dir = Path(cfg.run_dir)
            if (run_dir / RESUME_FILE).is_file():
                interrupted(
                    f"the run in {run_dir} goes on from its last checkpoint ({run_dir / RESUME_FILE}) when the same "
                    "command is run again"
                )
            if made is not None:
                remove_unfinished(made)
            interrupted("stopped before the first checkpoint: nothing is kept")
        log.info("last checkpoint: %s", path)

    try:
        run_hydra(run, ENTRY, argv)
    except KeyboardInterrupt:  # in Hydra's own start, before the run above began: nothing trained yet
        if made is not None:
            remove_unfinished(made)
            interrupted("stopped before the first checkpoint: nothing is kept")
        # a folder that was there before, or a multirun's next run: what the earlier runs wrote stays
        interrupted("stopped before the run began: what was written before it is kept")
