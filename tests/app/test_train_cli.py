"""`python -m engine.training` as a user runs it: bad settings refused in one line before Hydra makes a run
folder; the result logged into the run's log file."""

import os
import subprocess
import sys

import pytest


def train_cli(*overrides: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.train", "algo=a2c", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


@pytest.mark.parametrize("override,message", [
    ("lr=nan", "lr must be a finite number > 0, got nan"),
    ("num_envs=0", "num_envs must be an integer >= 1, got 0"),
    ("core=transformer", "core must be one of lstm, gru, got 'transformer'"),
    ("env_id=Pongg-v4", "unknown environment id 'Pongg-v4'"),
    ("hidden=3", "Key 'hidden' not in 'TrainConfig'"),
])
def test_bad_training_settings_fail_in_one_line(tmp_path, override, message):
    result = train_cli(override, f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_training_logs_its_result(tmp_path):
    run = tmp_path / "run"
    result = train_cli("num_envs=1", "vector=sync", "rollout_steps=5", "total_frames=5", "checkpoint_every=5",
                       "progress=false", f"run_dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"last checkpoint: {run / 'checkpoints' / 'step_5.pt'}" in result.stdout
    assert "last checkpoint" in (run / "hydra" / "train.log").read_text()
    # a second run into the same folder on another game is refused in one line, and the run is kept
    again = train_cli("num_envs=1", "vector=sync", "rollout_steps=5", "total_frames=10", "checkpoint_every=5",
                      "env_id=Breakout-v4", "progress=false", f"run_dir={run}", cwd=tmp_path)
    assert again.returncode == 2 and "Pong-v4" in again.stderr and len(again.stderr.splitlines()) == 1
    assert (run / "checkpoints" / "step_5.pt").is_file() and (run / "hydra" / "train.log").is_file()
