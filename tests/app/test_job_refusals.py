"""A job that is refused touches nothing: the finished run it would have replaced stays byte for byte, in process
and through the command line. An agent of another game than ``env.id`` is refused (registry names and built-in
agents) or named in a warning (a user's file whose metadata names its game), and an agent with another number of
actions is answered with an environment that fits it."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from engine.core.errors import EngineError
from engine.jobs.run import run_job, validate_job
from engine.policies.registry import resolve_checkpoint
from tests.app.test_app import run_app
from tests.conftest import checkpoint_root, tiny_job


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``, by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """``run/``: a finished in-memory job (arrays, a still, the comparison figure, report, summary); ``other/``: a
    finished store job (its saliency store inside) whose game is recorded in ``rollout_store/``; ``stray/``: a
    folder of someone else's files; ``notes.txt``: a file that is no agent."""
    root = tmp_path_factory.mktemp("finished")
    run_job(tiny_job(root / "run", movie=False, output={"stills": [1]}))
    run_job(tiny_job(root / "other", movie=False, store={"rollout": str(root / "rollout_store")}))
    (root / "stray").mkdir()
    (root / "stray" / "results.csv").write_text("someone else's\n")
    (root / "notes.txt").write_text("not an agent\n")
    return root


def refusals(root: Path) -> dict[str, tuple[dict, str]]:
    """Reruns into ``root/run`` that are refused: the sections of each job's settings and its message."""
    rollout, new = str(root / "rollout_store"), str(root / "new_store")
    return {
        "store without manifest": ({"store": {"rollout": str(root / "stray")}}, "not adopting"),
        "store of other settings": (
            {
                "store": {"rollout": rollout, "saliency": str(root / "other" / "saliency_store")},
                "saliency": {"radius": 3},
            },
            "written with other settings",
        ),
        "player not an agent": ({"store": {"rollout": new, "player": str(root / "notes.txt")}}, "not an agent file"),
        "player of another pipeline": (
            {"store": {"rollout": new, "player": "builtin/pong_ppo"}},
            "store.player builtin/pong_ppo plays in the cleanrl_atari pipeline",
        ),
        "recorded for another pipeline": (
            {"store": {"rollout": rollout}, "agent": {"checkpoint": "builtin/pong_ppo"}},
            "recorded in the greydanus2017 pipeline",
        ),
        "agent not an agent": ({"agent": {"checkpoint": str(root / "notes.txt")}}, "not an agent file"),
        "recorded for another game": (
            {"store": {"rollout": rollout}, "env": {"id": "Breakout-v4"}, "agent": {"checkpoint": "baby-a3c/breakout"}},
            r"holds Pong-v4, not Breakout-v4: use another store.rollout for Breakout-v4 \(or env.id=Pong-v4 to replay it\)",
        ),
        "player not found": (
            {"store": {"rollout": new, "player": str(root / "nope.pt")}},
            "store.player: checkpoint '.*nope.pt' is neither an existing file",
        ),
    }


@pytest.mark.parametrize("refusal", list(refusals(Path("."))))
def test_a_refused_rerun_leaves_the_finished_run_as_it_was(finished, tmp_path, refusal):
    root = tmp_path / "root"
    shutil.copytree(finished, root)
    before = tree(root)
    sections, message = refusals(root)[refusal]
    config = tiny_job(root / "run", movie=False, output={"stills": [1]}, **sections)
    with pytest.raises(EngineError, match=message):
        run_job(config)
    assert tree(root) == before  # no output removed, no store made


