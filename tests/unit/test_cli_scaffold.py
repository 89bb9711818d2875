"""The command lines' Hydra scaffold (engine/cli/scaffold.py): its argument parser reads a command line as Hydra's
own parser does, so an upgrade of Hydra that changes Hydra's arguments is noticed here; and the engine never
imports Hydra's private modules (only this test does, to compare)."""

import argparse
import subprocess
from pathlib import Path

import pytest
from hydra._internal.utils import get_args_parser  # Hydra's private parser: the reference, in this test only

from engine.cli.scaffold import ConfigError, args_parser, check_one_mode, hydra_own_mode, one_line

ROOT = Path(__file__).resolve().parents[2]

COMMAND_LINES = [
    [],
    ["saliency.radius=3", "rollout.steps=2"],
    ["-m", "saliency.radius=3,5", "hydra/launcher=submitit_local"],
    ["--multirun", "+extra=1", "~dropped"],
    ["--cfg", "job", "--resolve"],
    ["-c", "hydra", "-p", "hydra.run"],
    ["--cfg=all", "--package", "_global_"],
    ["--help"],
    ["-h", "--hydra-help"],
    ["--info"],
    ["-i", "defaults-tree", "env=breakout"],
    ["--info", "searchpath"],
    ["--config-path", "/tmp/configs", "--config-name", "other", "x=1"],
    ["-cp", "conf", "-cn", "main", "-cd", "/tmp/extra"],
    ["--config-dir=/tmp/extra", "algo=a2c"],
    ["--run", "algo=ppo"],
    ["-r", "-m", "a=1"],
    ["--shell-completion", "query=x"],
    ["-sc"],
    ["--experimental-rerun", "outputs/config.pickle"],
    ["algo=a2c", "--cfg", "job"],
]

# the overrides are one positional argument: argparse refuses a second run of them after an option
BAD_COMMAND_LINES = [
    ["--cfg", "nope"],
    ["--info", "nope"],
    ["--cfg"],
    ["--no-such-option"],
    ["-cn"],
    ["a=1", "-m", "b=2"],
]


def options(parser: argparse.ArgumentParser) -> dict:
    """Each argument's names, destination, arity, choices, constant, default and kind of action."""
    return {
        a.dest: (
            sorted(a.option_strings),
            a.nargs,
            a.choices and list(a.choices),
            a.const,
            a.default,
            type(a).__name__,
            a.required,
        )
        for a in parser._actions
    }


def test_our_parser_defines_hydras_arguments():
    assert options(args_parser()) == options(get_args_parser())


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda argv: " ".join(argv) or "(none)")
def test_our_parser_reads_a_command_line_as_hydra_does(argv):
    assert vars(args_parser().parse_args(argv)) == vars(get_args_parser().parse_args(argv))


@pytest.mark.parametrize("argv", BAD_COMMAND_LINES, ids=" ".join)
def test_our_parser_refuses_what_hydra_refuses(argv, capsys):
    for parser in (args_parser(), get_args_parser()):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_hydras_own_modes_and_one_mode_at_a_time():
    parse = args_parser().parse_args
    assert not hydra_own_mode(parse(["--cfg", "job", "-m", "a=1,2"]))
    assert all(
        hydra_own_mode(parse(argv))
        for argv in (
            ["-h"],
            ["--hydra-help"],
            ["-i"],
            ["-sc"],
            ["-cp", "c"],
            ["-cd", "c"],
            ["--experimental-rerun", "x.pickle"],
        )
    )
    check_one_mode(parse(["--cfg", "job"]))
    with pytest.raises(ConfigError, match="^only one of .* got --multirun --cfg$"):
        check_one_mode(parse(["-m", "--cfg", "job"]))


def test_errors_are_one_line():
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigKeyError

    from engine.core.errors import EngineError

    wrapped = ConfigCompositionException("Error merging override\nmore")
    wrapped.__cause__ = EngineError("lr must be\na finite number")
    assert one_line(wrapped) == "lr must be a finite number"
    key = ConfigKeyError("Key 'hidden' not in 'TrainConfig'")
    key.__dict__.update(full_key="hidden", msg="Key 'hidden' not in 'TrainConfig'")
    outer = ConfigCompositionException("Could not override 'hidden'.\nTo append to your config use +hidden=3")
    outer.__cause__ = key
    assert one_line(outer) == "Key 'hidden' not in 'TrainConfig' (--cfg job prints every key)"
    assert one_line(RuntimeError("two\nlines")) == "two lines"


def test_the_engine_never_imports_hydras_private_modules():
    found = subprocess.run(
        ["git", "grep", "-n", "hydra._internal", "--", "engine/"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert found.returncode == 1 and found.stdout == "", found.stdout  # 1: no match
