"""The app as a user runs it: the main job on a short rollout, a tiny multirun, and bad overrides."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from engine.storage import load_arrays
from tests.conftest import CHECKPOINTS, ROOT


def run_app(*overrides: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATARI_SALIENCY_CHECKPOINTS": str(CHECKPOINTS), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *[o for o in overrides if o.startswith("-")], "agent.allow_download=false",
         "progress=false", *[o for o in overrides if not o.startswith("-")]],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_main_job_writes_movie_arrays_and_figures(tmp_path):
    out = tmp_path / "run"
    result = run_app("rollout.steps=6", "saliency.density=10", "output.stills=[2]", f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"written to {out}" in result.stdout
    with av.open(str(out / "saliency.mp4")) as container:
        frames = list(container.decode(video=0))
        assert container.streams.video[0].average_rate == 8
    assert len(frames) == 6 and (frames[0].height, frames[0].width) == (420, 320)
    arrays, settings = load_arrays(out / "saliency.npz")
    assert arrays["actor"].shape == (6, 80, 80) and arrays["actor_scores"].shape == (6, 8, 8)
    # the default agent is the built-in LSTM agent (engine/agents/pong), state (hx, cx)
    assert settings["config"]["saliency"]["density"] == 10
    assert "engine/agents/pong/step_" in settings["checkpoint"].replace(os.sep, "/")
    rollout_arrays, _ = load_arrays(out / "rollout.npz")
    assert rollout_arrays["frames"].shape == (6, 210, 160, 3) and rollout_arrays["state_0"].shape == (6, 256)
    assert (out / "frame_00002.png").exists() and (out / "jacobian_vs_perturbation_00003.png").exists()
    assert json.loads((out / "summary.json").read_text())["frames"] == 6
    # the saved maps are those of the engine on the saved frames and states
    import torch

    from engine import load_agent
    from engine.perturbation import perturbation_saliency

    agent = load_agent(settings["checkpoint"], device="cpu")
    states = (torch.from_numpy(rollout_arrays["state_0"]), torch.from_numpy(rollout_arrays["state_1"]))
    again = perturbation_saliency(agent, rollout_arrays["frames"], states, density=10)
    assert np.array_equal(again.actor.numpy(), arrays["actor"])


def test_tiny_multirun_sweeps_radius(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_app(
        "-m", "saliency.radius=3,5", "rollout.steps=2", "saliency.density=20", "output.movie=false",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    radii = []
    for job in ("0", "1"):
        _, settings = load_arrays(sweep / job / "saliency.npz")
        radii.append(settings["config"]["saliency"]["radius"])
        assert (sweep / job / ".hydra" / "config.yaml").exists()
    assert radii == [3, 5]


def test_builtin_agent_runs_offline_without_shared_checkpoints(tmp_path):
    """The default main job (agent=builtin_pong) needs no checkpoint directory and no download: the agent ships
    in the package."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "ATARI_SALIENCY_CHECKPOINTS"}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "rollout.steps=3", "saliency.density=20",
         "output.movie=false", "progress=false", f"hydra.run.dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    arrays, settings = load_arrays(out / "saliency.npz")
    assert "engine/agents/pong/step_" in settings["checkpoint"].replace(os.sep, "/")
    rollout_arrays, _ = load_arrays(out / "rollout.npz")
    assert rollout_arrays["state_1"].shape == (3, 256)  # the LSTM's cx
    # the saved maps are the engine's on the saved frames with both saved state tensors
    import torch

    from engine import load_agent
    from engine.perturbation import perturbation_saliency

    agent = load_agent(settings["checkpoint"], device="cpu")
    states = (torch.from_numpy(rollout_arrays["state_0"]), torch.from_numpy(rollout_arrays["state_1"]))
    again = perturbation_saliency(agent, rollout_arrays["frames"], states, density=20)
    assert np.array_equal(again.actor.numpy(), arrays["actor"]) and np.array_equal(again.critic.numpy(), arrays["critic"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("env.id=Pongg-v4", "unknown environment id 'Pongg-v4'"),
        ("agent.checkpoint=/missing/model.tar", "neither an existing file nor a known name"),
        ("saliency.density=0", "density must be in 1..80"),
    ],
)
def test_bad_overrides_fail_before_heavy_work(tmp_path, override, message):
    result = run_app(override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "saliency.npz").exists()


@pytest.mark.parametrize("launcher", ["basic", "submitit_subprocess"])
def test_checkpoint_by_radius_sweep_over_one_recorded_rollout(tmp_path, launcher):
    """2 checkpoints x 2 radii replay one recorded game; the sweep ends with a 4-row summary.csv."""
    import csv

    sweep, store = tmp_path / "sweep", tmp_path / "rollout_store"
    flags = ["-m"] + ([] if launcher == "basic" else [f"hydra/launcher={launcher}"])
    result = run_app(
        *flags, "agent=baby_a3c_pong", "agent.checkpoint=baby-a3c/pong@40,baby-a3c/pong@80", "saliency.radius=3,5", "saliency.density=20",
        "rollout.steps=10", f"store.rollout={store}", "store.player=baby-a3c/pong@40", "store.frames_per_chunk=4",
        "output.movie=false",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(r["checkpoint"].rsplit("/", 1)[-1], float(r["radius"])) for r in rows} == {
        ("model.40.tar", 3.0), ("model.40.tar", 5.0), ("model.80.tar", 3.0), ("model.80.tar", 5.0)}
    assert all(r["frames"] == "10" and r["complete"] == "True" and float(r["actor_max"]) > 0 for r in rows)
    # one recorded game for all: a single rollout store, each job its own saliency store
    assert (store / "manifest.json").exists() and len(list((store / "chunks").glob("*.npz"))) == 1
    maps_40 = [load_arrays(p)[0] for p in sorted((sweep / "0" / "saliency_store" / "chunks").glob("*.npz"))]
    assert sum(m["actor"].shape[0] for m in maps_40) == 10