@pytest.mark.parametrize("refusal", ["store without manifest", "store of other settings"])
def test_a_store_refused_as_the_job_opens_it_leaves_the_finished_run(finished, tmp_path, monkeypatch, refusal):
    """Without the checks up front, the stores refuse as the job opens them: the earlier run's files are removed
    only once the job has its results, so they stay too."""
    from engine.jobs import game, prepare

    for module in (game, prepare):  # as the job is validated, and again before it runs
        monkeypatch.setattr(module, "check_game_stores", lambda prepared, output_known=True: None)
    root = tmp_path / "root"
    shutil.copytree(finished, root)
    before = {k: v for k, v in tree(root).items() if k.startswith("run/")}
    sections, message = refusals(root)[refusal]
    config = tiny_job(root / "run", movie=False, output={"stills": [1]}, **sections)
    with pytest.raises(EngineError, match=message):
        run_job(config)
    assert {k: v for k, v in tree(root).items() if k.startswith("run/")} == before


def test_a_refused_rerun_through_the_command_line_leaves_the_run_directory(tmp_path):
    """Refused by the check before Hydra starts, the run directory is untouched (its .hydra/ and log included);
    refused by the job inside Hydra (--config-dir), its results stay and so does the directory."""
    run, store = tmp_path / "run", tmp_path / "rollout_store"
    common = [
        "agent=builtin_pong",
        "rollout.steps=4",
        "saliency.density=20",
        "output.movie=false",
        f"hydra.run.dir={run}",
    ]
    result = run_app(*common, "output.stills=[1]", f"store.rollout={store}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "results.csv").write_text("someone else's\n")
    before = tree(run)
    assert {"report.html", "summary.json", "frame_00001.png", "saliency_store", ".hydra", "engine.log"} <= set(before)
    for overrides, message in (
        ([f"store.rollout={tmp_path / 'stray'}"], "not adopting"),
        ([f"store.rollout={store}", "saliency.radius=3"], "written with other settings"),
    ):
        result = run_app(*common, *overrides, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
        assert tree(run) == before
    extra = tmp_path / "extra_configs"
    extra.mkdir()
    result = run_app(*common, f"--config-dir={extra}", f"store.rollout={tmp_path / 'stray'}", cwd=tmp_path)
    assert result.returncode == 2 and "not adopting" in result.stderr
    after = tree(run)  # Hydra itself rewrote .hydra/ and the log before the job refused
    assert {k: v for k, v in after.items() if k != "engine.log" and not k.startswith(".hydra")} == {
        k: v for k, v in before.items() if k != "engine.log" and not k.startswith(".hydra")
    }


# --- the agent's game ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "checkpoint,env_id,words",
    [
        ("baby-a3c/spaceinvaders", "Pong-v4", ("SpaceInvaders", "Pong-v4", "env=spaceinvaders")),
        ("builtin/pong", "SpaceInvaders-v4", ("Pong", "SpaceInvaders-v4", "env=pong")),
        ("builtin/breakout_ppo", "ALE/Pong-v5", ("BreakoutNoFrameskip-v4", "ALE/Pong-v5", "env=breakout")),
    ],
)
def test_an_agent_of_another_game_is_refused(checkpoint, env_id, words):
    dirs = [str(checkpoint_root("spaceinvaders"))] if checkpoint.startswith("baby-a3c/") else []
    config = tiny_job(
        ".", env={"id": env_id}, agent={"checkpoint": checkpoint, "checkpoint_dirs": dirs, "core": "auto"}
    )
    with pytest.raises(EngineError) as refused:
        validate_job(config)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and all(w in message for w in words), message


def test_the_same_game_under_another_id_is_accepted():
    for env_id in ("Pong-v4", "PongNoFrameskip-v4", "ALE/Pong-v5"):
        assert validate_job(tiny_job(".", env={"id": env_id}, agent={"checkpoint": "builtin/pong_ppo"})).warnings == []


def user_copy(tmp_path: Path, name: str, metadata: bool) -> Path:
    """The file of built-in agent ``name`` copied as a user's file, with its metadata beside it or without."""
    source = resolve_checkpoint(name)
    target = tmp_path / "mine.pt"
    shutil.copyfile(source, target)
    if metadata:
        shutil.copyfile(source.with_suffix(".json"), target.with_suffix(".json"))
    return target


def test_a_users_agent_of_another_game_is_named_in_a_warning(tmp_path, caplog):
    agent = user_copy(tmp_path, "builtin/pong@500160", metadata=True)
    config = tiny_job(tmp_path / "run", movie=False, env={"id": "SpaceInvaders-v4"}, agent={"checkpoint": str(agent)})
    with caplog.at_level(logging.WARNING, logger="engine"):
        run_job(config)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "trained on" in r.getMessage()]
    assert len(said) == 1 and "Pong-v4" in said[0] and "SpaceInvaders-v4" in said[0], said
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"] == said


