"""The Hydra scaffold of the command lines (``python -m engine``, ``python -m engine.train``): where the configs
are, Hydra's command-line arguments, composing a configuration outside a Hydra run, one line and exit code 2 for a
bad command, and running the Hydra app.

The configs ship inside the package (``engine/configs`` in a wheel); in a checkout they are the top-level
``configs/`` folder. :func:`args_parser` mirrors the arguments of Hydra's own parser (a private module of Hydra's;
``tests/unit/test_cli_scaffold.py`` compares the two, so an upgrade of Hydra that changes them is noticed).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..core.errors import EngineError
from ..jobs.config import config_error

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PROJECT_ROOT = PACKAGE_DIR.parent  # the checkout (or, installed, the site-packages folder)


def config_dir() -> Path:
    """``engine/configs`` of an installed wheel, else the checkout's top-level ``configs/`` (editable installs
    and runs from the source tree)."""
    shipped = PACKAGE_DIR / "configs"
    return shipped if (shipped / "main.yaml").is_file() else PROJECT_ROOT / "configs"


CONFIG_DIR = config_dir()
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def config_groups(*names: str) -> str:
    """``group: option, option, ...`` lines of the named config groups: ``--help`` of each command line lists the
    groups it takes (both share one config folder, where Hydra's own list would show every group there)."""
    return "\n".join(
        f"{name}: {', '.join(sorted(p.stem for p in (CONFIG_DIR / name).glob('*.yaml')))}" for name in names
    )


if not OmegaConf.has_resolver("config_groups"):
    OmegaConf.register_new_resolver("config_groups", config_groups)


class ConfigError(Exception):
    """A bad command line or configuration: one line for the user, exit code 2."""


# --- the command line ---------------------------------------------------------------------------------------

INFO_CHOICES = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]


