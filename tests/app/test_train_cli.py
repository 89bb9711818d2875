"""`python -m engine.train algo=ppo|a2c` as a user runs it: the algo picks the trainer's schema, bad settings are
refused in one line before Hydra makes a run folder, the result is logged into the run's log file."""

import os
import subprocess
import sys

import pytest


def train_cli(
    *overrides: str, cwd, algo: str | None = "a2c", module: str = "engine.train"
) -> subprocess.CompletedProcess:
    algo_override = [f"algo={algo}"] if algo else []
    return subprocess.run(
        [sys.executable, "-m", module, *algo_override, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        check=False,
    )


@pytest.mark.parametrize("algo,schema", [("a2c", "TrainConfig"), ("ppo", "PPOConfig"), (None, "PPOConfig")])
def test_cfg_job_prints_the_trainers_configuration(tmp_path, algo, schema):
    """`--cfg job` prints the chosen trainer's options (PPO by default) and makes no run folder."""
    import yaml

    from engine.training.a2c import TrainConfig
    from engine.training.ppo import PPOConfig

    result = train_cli("seed=7", "--cfg", "job", cwd=tmp_path, algo=algo)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    defaults = {"TrainConfig": TrainConfig, "PPOConfig": PPOConfig}[schema]()
    assert set(printed) == set(vars(defaults)) and printed["seed"] == 7 and printed["env_id"] == defaults.env_id
    assert printed["device"] == "auto"
    on_cpu = train_cli("device=cpu", "--cfg", "job", cwd=tmp_path, algo=algo)  # as the main job takes it
    assert on_cpu.returncode == 0 and yaml.safe_load(on_cpu.stdout)["device"] == "cpu", on_cpu.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_algo_names_the_choices(tmp_path):
    result = train_cli(f"run_dir={tmp_path / 'run'}", cwd=tmp_path, algo="foo")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "algo/foo" in result.stderr and "(available: a2c, ppo)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_setting_of_the_other_trainer_is_refused(tmp_path):
    result = train_cli("clip_coef=0.2", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)  # a PPO setting, algo=a2c
    assert result.returncode == 2 and "Key 'clip_coef' not in 'TrainConfig'" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_help_lists_the_trainers(tmp_path):
    result = train_cli("--help", cwd=tmp_path, algo=None)
    assert result.returncode == 0, result.stderr
    assert "algo: a2c, ppo" in result.stdout and "clip_coef:" in result.stdout  # PPO's options by default
    assert list(tmp_path.iterdir()) == []


def test_the_old_command_names_the_new_one(tmp_path):
    result = train_cli("lr=0.1", cwd=tmp_path, algo=None, module="engine.training")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "python -m engine.train algo=a2c" in result.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("lr=nan", "lr must be a finite number > 0, got nan"),
        ("num_envs=0", "num_envs must be an integer >= 1, got 0"),
        ("core=transformer", "core must be one of lstm, gru, got 'transformer'"),
        ("env_id=Pongg-v4", "unknown environment id 'Pongg-v4'"),
        ("hidden=3", "Key 'hidden' not in 'TrainConfig'"),
    ],
)
def test_bad_training_settings_fail_in_one_line(tmp_path, override, message):
    result = train_cli(override, f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_training_logs_its_result(tmp_path):
    run = tmp_path / "run"
    result = train_cli(
        "num_envs=1",
        "vector=sync",
        "rollout_steps=5",
        "total_frames=5",
        "checkpoint_every=5",
        "progress=false",
        f"run_dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"last checkpoint: {run / 'checkpoints' / 'step_5.pt'}" in result.stdout
    assert "last checkpoint" in (run / "hydra" / "train.log").read_text()
    # a second run into the same folder on another game is refused in one line, and the run is kept
    again = train_cli(
        "num_envs=1",
        "vector=sync",
        "rollout_steps=5",
        "total_frames=10",
        "checkpoint_every=5",
        "env_id=Breakout-v4",
        "progress=false",
        f"run_dir={run}",
        cwd=tmp_path,
    )
    assert again.returncode == 2 and "Pong-v4" in again.stderr and len(again.stderr.splitlines()) == 1
    assert (run / "checkpoints" / "step_5.pt").is_file() and (run / "hydra" / "train.log").is_file()
    # refused before Hydra runs: the record of how the run was trained is the first command's
    assert "env_id: Pong-v4" in (run / "hydra" / ".hydra" / "config.yaml").read_text()


def test_a_refusal_inside_the_run_removes_the_folder_it_made(tmp_path):
    """A setting refused by the trainer itself (after Hydra made <run_dir>/hydra) leaves no run folder behind."""
    import importlib.util

    if importlib.util.find_spec("envpool") is not None:
        pytest.skip("envpool is installed: envs=envpool is not refused")
    result = train_cli("envs=envpool", f"run_dir={tmp_path / 'run'}", cwd=tmp_path, algo="ppo")
    assert result.returncode == 2 and "envs=envpool needs envpool" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["seed=2,-1", "run_dir=RUNS/run_${seed}"], "seed must be in 0..2**32-1, got -1"),
        (["lrr=1,2"], "Key 'lrr' not in 'TrainConfig'"),
        (["seed=1,2", "run_dir=RUNS/one"], "runs 0 and 1 of this sweep train into one run_dir="),
        (["seed=1,2", "run_dir=AFILE/run_${seed}"], "run_dir AFILE/run_1 is inside a file"),
    ],
    ids=["a bad value in the second run", "an unknown key", "one run_dir", "a run_dir inside a file"],
)
def test_every_run_of_a_training_sweep_is_checked_before_the_first_trains(tmp_path, overrides, message):
    from engine.cli.scaffold import ConfigError
    from engine.cli.train import precheck, trainers

    afile = tmp_path / "afile"
    afile.write_text("")

    def placed(text: str) -> str:
        return text.replace("RUNS", str(tmp_path / "runs")).replace("AFILE", str(afile))

    with pytest.raises(ConfigError) as refused:
        precheck(["-m", "algo=a2c", *map(placed, overrides)], trainers())
    assert placed(message) in str(refused.value) and "\n" not in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert precheck(["-m", "algo=a2c", "seed=1,2", f"run_dir={tmp_path}/runs/seed_${{seed}}"], trainers()) is None


def test_ctrl_c_before_the_first_checkpoint_is_one_line_and_keeps_nothing(tmp_path):
    from tests.conftest import interrupted_command

    run = tmp_path / "run"
    argv = [
        *("-m", "engine.train", "algo=a2c", "num_envs=1", "vector=sync", "rollout_steps=5", "total_frames=10000000"),
        *("checkpoint_every=10000000", "progress=false", f"run_dir={run}"),
    ]
    returncode, stderr = interrupted_command(argv, tmp_path, run / "hydra", settle=2.0)  # into the training loop
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: stopped before the first checkpoint: nothing is kept"
    assert not run.exists()


def test_ctrl_c_in_hydras_start_is_one_line_and_keeps_nothing(tmp_path, monkeypatch, capsys):
    """Ctrl-C after Hydra made the run folder but before the training began (outside its handler): exit code 130,
    the one line, and the folder removed."""
    from engine.cli import train

    run = tmp_path / "run"

    def started_then_interrupted(*args):
        (run / "hydra" / ".hydra").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run_hydra", started_then_interrupted)
    with pytest.raises(SystemExit) as exited:
        train.main(["algo=a2c", "num_envs=1", "progress=false", f"run_dir={run}"])
    assert exited.value.code == 130 and not run.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted: stopped before the first checkpoint: nothing is kept"
    )