@pytest.mark.parametrize(
    "agent,metadata,env,expected,not_expected",
    [
        # a 6-action agent of no known game on Breakout (4): the bundled games with 6 actions
        ("builtin/pong@500160", False, {"id": "Breakout-v4"}, ("env=pong", "env=spaceinvaders"), "env=breakout"),
        # its metadata names the game: that one
        ("builtin/pong@500160", True, {"id": "Breakout-v4"}, ("env=pong",), "env=spaceinvaders"),
        # a 4-action agent of no known game on Pong (6)
        ("builtin/breakout_ppo", False, {"id": "Pong-v4"}, ("env=breakout",), "env=pong"),
        # its own game with all 18 actions
        (
            "builtin/pong@500160",
            True,
            {"id": "Pong-v4", "full_action_space": True},
            ("env.full_action_space=false",),
            "env=",
        ),
    ],
)
def test_an_agent_with_other_actions_is_told_which_env_fits(tmp_path, agent, metadata, env, expected, not_expected):
    config = tiny_job(".", env=env, agent={"checkpoint": str(user_copy(tmp_path, agent, metadata))})
    with pytest.raises(EngineError, match="actions") as refused:
        validate_job(config)
    message = str(refused.value)
    assert all(w in message for w in expected) and not_expected not in message.replace("env.id", ""), message


# --- settings that do not fit the agent, refused before anything runs --------------------------------------------


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"saliency": {"method": "occlusion", "occlusion": {"window": 100}}},
            "saliency.occlusion.window 100 is larger than the 84x84 observation",
        ),
        ({"saliency": {"compat": "paper"}}, "saliency.compat=paper .* are 84x84: use saliency.compat=exact"),
        (
            {"env": {"pipeline": "greydanus2017"}},
            r"env.pipeline=greydanus2017 makes observations \(1, 80, 80\) but .* takes \(1, 84, 84\)",
        ),
        ({"rollout": {"num_envs": 2}, "saliency": {"compat": "paper"}}, "saliency.compat=paper"),
    ],
    ids=["window", "compat paper", "2017 pipeline", "compat paper, games"],
)
def test_settings_that_do_not_fit_the_agent_are_refused_before_anything_runs(tmp_path, sections, message):
    """builtin/pong_ppo sees one 84x84 frame: each setting is refused by validate_job, and by the check of a job
    that reuses an agent validated for other settings (the jobs of a sweep), with nothing written."""
    from engine.jobs.run import check_stores

    config = tiny_job(tmp_path / "run", movie=False, agent={"checkpoint": "builtin/pong_ppo"}, **sections)
    with pytest.raises(EngineError, match=message):
        validate_job(config)
    fine = validate_job(tiny_job(tmp_path / "run", movie=False, agent={"checkpoint": "builtin/pong_ppo"}))
    with pytest.raises(EngineError, match=message):
        check_stores(dataclasses.replace(fine, config=config))
    assert not (tmp_path / "run").exists()


