"""The Hydra command line of the trainers (``python -m engine.train algo=ppo|a2c``): one line on
stderr and exit code 2 for a bad setting, before Hydra creates a run folder; a run folder this command created
and left without results is removed again."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from ..core.errors import EngineError
from ..env.rollout import make_env


def run_training_cli(schema: type, schema_name: str, config_name: str, train: Callable[[Any], Path],
                     argv: list[str] | None = None) -> None:
    """Hydra entry point of a trainer: ``configs/<config_name>.yaml`` on the dataclass ``schema`` (registered as
    ``schema_name``; it has ``env_id`` and ``run_dir`` and a ``check()`` method), running ``train(config)``.

    The command line is composed and
    checked (ranges, the environment id) before Hydra creates ``<run_dir>/hydra``: a bad one prints one line on
    stderr and exits with code 2. Progress and the result are logged."""
    import logging
    import shutil

    import hydra
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    log = logging.getLogger(__name__)
    package = Path(__file__).resolve().parents[1]
    config_dir = package / "configs"  # an installed wheel ships them in the package
    if not (config_dir / f"{config_name}.yaml").is_file():
        config_dir = package.parent / "configs"  # a checkout (editable install)
    ConfigStore.instance().store(name=schema_name, node=schema)

    def one_line(exc: BaseException) -> str:
        while not isinstance(exc, (EngineError, OmegaConfBaseException)) and exc.__cause__ is not None:
            exc = exc.__cause__  # Hydra's wrappers of OmegaConf's errors
        text = str(getattr(exc, "msg", None) or exc)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        first = lines[0] if lines else type(exc).__name__
        key = getattr(exc, "full_key", None)
        return f"{key}: {first}" if key and key not in first else first

    def fail(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    def typed(cfg):
        data = OmegaConf.to_container(cfg, resolve=True)
        data.pop("hydra", None)
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
        config.check()
        return config

    try:  # keep the emulator's banner off stderr (its warnings and errors still show)
        import ale_py

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    except (ImportError, AttributeError):
        pass
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    existed: set[Path] | None = None  # run folders there before this command (None: not known; nothing is removed)
    skip = args.help or args.hydra_help or args.info or args.shell_completion or args.multirun or args.config_dir \
        or args.config_path or getattr(args, "experimental_rerun", None)  # Hydra's own modes: the job checks itself
    if not skip:
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=config_name):
                config = typed(compose(config_name=args.config_name or config_name, overrides=args.overrides))
            if not args.cfg:
                make_env(config.env_id).close()  # an unknown id fails here
        except Exception as exc:  # Hydra's errors (syntax, unknown key, missing option), the schema's, ours
            fail(one_line(exc))
        run_dir = Path(config.run_dir)
        existed = {p for p in (run_dir, run_dir / "hydra") if p.exists()}

    @hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)
    def run(cfg) -> None:
        try:
            config = typed(cfg)
            path = train(config)
        except (EngineError, OmegaConfBaseException) as exc:
            run_dir = Path(OmegaConf.select(cfg, "run_dir", default="") or ".")
            for folder in (run_dir / "hydra", run_dir / "checkpoints", run_dir):
                if existed is None or existed or not folder.is_dir():
                    continue  # only a run folder this command created, and left without results
                if not [p for p in folder.rglob("*") if p.is_file() and p.parent.name != ".hydra" and p.suffix != ".log"]:
                    shutil.rmtree(folder, ignore_errors=True)
            fail(one_line(exc))
        log.info("last checkpoint: %s", path)

    sys.argv = [sys.argv[0], *argv]
    run()



def trainers() -> dict[str, tuple[type, str, str, Callable[[Any], Path]]]:
    """``algo`` -> (schema, schema name, config name, train function)."""
    from ..training.a2c import TrainConfig, train
    from ..training.ppo import PPOConfig, train_ppo

    return {"ppo": (PPOConfig, "ppo_schema", "ppo", train_ppo), "a2c": (TrainConfig, "train_schema", "train", train)}


def main(argv: list[str] | None = None) -> None:
    """``python -m engine.train [algo=ppo|a2c] [overrides...]``: PPO (CleanRL's ppo_atari_lstm) by default, or A2C
    of the 2017 agent; ``algo`` picks the schema and config the other overrides compose on."""
    argv = list(sys.argv[1:] if argv is None else argv)
    algos = [a.split("=", 1)[1] for a in argv if a.startswith("algo=")]
    rest = [a for a in argv if not a.startswith("algo=")]
    table = trainers()
    algo = algos[-1] if algos else "ppo"
    if algo not in table:
        print(f"error: algo={algo!r} is not a trainer: choose one of {', '.join(table)} (python -m engine.train algo=ppo)",
              file=sys.stderr)
        sys.exit(2)
    run_training_cli(*table[algo], rest)
