"""The app as a user runs it: the main job on a short rollout, a tiny multirun, and bad overrides."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from engine.storage.arrays import load_arrays
from tests.conftest import checkpoints_env, tiny_job


def run_app(*overrides: str, cwd, progress: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m engine`` as a user runs it; baby-a3c agents only where ``env`` names their folders."""
    env = {**(os.environ if env is None else env), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            *[o for o in overrides if o.startswith("-")],
            "agent.allow_download=false",
            *([] if progress else ["progress=false"]),
            *[o for o in overrides if not o.startswith("-")],
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_main_job_writes_movie_arrays_and_figures(tmp_path):
    out = tmp_path / "run"
    # progress bars on (the default), but the output is not a terminal: tqdm leaves them out of the logs
    result = run_app(
        "agent=builtin_pong",
        "rollout.steps=6",
        "saliency.density=10",
        "output.stills=[2]",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        progress=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"written to {out}" in result.stdout
    assert "\r" not in result.stderr and "frame/s" not in result.stderr and "A.L.E" not in result.stderr
    log = (out / "engine.log").read_text()  # logging, not print: the run directory keeps what the console showed
    assert f"written to {out}" in log and "played 6 steps of Pong-v4" in log
    with av.open(str(out / "saliency.mp4")) as container:
        frames = list(container.decode(video=0))
        assert container.streams.video[0].average_rate == 8
    assert len(frames) == 6 and (frames[0].height, frames[0].width) == (420, 320)
    arrays, settings = load_arrays(out / "saliency.npz")
    assert arrays["actor"].shape == (6, 80, 80) and arrays["actor_scores"].shape == (6, 8, 8)
    # the 2017 architecture's built-in LSTM agent (engine/agents/pong), state (hx, cx)
    assert settings["config"]["saliency"]["density"] == 10
    assert "engine/agents/pong/step_" in settings["checkpoint"].replace(os.sep, "/")
    rollout_arrays, _ = load_arrays(out / "rollout.npz")
    assert rollout_arrays["frames"].shape == (6, 210, 160, 3) and rollout_arrays["state_0"].shape == (6, 256)
    assert (out / "frame_00002.png").exists() and (out / "jacobian_vs_perturbation_00003.png").exists()
    assert json.loads((out / "summary.json").read_text())["frames"] == 6
    # what was used: a 2017 agent (its core), in its own pipeline
    assert settings["config"]["agent"] | {"checkpoint_dirs": None} == {
        "checkpoint": "builtin/pong",
        "checkpoint_dirs": None,
        "cache_dir": None,
        "allow_download": False,
        "kind": "greydanus2017",
        "core": "lstm",
        "pipeline": "greydanus2017",
    }
    # the saved maps are those of the engine on the saved frames and states
    import torch

    from engine import load_agent
    from engine.core.perturbation import perturbation_saliency

    agent = load_agent(settings["checkpoint"], device="cpu")
    states = (torch.from_numpy(rollout_arrays["state_0"]), torch.from_numpy(rollout_arrays["state_1"]))
    again = perturbation_saliency(agent, rollout_arrays["frames"], states, density=10)
    assert np.array_equal(again.actor.numpy(), arrays["actor"])


def test_tiny_multirun_sweeps_radius(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_app(
        "-m",
        "saliency.radius=3,5",
        "rollout.steps=2",
        "saliency.density=20",
        "output.movie=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    radii = []
    for job in ("0", "1"):
        _, settings = load_arrays(sweep / job / "saliency.npz")
        radii.append(settings["config"]["saliency"]["radius"])
        assert (sweep / job / ".hydra" / "config.yaml").exists()
    assert radii == [3, 5]


def test_a_sweeps_summary_shows_what_it_swept_wherever_its_jobs_write(tmp_path):
    """summary.csv has a column for every setting the jobs differ in (blur_sigma had none), finds the jobs that
    write to an output.dir of their own (it found none), and leaves out the jobs an earlier sweep left in the same
    sweep directory (it mixed them in)."""
    import csv

    sweep = tmp_path / "sweep"
    common = ["rollout.steps=2", "saliency.density=20", "output.movie=false", f"hydra.sweep.dir={sweep}"]
    own_dirs = f"output.dir={tmp_path}/runs/sigma_${{saliency.blur_sigma}}"
    result = run_app("-m", "saliency.blur_sigma=1,3", own_dirs, *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["saliency.blur_sigma"], r["output_dir"]) for r in rows] == [
        ("0", "1.0", str(tmp_path / "runs" / "sigma_1.0")),
        ("1", "3.0", str(tmp_path / "runs" / "sigma_3.0")),
    ]
    assert (tmp_path / "runs" / "sigma_3.0" / "saliency.npz").is_file()
    assert '"saliency.blur_sigma"' in (sweep / "report.html").read_text()  # the page's table: summary.csv's columns
    again = run_app("-m", "saliency.blur_sigma=2", *common, cwd=tmp_path)  # one job, in the same sweep directory
    assert again.returncode == 0, again.stderr
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["output_dir"]) for r in rows] == [("0", str(sweep / "0"))]
    assert "left out 1 job folder(s) that an earlier sweep left" in again.stderr + again.stdout


def test_builtin_agent_runs_offline_without_shared_checkpoints(tmp_path):
    """The default main job (agent=builtin_pong_ppo) needs no checkpoint directory and no download: the agent ships
    in the package."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "ATARI_SALIENCY_CHECKPOINTS"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "rollout.steps=3",
            "saliency.density=20",
            "output.movie=false",
            "progress=false",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    arrays, settings = load_arrays(out / "saliency.npz")
    assert "engine/agents/pong_ppo/step_" in settings["checkpoint"].replace(os.sep, "/")
    rollout_arrays, _ = load_arrays(out / "rollout.npz")
    assert rollout_arrays["state_1"].shape == (3, 128) and rollout_arrays["observations"].shape == (3, 1, 84, 84)
    # the saved maps are the engine's on the saved observations with both saved state tensors (h, c)
    import torch

    from engine import load_policy
    from engine.core.saliency import SaliencyConfig, compute_saliency

    agent = load_policy(settings["checkpoint"], device="cpu")
    states = (torch.from_numpy(rollout_arrays["state_0"]), torch.from_numpy(rollout_arrays["state_1"]))
    again = compute_saliency(
        agent, torch.from_numpy(rollout_arrays["observations"]), states, SaliencyConfig(density=20)
    )
    assert np.array_equal(again["actor"].numpy(), arrays["actor"]) and np.array_equal(
        again["critic"].numpy(), arrays["critic"]
    )


@pytest.mark.parametrize(
    "override,message",
    [
        ("env.id=Pongg-v4", "unknown environment id 'Pongg-v4'"),
        ("agent.checkpoint=/missing/model.tar", "neither an existing file (no such file) nor a known name"),
        ("saliency.density=0", "density must be an integer >= 1"),
        ("saliency.chunk_size=0", "saliency.chunk_size was renamed: use saliency.perturbations_per_eval"),
        ("saliency.memory_budget_mb=nan", "saliency.memory_budget_mb must be a finite number"),
        ("saliency.incremental=maybe", "expected one of [auto, true, false]"),
        ("saliency.radus=3", "Key 'radus' not in 'SaliencyConfig'"),  # Hydra's errors too
        ("env=nope", "Could not find 'env/nope'"),
    ],
)
def test_bad_overrides_fail_before_heavy_work(tmp_path, override, message):
    """One line on stderr, exit code 2, and no run directory (nor Hydra's default outputs/) left behind."""
    result = run_app(override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_bad_multirun_fails_before_any_job(tmp_path):
    result = run_app("-m", "saliency.radius=3,5", "rollout.steps=2", "rollout.seed=0,-1", cwd=tmp_path)
    assert (
        result.returncode == 2 and "rollout.seed must be in" in result.stderr and len(result.stderr.splitlines()) == 1
    )
    assert not (tmp_path / "multirun").exists()


def test_a_job_refused_inside_hydra_leaves_no_run_directory(tmp_path):
    """With --config-dir the command line is checked by the job itself, after Hydra made its run directory:
    that directory (holding only .hydra/) is removed again."""
    extra = tmp_path / "extra_configs"
    extra.mkdir()
    result = run_app(
        f"--config-dir={extra}", "saliency.memory_budget_mb=-5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert result.returncode == 2 and "memory_budget_mb must be a finite number" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "run").exists()
    # Hydra's default run directory (outputs/<date>/<time>) goes too
    result = run_app(f"--config-dir={extra}", "saliency.memory_budget_mb=-5", cwd=tmp_path)
    assert result.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["extra_configs"]


@pytest.mark.parametrize("launcher", ["basic", "submitit_subprocess"])
def test_checkpoint_by_radius_sweep_over_one_recorded_rollout(tmp_path, launcher):
    """2 checkpoints x 2 radii replay one recorded game; the sweep ends with a 4-row summary.csv."""
    import csv

    sweep, store = tmp_path / "sweep", tmp_path / "rollout_store"
    flags = ["-m"] + ([] if launcher == "basic" else [f"hydra/launcher={launcher}"])
    result = run_app(
        *flags,
        "agent=baby_a3c_pong",
        "agent.checkpoint=baby-a3c/pong@40,baby-a3c/pong@80",
        "saliency.radius=3,5",
        "saliency.density=20",
        "rollout.steps=10",
        f"store.rollout={store}",
        "store.player=baby-a3c/pong@40",
        "store.frames_per_chunk=4",
        "output.movie=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env=checkpoints_env(("pong", 40), ("pong", 80)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    # the checkpoints by the names the command line gave, and the files they resolved to
    assert {(r["checkpoint"], float(r["radius"])) for r in rows} == {
        ("baby-a3c/pong@40", 3.0),
        ("baby-a3c/pong@40", 5.0),
        ("baby-a3c/pong@80", 3.0),
        ("baby-a3c/pong@80", 5.0),
    }
    assert all(r["checkpoint_file"].endswith(f"model.{r['checkpoint'][-2:]}.tar") for r in rows)
    assert all(r["frames"] == "10" and r["complete"] == "True" and float(r["actor_max"]) > 0 for r in rows)
    # one recorded game for all: a single rollout store, each job its own saliency store
    from engine.storage.store import RolloutStore, SaliencyStore

    recorded = RolloutStore.open(store)
    assert recorded.complete and recorded.num_steps == 10 and len(recorded.bounds) == 1
    maps_40 = SaliencyStore.open(sweep / "0" / "saliency_store")
    assert maps_40.complete and maps_40.read()["actor"].shape == (10, 80, 80)


def test_a_rerun_into_the_same_directory_leaves_no_mix(tmp_path):
    """The second job writes no movie and no stills: the first job's must not stay beside its arrays."""
    from engine.jobs.run import run_job

    first = run_job(tiny_job(tmp_path, output={"stills": [1, 2]}))
    assert {"movie", "still_1", "still_2", "comparison"} <= set(first)
    (tmp_path / "notes.txt").write_text("not the job's")
    second = run_job(tiny_job(tmp_path, output={"movie": False, "comparison_frame": 3}))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "jacobian_vs_perturbation_00003.png",
        "notes.txt",
        "report.html",
        "rollout.npz",
        "saliency.npz",
        "summary.json",
    ]
    assert set(second) == {"rollout", "saliency", "comparison", "report", "summary"}
    assert json.loads((tmp_path / "summary.json").read_text())["written"].keys() == {
        "rollout",
        "saliency",
        "comparison",
        "report",
    }
    assert json.loads((tmp_path / "summary.json").read_text())["warnings"] == []
    # the figure is a Jacobian pass of its own, one per game: a long many-games job may leave it out
    third = run_job(tiny_job(tmp_path, output={"movie": False, "comparison": False, "report": False}))
    assert set(third) == {"rollout", "saliency", "summary"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "rollout.npz", "saliency.npz", "summary.json"]


def test_all_zero_maps_are_said(tmp_path, caplog):
    """An agent whose outputs no perturbation changes (its LSTM saturated by biases of 9e5, within the loaders'
    bound on weights) has maps that are zero everywhere: the job says so in its log and in summary.json."""
    from engine.jobs.run import run_job
    from engine.policies.registry import resolve_checkpoint

    state = torch.load(resolve_checkpoint("builtin/pong@500160"), weights_only=True)
    saturated = {
        k: v.float() * (9e5 / float(v.float().abs().max())) if k.startswith("lstm.bias") else v
        for k, v in state.items()
    }
    torch.save(saturated, tmp_path / "saturated.pt")
    config = tiny_job(tmp_path / "run", movie=False, agent={"checkpoint": str(tmp_path / "saturated.pt")})
    with caplog.at_level("WARNING", logger="engine"):
        run_job(config)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["actor_max"] == summary["critic_max"] == 0
    (warning,) = summary["warnings"]
    assert warning.startswith("no perturbation changed any output") and "actor" in warning and "critic" in warning
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [warning]


def test_sweep_summary_names_checkpoints_as_given(tmp_path):
    """summary.csv's checkpoint column is what the user typed (a registry name, a relative path); the file it
    resolved to is in checkpoint_file."""
    from dataclasses import asdict

    from engine.cli.app import summary_columns, summary_rows

    given = {"baby-a3c/pong@40": "/data/baby-a3c/pong-v4/model.40.tar", "runs/mine.pt": "/home/me/runs/mine.pt"}
    methods = ["both", ["perturbation", "rise"]]
    for job, (name, file) in enumerate(given.items()):
        (tmp_path / str(job)).mkdir()
        config = asdict(tiny_job(tmp_path / str(job), agent={"checkpoint": name}, saliency={"method": methods[job]}))
        summary = {"config": config, "checkpoint": file, "frames": 4}
        (tmp_path / str(job) / "summary.json").write_text(json.dumps(summary, default=str))
    rows = summary_rows(tmp_path)
    assert [(r["checkpoint"], r["checkpoint_file"]) for r in rows] == list(given.items())
    assert [r["method"] for r in rows] == ["both", "perturbation+rise"]  # one CSV cell each
    columns = summary_columns(rows)
    assert columns.index("checkpoint_file") == columns.index("checkpoint") + 1


def test_statistics_are_streamed_chunk_by_chunk():
    """MapStatistics over chunks equals the statistics of all maps at once."""
    import torch

    from engine.jobs.outputs import MapStatistics, map_statistics

    generator = torch.Generator().manual_seed(0)
    maps = {k: torch.rand(23, 80, 80, generator=generator, dtype=torch.float32) ** 3 for k in ("actor", "critic")}
    streamed = MapStatistics()
    for a, b in ((0, 5), (5, 6), (6, 23)):
        streamed.update({k: v[a:b].numpy() for k, v in maps.items()})
    full = {f"{k}_{s}": float(getattr(v.double(), s)()) for k, v in maps.items() for s in ("mean", "max")}
    got = streamed.result()
    assert got.keys() == full.keys() == map_statistics(maps).keys()
    assert all(got[k] == pytest.approx(full[k], rel=1e-12, abs=0) for k in full), (got, full)


def test_store_job_statistics_equal_the_full_computation(tmp_path, monkeypatch):
    """A store job reads its maps one chunk at a time for the summary; the result equals all maps at once."""
    from engine.jobs.outputs import MapStatistics
    from engine.jobs.run import run_job
    from engine.storage.store import SaliencyStore

    reads = []
    original = MapStatistics.update
    monkeypatch.setattr(
        MapStatistics, "update", lambda self, maps: (reads.append(len(maps["actor"])), original(self, maps))
    )
    config = tiny_job(
        tmp_path / "run",
        rollout={"steps": 10},
        output={"movie": False},
        store={"rollout": str(tmp_path / "rollout_store"), "frames_per_chunk": 4},
    )
    run_job(config)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    maps = SaliencyStore.open(tmp_path / "run" / "saliency_store").read()
    assert reads == [4, 4, 2]  # one chunk at a time
    for key in ("actor", "critic"):
        assert summary[f"{key}_mean"] == pytest.approx(float(maps[key].astype(np.float64).mean()), rel=1e-12)
        assert summary[f"{key}_max"] == float(maps[key].max())


# --- your own agent: SB3 and CleanRL files through the app ------------------------------------------------------


@pytest.mark.parametrize("kind", ["sb3", "cleanrl"])
def test_main_job_explains_a_library_agent(tmp_path, kind):
    """`python -m engine agent=sb3 agent.checkpoint=...` (and cleanrl): the agent plays in its own pipeline,
    its maps are 84x84 over the whole frame, arrays hold the observations it saw, summaries name the actions."""
    from tests import cleanrl_scripts, sb3_agents

    if kind == "sb3":
        checkpoint = tmp_path / "rppo.zip"
        sb3_agents.make_agent("rppo", checkpoint)  # RecurrentPPO: actor and critic LSTMs, 4 state tensors
    else:
        checkpoint = tmp_path / "agent.cleanrl_model"
        cleanrl_scripts.save_like_cleanrl(cleanrl_scripts.make_agent("ppo_atari"), checkpoint)
    out = tmp_path / "run"
    result = run_app(
        f"agent={kind}",
        f"agent.checkpoint={checkpoint}",
        "env=pong",
        "rollout.steps=6",
        "saliency=both",
        "saliency.density=20",
        "output.stills=[2]",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    maps, settings = load_arrays(out / "saliency.npz")
    assert maps["actor"].shape == (6, 84, 84) and maps["actor_scores"].shape == (6, 5, 5)
    assert maps["jacobian_actor"].shape == (6, 84, 84) and float(maps["actor"].max()) > 0
    played, _ = load_arrays(out / "rollout.npz")
    assert played["observations"].shape == (6, 4, 84, 84) and played["frames"].shape == (6, 210, 160, 3)
    assert len([k for k in played if k.startswith("state_")]) == (4 if kind == "sb3" else 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["action_names"][:2] == ["NOOP", "FIRE"] and sum(summary["action_counts"].values()) == 6
    assert summary["pipeline"]["name"] == ("sb3_atari" if kind == "sb3" else "cleanrl_atari")
    # the agent as it was used: its kind and pipeline, no 2017 core or preprocessing
    agent_settings = summary["config"]["agent"]
    assert agent_settings["kind"] == kind and agent_settings["pipeline"] == summary["pipeline"]["name"]
    assert "core" not in agent_settings and "preprocessing" not in agent_settings
    assert (out / "frame_00002.png").is_file() and (out / "saliency.mp4").is_file()
    # the saved maps are the engine's maps of the saved observations and states
    from engine.core.saliency import compute_saliency
    from engine.core.settings import SaliencyConfig
    from engine.policies.loading import load_policy

    agent = load_policy(checkpoint, device="cpu")
    states = tuple(torch.from_numpy(played[f"state_{i}"]) for i in range(len(agent.initial_state(1))))
    again = compute_saliency(agent, played["observations"], states, SaliencyConfig(density=20))
    assert np.array_equal(again["actor"].numpy(), maps["actor"])