def test_a_sweep_whose_second_job_does_not_fit_the_agent_runs_no_job(tmp_path):
    """The size-dependent settings of every job of a sweep are checked before the first job runs."""
    sweep = tmp_path / "sweep"
    result = run_app(
        "-m",
        "saliency=occlusion",
        "saliency.occlusion.window=8,100",
        "rollout.steps=2",
        "output.movie=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == "error: saliency.occlusion.window 100 is larger than the 84x84 observation"
    assert not sweep.exists()


def test_metrics_of_maps_the_methods_do_not_make_are_refused(tmp_path):
    """metrics.kinds (default actor, critic) must name maps of the selected methods: occlusion's are prefixed."""
    with pytest.raises(EngineError, match=r"saliency.method=occlusion does not make: actor, critic .*occlusion_actor"):
        validate_job(tiny_job(tmp_path, saliency={"method": "occlusion"}, metrics={"stability": True}))
    validate_job(tiny_job(tmp_path, saliency={"method": "occlusion"}))  # no metrics asked: nothing to refuse
    validate_job(
        tiny_job(tmp_path, saliency={"method": "occlusion"}, metrics={"stability": True, "kinds": ["occlusion_actor"]})
    )
    validate_job(tiny_job(tmp_path, saliency={"method": "both"}, metrics={"stability": True}))


def test_a_job_interrupted_while_writing_its_summary_leaves_no_half_written_file(tmp_path, monkeypatch):
    """summary.json (read back by a sweep's summary.csv and page) is written beside itself and renamed into place:
    interrupted, the job leaves neither a truncated summary.json nor its temporary file."""
    write_text = Path.write_text

    def interrupted(self, data, *args, **kwargs):
        if self.name.startswith(".summary.json."):
            write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt("stopped while writing the summary")
        return write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(tiny_job(tmp_path / "run", movie=False))
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".summary.json")]


def test_a_grid_larger_than_a_small_agents_observation_is_refused(tmp_path):
    """The mask grid's density and radius are checked against the agent's own observation (here 40x40) before the
    game is played, not when its first frames are scored."""
    import torch

    from engine.jobs.prepare import PreparedJob, check_agent_settings
    from engine.policies.module import wrap_policy

    def network(obs):
        return torch.zeros(obs.shape[0], 6), torch.zeros(obs.shape[0])

    agent = wrap_policy(network, (1, 40, 40), 6, pipeline="gymnasium_atari", device="cpu")
    config = tiny_job(tmp_path, saliency={"density": 60})
    with pytest.raises(EngineError, match=r"saliency.density must be in 1..40"):
        check_agent_settings(PreparedJob(config, Path("agent.pt"), agent))


def test_the_grid_is_bounded_by_the_agents_own_observation_not_the_2017_one(tmp_path):
    """An 84x84 agent takes a density or radius up to 84; the config's own check leaves that bound to the agent."""
    pong_ppo = {"checkpoint": "builtin/pong_ppo"}
    validate_job(tiny_job(tmp_path, agent=pong_ppo, saliency={"density": 84, "radius": 84.0, "blur_sigma": 84.0}))
    with pytest.raises(EngineError, match=r"saliency.density must be in 1..84 .*got 85"):
        validate_job(tiny_job(tmp_path, agent=pong_ppo, saliency={"density": 85}))
    with pytest.raises(EngineError, match=r"saliency.density must be in 1..80 .*got 81"):
        validate_job(tiny_job(tmp_path, saliency={"density": 81}))
    with pytest.raises(EngineError, match=r"saliency.radius must be a finite number > 0 .*got inf"):
        validate_job(tiny_job(tmp_path, agent=pong_ppo, saliency={"radius": float("inf")}))