def args_parser() -> argparse.ArgumentParser:
    """The arguments Hydra's ``@hydra.main`` reads, as its own parser defines them (same names, flags, choices and
    defaults), so a command line is read here exactly as Hydra will read it."""
    import hydra

    parser = argparse.ArgumentParser(add_help=False, description="Hydra")
    parser.add_argument("--help", "-h", action="store_true", help="Application's help")
    parser.add_argument("--hydra-help", action="store_true", help="Hydra's help")
    parser.add_argument(
        "--version", action="version", help="Show Hydra's version and exit", version=f"Hydra {hydra.__version__}"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Any key=value arguments to override config values (use dots for.nested=overrides)"
    )
    parser.add_argument(
        "--cfg", "-c", choices=["job", "hydra", "all"], help="Show config instead of running [job|hydra|all]"
    )
    parser.add_argument(
        "--resolve",
        action="store_true",
        help="Used in conjunction with --cfg, resolve config interpolations before printing.",
    )
    parser.add_argument("--package", "-p", help="Config package to show")
    parser.add_argument("--run", "-r", action="store_true", help="Run a job")
    parser.add_argument(
        "--multirun", "-m", action="store_true", help="Run multiple jobs with the configured launcher and sweeper"
    )
    parser.add_argument("--shell-completion", "-sc", action="store_true", help="Install or Uninstall shell completion")
    parser.add_argument("--config-path", "-cp", help="Overrides the config_path specified in hydra.main()")
    parser.add_argument("--config-name", "-cn", help="Overrides the config_name specified in hydra.main()")
    parser.add_argument("--config-dir", "-cd", help="Adds an additional config dir to the config search path")
    parser.add_argument("--experimental-rerun", help="Rerun a job from a previous config pickle")
    parser.add_argument(
        "--info",
        "-i",
        const="all",
        nargs="?",
        action="store",
        choices=INFO_CHOICES,
        help=f"Print Hydra information [{'|'.join(INFO_CHOICES)}]",
    )
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as Hydra reads it; a malformed one exits with argparse's usage line and code 2, and one with
    arguments Hydra would not take (options after the overrides, an override spelt as an option) raises
    :class:`ConfigError` saying how to write it."""
    args, unknown = args_parser().parse_known_args(argv)
    if unknown:
        first = unknown[0]
        if first.startswith("--") and "=" in first and not first.startswith("--config"):
            raise ConfigError(f"{first} is not an option: overrides take no dashes, write {first[2:]}")
        raise ConfigError(
            f"unrecognized arguments: {' '.join(unknown)}: options (-m, --cfg job, ...) go before the overrides, "
            "as in -m key=a,b other.key=c"
        )
    keyless = [o for o in args.overrides if o.lstrip("+~").startswith("=")]
    if keyless:
        raise ConfigError(f"the override {keyless[0]!r} names no key: write key=value, e.g. rollout.steps=5")
    return args


MAX_PRECHECKED_JOBS = 256  # a larger sweep is checked one swept value at a time (each job checks itself again)


def sweep_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists of the jobs a command line runs (one without --multirun; every combination of the
    discrete sweeps with it, or, beyond MAX_PRECHECKED_JOBS, every swept value once)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    if not multirun:
        return [overrides]
    own_sweeper = any(o.get_key_element() == "hydra/sweeper" for o in parsed)
    lists = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                if not own_sweeper:
                    raise ConfigError(
                        f"{key}: Hydra's basic sweeper takes lists (a,b) and range(); an interval needs "
                        "a sweeper plugin (hydra/sweeper=...)"
                    )
                continue  # a sweeper's search space: left to the jobs' own checks
            lists.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            lists.append([f"{key}={override.get_value_element_as_str()}"])
    total = 1
    for values in lists:
        total *= len(values)
    if total <= MAX_PRECHECKED_JOBS:
        return [list(job) for job in itertools.product(*lists)]
    first = [values[0] for values in lists]
    jobs = [first]
    for i, values in enumerate(lists):
        jobs += [first[:i] + [value] + first[i + 1 :] for value in values[1:]]
    return jobs


def hydra_own_mode(args: argparse.Namespace) -> bool:
    """Whether Hydra answers the command itself (help, information, shell completion, a rerun) or composes from a
    config tree a check made here would not see (``--config-path``, ``--config-dir``): the job then checks itself."""
    return bool(
        args.help
        or args.hydra_help
        or args.info
        or args.shell_completion
        or args.config_path
        or args.config_dir
        or args.experimental_rerun
    )


def check_one_mode(args: argparse.Namespace) -> None:
    """Hydra runs one mode at a time; refuse a command line that asks for several."""
    modes = [
        flag
        for flag, on in (
            ("--run", args.run),
            ("--multirun", args.multirun),
            ("--cfg", args.cfg),
            ("--info", args.info),
            ("--shell-completion", args.shell_completion),
        )
        if on
    ]
    if len(modes) > 1:
        raise ConfigError(
            f"only one of --run, --multirun, --cfg, --info and --shell-completion can be given, got {' '.join(modes)}"
        )


# --- configurations -----------------------------------------------------------------------------------------


def compose(config_name: str, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """``configs/<config_name>.yaml`` with ``overrides``, composed outside a Hydra run (so no run folder is made)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def plain(cfg: DictConfig) -> dict:
    """A composed configuration as plain data, interpolations resolved, Hydra's own node left out (its run-time
    values are not known outside a run)."""
    return cast(
        dict, OmegaConf.to_container(OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"]), resolve=True)
    )


def run_hydra(task: Callable[[DictConfig], Any], config_name: str, argv: list[str]) -> None:
    """Run ``task`` as the Hydra app of ``configs/<config_name>.yaml`` on the command line ``argv``."""
    import hydra

    sys.argv = [sys.argv[0], *argv]
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()


# --- errors -------------------------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    """One line for the user: ours as raised, Hydra's override and missing-option errors, and OmegaConf's errors
    under Hydra's wrappers naming their key (:func:`engine.jobs.config.config_error`)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, OverrideParseException):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "bad override"
        return f"bad override: {first}"
    if isinstance(exc, MissingConfigException):
        options = list(getattr(exc, "options", None) or [])
        line = re.sub(r"^In '[^']*': ", "", " ".join(str(exc).split("\n")[0].split()))
        if not options:
            return line
        group, _, name = str(getattr(exc, "missing_cfg_file", "") or "").rpartition("/")
        close = difflib.get_close_matches(name, options, n=1) if group else []
        return f"{line} (available: {', '.join(options)}){f'; did you mean {group}={close[0]}?' if close else ''}"
    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, (EngineError, OmegaConfBaseException)):
        cause = cause.__cause__
    if isinstance(cause, EngineError):
        return " ".join(str(cause).split())
    if isinstance(cause, OmegaConfBaseException):
        return config_error(cause)
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(message: str) -> NoReturn:
    """``error: <message>`` on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def interrupted(message: str) -> NoReturn:
    """``interrupted: <message>`` on stderr (what was kept and how to go on), exit code 130 as for Ctrl-C."""
    print(f"interrupted: {message}", file=sys.stderr)
    sys.exit(130)