def test_a_checkpoint_replaced_while_it_loads_is_refused_and_the_stores_record_the_bytes_loaded(tmp_path, monkeypatch):
    """The checkpoint is hashed before and after loading, once: a file replaced meanwhile (a training run writing
    it) is refused, and one replaced after loading does not change the hash the job records for its maps."""
    import hashlib

    from engine.core.errors import CheckpointError
    from engine.jobs import prepare

    mine = user_copy(tmp_path, "builtin/pong", metadata=True)
    original = hashlib.sha256(mine.read_bytes()).hexdigest()
    other = resolve_checkpoint("builtin/pong@500160")
    load_policy = prepare.load_policy

    def replaced_while_loading(path, *args, **kwargs):
        agent = load_policy(path, *args, **kwargs)
        shutil.copyfile(other, mine)  # an atomic rename would do the same
        return agent

    config = tiny_job(tmp_path / "run", steps=2, movie=False, agent={"checkpoint": str(mine)})
    monkeypatch.setattr(prepare, "load_policy", replaced_while_loading)
    with pytest.raises(CheckpointError, match="changed while it was being loaded"):
        validate_job(config)
    monkeypatch.setattr(prepare, "load_policy", load_policy)

    shutil.copyfile(resolve_checkpoint("builtin/pong"), mine)
    prepared = validate_job(config)
    shutil.copyfile(other, mine)  # replaced after the job loaded its agent: the maps are the loaded agent's
    run_job(config, prepared)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["checkpoint_sha256"] == original != hashlib.sha256(mine.read_bytes()).hexdigest()


def test_any_2017_checkpoint_loads_with_the_default_agent_settings(tmp_path):
    """agent.checkpoint alone names a baby-a3c (GRU) file: the default agent group does not insist on a core, and
    agent.core=lstm still refuses it by name."""
    from tests.conftest import checkpoint

    gru = checkpoint("pong")
    prepared = validate_job(tiny_job(tmp_path, agent={"checkpoint": str(gru)}))
    assert prepared.agent.core == "gru"
    with pytest.raises(EngineError, match="agent.core is 'lstm' but .* holds a GRU agent"):
        validate_job(tiny_job(tmp_path, agent={"checkpoint": str(gru), "core": "lstm"}))


def test_a_recorded_game_of_other_rollout_settings_is_refused_not_replayed(tmp_path):
    """A complete rollout store is replayed as it is: a job whose rollout.seed, steps or greedy differ from the
    store's would score the store's game under its own settings' name, so it is refused before anything runs."""
    store = {"rollout": str(tmp_path / "rollout"), "saliency": str(tmp_path / "saliency")}
    run_job(tiny_job(tmp_path / "first", steps=3, movie=False, store=store))
    for rollout, named in (
        ({"seed": 1}, "rollout.seed=0, but this job asks for rollout.seed=1"),
        ({"steps": 5}, "rollout.steps=3, but this job asks for rollout.steps=5"),
        (
            {"greedy": True, "seed": 2},
            "rollout.seed=0, rollout.greedy=false, but this job asks for rollout.seed=2, rollout.greedy=true",
        ),
    ):
        config = tiny_job(tmp_path / "other", steps=3, movie=False, store=store, rollout=rollout)
        with pytest.raises(EngineError, match=named):
            validate_job(config)
        assert not (tmp_path / "other").exists()
    validate_job(tiny_job(tmp_path / "again", steps=3, movie=False, store=store))  # the same settings: replayed


def test_ctrl_c_is_one_line_saying_what_is_kept_and_how_to_go_on(tmp_path):
    """SIGINT while a store job scores: exit code 130 and one line naming the stores and the command line that goes
    on from them (the default saliency store lies in the run's own folder, so it is named), no traceback."""
    from tests.conftest import interrupted_command

    rollout = tmp_path / "rollout"
    argv = [
        *("-m", "engine", "agent=builtin_pong", "agent.allow_download=false", "progress=false", "rollout.steps=400"),
        *("store.chunk_steps=8", "store.frames_per_chunk=4", "output.movie=false", f"store.rollout={rollout}"),
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    returncode, stderr = interrupted_command(argv, tmp_path, rollout / "zarr.json", settle=0.5)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and lines[-1].startswith("interrupted: the complete chunks are kept"), stderr
    assert f"store.saliency={tmp_path / 'run' / 'saliency_store'}" in lines[-1]


def test_ctrl_c_in_a_sweep_keeps_the_summary_of_its_finished_jobs(tmp_path):
    """SIGINT in the second job of a sweep: summary.csv lists the first (none was written), and the one line says
    where the finished jobs are."""
    import csv

    from tests.conftest import interrupted_command

    sweep = tmp_path / "sweep"
    argv = [
        *("-m", "engine", "-m", "agent=builtin_pong", "agent.allow_download=false", "progress=false"),
        *("rollout.steps=3,400", "saliency.density=20", "output.movie=false", "output.report=false"),
        f"hydra.sweep.dir={sweep}",
    ]
    returncode, stderr = interrupted_command(argv, tmp_path, sweep / "0" / "summary.json", settle=1.0)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 130, stderr[-2000:]
    assert lines[-1].startswith(f"interrupted: the finished jobs are in {sweep}; an in-memory job keeps nothing")
    with open(sweep / "summary.csv", newline="") as f:
        assert [(r["job"], r["frames"]) for r in csv.DictReader(f)] == [("0", "3")]


def test_the_resume_hint_of_a_sweep_names_its_directory(tmp_path):
    """A sweep's jobs have their saliency stores in numbered folders of the sweep directory: the line that says how
    to go on names that directory (store.saliency would make the sweep's jobs share one store, and be refused)."""
    from engine.cli.app import resume_hint

    config = tiny_job(tmp_path / "sweep" / "1", store={"rollout": str(tmp_path / "rollout")})
    hint = resume_hint(config, tmp_path / "sweep")
    assert hint.endswith(
        f"go on with the same command and hydra.sweep.dir={tmp_path / 'sweep'}: each job goes on "
        "from its stores (a finished job replays them)"
    )
    assert "store.saliency=" in resume_hint(config)  # a single run: its own folder's store


@pytest.mark.parametrize("on_disk", [True, False], ids=["store job", "in-memory job"])
def test_a_saliency_chunk_too_large_to_hold_is_refused_before_the_game_is_played(tmp_path, on_disk):
    store = {"frames_per_chunk": 10**9}
    if on_disk:
        store["rollout"] = str(tmp_path / "rollout")
    config = tiny_job(tmp_path / "run", steps=2, movie=False, store=store)
    with pytest.raises(
        EngineError, match=r"store.frames_per_chunk=1000000000: scoring holds .* use frames_per_chunk <= \d+"
    ):
        validate_job(config)
    assert not (tmp_path / "rollout").exists() and not (tmp_path / "run").exists()


def test_a_saliency_store_of_a_recording_made_again_is_refused(tmp_path):
    """A saliency store records the id of the recording it scored: with the rollout store deleted, the job is
    refused before it records the game again (which, on another device or with sampling, may differ), and a
    recording made again under the same settings is told apart from the one that was scored."""
    from engine.core.errors import EngineError
    from engine.storage.store import RolloutStore, StoreMismatchError

    store = {"rollout": str(tmp_path / "rollout"), "saliency": str(tmp_path / "saliency"), "frames_per_chunk": 2}
    config = tiny_job(tmp_path / "run", steps=3, movie=False, store=store)
    run_job(config)
    first = RolloutStore.open(tmp_path / "rollout").recording
    assert first is not None and len(first) == 32
    shutil.rmtree(tmp_path / "rollout")
    with pytest.raises(StoreMismatchError, match=r"scored a recording that .* no longer holds"):
        validate_job(config)
    assert not (tmp_path / "rollout").exists()
    run_job(dataclasses.replace(config, store=dataclasses.replace(config.store, saliency=None)))  # recorded again
    assert RolloutStore.open(tmp_path / "rollout").recording not in (None, first)
    with pytest.raises(EngineError, match="rollout_recording: store has"):
        validate_job(config)


def test_a_three_channel_agent_is_played_as_three_frames_with_a_warning(tmp_path):
    """A CleanRL or SB3 file cannot tell 3 stacked grayscale frames from one RGB frame: the job says which it plays;
    the usual 4 frames say nothing."""
    from tests import cleanrl_scripts

    state_dict = cleanrl_scripts.make_agent("ppo_atari").state_dict()  # the script's first layer takes 4 channels
    for channels, warned in ((3, True), (4, False)):
        state_dict["network.0.weight"] = torch.randn(32, channels, 8, 8) * 0.05
        torch.save(state_dict, path := tmp_path / f"ppo_{channels}.cleanrl_model")
        warnings = validate_job(
            tiny_job(".", env={"id": "PongNoFrameskip-v4"}, agent={"checkpoint": str(path)})
        ).warnings
        assert any("takes 3 channels: it is played as 3 stacked grayscale frames" in w for w in warnings) is warned


def test_a_store_player_that_did_not_record_the_complete_store_is_refused(tmp_path):
    """A complete rollout store is replayed as it was played: store.player naming another agent used to be ignored
    without a word, and the summary named it as the game's player."""
    store = {"rollout": str(tmp_path / "rollout")}
    agent = {"checkpoint": "builtin/pong_ppo"}
    run_job(tiny_job(tmp_path / "first", steps=2, movie=False, agent=agent, store=store))
    other = tiny_job(
        tmp_path / "other", steps=2, movie=False, agent=agent, store={**store, "player": "builtin/pong_ppo@1003520"}
    )
    with pytest.raises(
        EngineError,
        match=r"store.player builtin/pong_ppo@1003520 did not play the game in the rollout "
        r"store .*rollout: .*pong_ppo.* did, and a complete store is replayed as it was played",
    ):
        validate_job(other)
    validate_job(
        tiny_job(tmp_path / "same", steps=2, movie=False, agent=agent, store={**store, "player": "builtin/pong_ppo"})
    )


def test_ctrl_c_before_the_job_begins_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    """Ctrl-C while Hydra starts the run (outside the job's own handler), or while the job loads its agent (a
    download): exit code 130 and one line, no traceback, no run folder. The job is called without Hydra: a Hydra run
    in this process would leave its logging (a file in the removed folder) to the tests after it."""
    from engine.cli import app
    from engine.cli.scaffold import compose

    run = tmp_path / "run"
    argv = ["agent=builtin_pong", "agent.allow_download=false", "progress=false", f"hydra.run.dir={run}"]
    monkeypatch.setattr(app, "run_hydra", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as exited:
        app.main(argv)
    assert exited.value.code == 130 and not run.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted: " + app.BEFORE_THE_JOB
    monkeypatch.setattr(app, "_prepared_job", lambda config: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as exited:
        app.hydra_main(compose("main", [*argv[:-1], f"output.dir={run}"]))
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted: " + app.BEFORE_THE_JOB
    # a later job of a sweep (past the agents the precheck loads): the finished jobs' summary, and where they are
    sweep, summaries = tmp_path / "sweep", []
    monkeypatch.setattr(app, "sweep_dir", lambda: sweep)
    monkeypatch.setattr(app, "_sweep_started", 0.0)
    monkeypatch.setattr(app, "write_sweep_summary", lambda *args: summaries.append(args[1]))
    with pytest.raises(SystemExit) as exited:
        app.hydra_main(compose("main", [*argv[:-1], f"output.dir={sweep / '1'}"]))
    assert exited.value.code == 130 and summaries == [sweep]
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"interrupted: the finished jobs are in {sweep}")


def test_ctrl_c_between_a_sweeps_jobs_writes_their_summary_and_names_the_sweep(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    from engine.cli import app

    sweep = tmp_path / "sweep"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "output": {"report": False}})
    summaries = []

    def interrupted_sweep(*args):
        app.SweepSummary().on_multirun_start(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "run_hydra", interrupted_sweep)
    monkeypatch.setattr(app, "write_sweep_summary", lambda *args: summaries.append(args[1:]))
    monkeypatch.setattr(app, "_sweep", None)
    with pytest.raises(SystemExit) as exited:
        app.main(["agent=builtin_pong", "agent.allow_download=false", "rollout.steps=2,3", "-m"])
    assert exited.value.code == 130 and summaries == [(sweep, app._sweep_started)]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: stopped between the sweep's jobs: the finished ones are in {sweep}; the same command with "
        f"hydra.sweep.dir={sweep} runs the sweep into it again"
    )


def test_a_store_of_other_settings_is_refused_naming_the_settings_to_change():
    """The fields of a store's identity that differ are named with the settings that set them."""
    from engine.jobs.prepare import identity_differences

    found = {"num_steps": 600, "seed": 1, "chunk_steps": 64, "greedy": False, "saliency": {"radius": 5}}
    wanted = {"num_steps": 300, "seed": 1, "chunk_steps": 128, "greedy": True, "saliency": {"radius": 3}}
    assert identity_differences(found, wanted) == [
        "num_steps (rollout.steps): store has 600, this job 300",
        "chunk_steps (store.chunk_steps): store has 64, this job 128",
        "greedy (rollout.greedy): store has False, this job True",
        "saliency.radius: store has 5, this job 3",
    ]


def test_a_setting_a_store_leaves_out_at_its_default_is_named_by_its_default(tmp_path):
    """A store records saliency.precision and compile only away from their defaults; the refusal printed None
    for the side that left them out (the user had typed precision=exact)."""
    from engine.jobs.prepare import identity_differences
    from engine.storage.store import difference

    fast = {"saliency": {"radius": 5, "precision": "fast"}}
    exact = {"saliency": {"radius": 5}}
    compiled = {"saliency": {"radius": 5, "compile": True}}
    assert identity_differences(fast, exact) == ["saliency.precision: store has 'fast', this job 'exact'"]
    assert identity_differences(exact, fast) == ["saliency.precision: store has 'exact', this job 'fast'"]
    assert identity_differences(exact, compiled) == ["saliency.compile: store has False, this job True"]
    assert identity_differences(exact, exact) == []
    assert difference(fast, exact) == "saliency.precision: store has 'fast', this job 'exact'"
    assert difference(exact, compiled) == "saliency.compile: store has False, this job True"
    # through the job: a store scored fast, then the same job at the default precision
    from engine.jobs.run import run_job

    store = {"rollout": str(tmp_path / "rollout"), "saliency": str(tmp_path / "maps"), "chunk_steps": 4}
    run_job(tiny_job(tmp_path / "run", movie=False, store=store, saliency={"precision": "fast"}))
    with pytest.raises(EngineError, match=r"saliency\.precision: store has 'fast', this job 'exact'\)"):
        run_job(tiny_job(tmp_path / "run", movie=False, store=store))


def test_a_store_of_other_settings_in_the_job_folder_says_how_a_sweep_numbers_its_jobs(tmp_path):
    """A sweep reordered into its own hydra.sweep.dir met the maps of another checkpoint in job 0's folder, and was
    told to delete them: the folder is the job's number, not its settings."""
    from engine.jobs.run import run_job

    store = {"rollout": str(tmp_path / "game")}
    run_job(tiny_job(tmp_path / "0", steps=2, movie=False, store=store))
    with pytest.raises(
        EngineError, match=r"in a sweep, job folders are numbered in its order, so a sweep reordered or extended"
    ):
        run_job(tiny_job(tmp_path / "0", steps=2, movie=False, store=store, saliency={"radius": 3}))
    named = {**store, "saliency": str(tmp_path / "0" / "saliency_store")}
    with pytest.raises(EngineError, match=r"delete this one to start over$"):
        run_job(tiny_job(tmp_path / "0", steps=2, movie=False, store=named, saliency={"radius": 3}))
