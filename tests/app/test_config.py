"""Every config group composes into a valid typed JobConfig; the schema is the one source of defaults; bad
settings and bad command lines fail before heavy work with one line."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from engine.cli import app as cli
from engine.cli.app import CONFIG_DIR, ConfigError, job_config, precheck, quote_enum_bools
from engine.core.errors import EngineError
from engine.core.settings import SaliencyConfig
from engine.jobs.config import (
    RENAMED,
    Compat,
    DType,
    Incremental,
    Interp,
    JobConfig,
    OutputConfig,
    check_config,
    engine_saliency,
)
from engine.jobs.run import validate_job

# The main job's config groups; configs/hydra/ holds options for Hydra's own groups (launchers, logging) and
# configs/algo/ the trainers' (train_entry.yaml), each composed separately.
GROUPS = {
    g.name: sorted(p.stem for p in g.glob("*.yaml"))
    for g in CONFIG_DIR.iterdir()
    if g.is_dir() and g.name not in ("hydra", "algo", "__pycache__")
}
LAUNCHERS = sorted(p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml"))


def composed(*overrides: str) -> JobConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="main", overrides=["output.dir=/tmp/unused", *overrides])
    return job_config(cfg)


def test_groups_are_the_documented_ones():
    assert set(GROUPS) == {"env", "agent", "saliency", "render", "output", "device", "preset", "metrics"}
    assert {"pong", "breakout", "spaceinvaders"} <= set(GROUPS["env"])
    assert {"perturbation", "jacobian", "both"} <= set(GROUPS["saliency"])


@pytest.mark.parametrize("group,option", [(g, o) for g, options in sorted(GROUPS.items()) for o in options])
def test_every_group_option_composes(group, option):
    if group == "agent" and option in ("sb3", "sb3_recurrent"):  # these need the user's own file
        with pytest.raises(EngineError, match=r"agent.kind=sb3 needs the file its library wrote.*a cleanrl agent"):
            composed(f"{group}={option}")
        config = composed(f"{group}={option}", "agent.checkpoint=/runs/agent.file")
    elif group == "agent" and option == "cleanrl":  # the built-in PPO agent is a CleanRL file; a 2017 one is not
        assert composed(f"{group}={option}").agent.checkpoint == "builtin/pong_ppo"
        with pytest.raises(EngineError, match=r"agent.kind=cleanrl needs the file its library wrote.*greydanus2017"):
            composed(f"{group}={option}", "agent.checkpoint=builtin/pong@500160")
        config = composed(f"{group}={option}", "agent.checkpoint=/runs/agent.file")
    else:
        config = composed(f"{group}={option}")
    check_config(config)  # a shipped option is a valid one
    if group == "saliency":
        assert config.saliency.method == option


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_config_composes(launcher):
    """Each shipped launcher resolves to its plugin's config (the plugins come with the test extras)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="main", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target.startswith("hydra_plugins.") and "Launcher" in target, target


def test_defaults_are_the_main_job():
    config = composed()
    # the strongest agent shipped in the package (recurrent PPO, CleanRL's network): no checkpoint directory, no download
    assert config.env.id == "Pong-v4" and config.agent.checkpoint == "builtin/pong_ppo" and config.agent.kind == "auto"
    assert composed("agent=builtin_pong").agent.checkpoint == "builtin/pong"
    assert not config.agent.checkpoint_dirs and not config.agent.allow_download
    assert config.saliency.method == "perturbation" and config.saliency.density == 5 and config.saliency.radius == 5
    assert config.render.style == "paper" and config.output.movie and config.output.fps == 8
    baby = composed("agent=baby_a3c_pong")
    assert baby.agent.checkpoint == "baby-a3c/pong" and baby.agent.allow_download and baby.agent.core == "auto"
    assert Path(baby.agent.checkpoint_dirs[0]) == cli.PROJECT_ROOT / ".." / "shared" / "checkpoints"


def test_the_schema_is_the_one_source_of_defaults():
    """What `python -m engine` composes is exactly JobConfig(): YAML and dataclass defaults cannot drift."""
    config = composed()
    assert dataclasses.replace(config, output=dataclasses.replace(config.output, dir=OutputConfig.dir)) == JobConfig()
    assert composed("device=auto", "preset=none", "render=paper", "saliency=perturbation").saliency == SaliencyConfig()


def test_the_training_schema_is_the_one_source_of_its_defaults():
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from engine.training.a2c import TrainConfig

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train")
    assert OmegaConf.to_object(cfg) == TrainConfig()
    assert TrainConfig().run_dir == "runs/train_Pong-v4_lstm" == cfg.run_dir
    assert TrainConfig(env_id="Breakout-v4", core="gru").run_dir == "runs/train_Breakout-v4_gru"


def test_every_trainer_composes_to_its_schema_defaults():
    """`python -m engine.train algo=...`: each option of configs/algo/ is its trainer's schema with its defaults
    at the top of the configuration, PPO unless algo is given."""
    from engine.cli.train import ENTRY, checked, trainers

    table = trainers()
    assert sorted(table) == sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml")) == ["a2c", "ppo"]
    for overrides, algo in (([], "ppo"), (["algo=ppo"], "ppo"), (["algo=a2c"], "a2c")):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=ENTRY, overrides=overrides, return_hydra_config=True)
        assert cfg.hydra.runtime.choices.algo == algo and cfg.hydra.job.name == "train"
        assert cfg.hydra.run.dir == f"{cfg.run_dir}/hydra"
        assert checked(table[algo], cfg) == table[algo].schema()


def test_paper_preset_sets_the_2017_quirks():
    config = composed("preset=paper")
    assert config.saliency.compat == "paper" and config.saliency.state_alignment == "paper"
    assert config.render.style == "paper"


def test_enums_match_the_engine_choices():
    from engine.core.masks import INTERPS
    from engine.core.settings import COMPATS
    from engine.core.settings import SaliencyConfig as CoreSaliencyConfig

    assert SaliencyConfig is CoreSaliencyConfig

    assert set(Interp) == set(INTERPS) and set(Compat) == set(COMPATS)
    assert set(DType) == {"float32", "float64"}  # what npz can hold; bfloat16 is refused up front


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["env.id=Pongg-v4"], "unknown environment id 'Pongg-v4'"),
        (["agent.checkpoint=/nope/model.tar"], "neither an existing file (no such file) nor a known name"),
        (["saliency.density=0"], "density must be an integer >= 1"),
        (["saliency.radius=-1"], "radius must be a finite number > 0"),
        (["saliency.radius=nan"], "radius must be a finite number > 0"),
        (
            ["saliency.method=gradcam"],
            "saliency.method must be one of perturbation, jacobian, both, occlusion, rise, lime, sarfa (or a list of "
            "them), got 'gradcam'",
        ),
        (["saliency.method=[rise,gradcam]"], "got 'gradcam' in ['rise', 'gradcam']"),
        (["saliency.rise.num_masks=0"], "saliency.rise.num_masks must be an integer >= 1, got 0"),
        # fills in the observations' 0..1 scale, not in bytes
        (["saliency.occlusion.value=255"], "saliency.occlusion.value must be in 0..1, the observations' scale"),
        (["saliency.rise.baseline=-40"], "saliency.rise.baseline must be in 0..1, the observations' scale"),
        (["saliency.lime.hide_value=255"], "saliency.lime.hide_value must be in 0..1, the observations' scale"),
        # the default agent's 84x84 in 10-pixel cells: 81 superpixels
        (
            ["saliency.lime.alpha=0", "saliency.lime.num_samples=50"],
            "saliency.lime.alpha=0 (no ridge penalty) fits 81 superpixels and an intercept, which needs "
            "lime.num_samples > 81, got 50",
        ),
        # draws made for a frame before its passes: a count whose draws for one frame cannot fit is refused up front
        (
            ["saliency.method=rise", "saliency.rise.num_masks=100000000"],
            "MB per frame for the masks, more than the memory budget of 1,024 MB: lower it, or raise "
            "saliency.memory_budget_mb",
        ),
        (
            ["saliency.method=[perturbation,lime]", "saliency.lime.num_samples=1000000"],
            "saliency.lime.num_samples=1,000,000 needs about 3,491 MB per frame for the samples and their fit",
        ),
        # the default agent plays Pong: its game is named, and how to choose it
        (
            ["env=breakout"],
            "builtin/pong_ppo was trained on Pong (PongNoFrameskip-v4), but env.id is Breakout-v4: set env=pong",
        ),
        (
            ["store.rollout=/nonexistent/store", "store.player=builtin/breakout_ppo"],
            "store.player builtin/breakout_ppo was trained on Breakout",
        ),
        (
            ["agent=baby_a3c_pong", "agent.checkpoint=baby-a3c/pong@60"],
            "baby-a3c/pong has no checkpoint at those frames; its checkpoints are baby-a3c/pong@40, baby-a3c/pong@80",
        ),
        (["render.style=fancy"], "render.style: Invalid value 'fancy'"),
        (["rollout.steps=0"], "rollout.steps must be >= 1"),
        (["env.id=ALE/Tetris-v5", "render.style=paper"], "Tetris"),
        # the list: each of these used to end in a traceback after the rollout or after all scoring
        (["saliency.perturbations_per_eval=0"], "saliency.perturbations_per_eval must be >= 1"),
        (["saliency.chunk_size=0"], "saliency.chunk_size was renamed: use saliency.perturbations_per_eval"),
        (["saliency.memory_budget_mb=nan"], "saliency.memory_budget_mb must be a finite number"),
        (["saliency.memory_budget_mb=-5"], "saliency.memory_budget_mb must be a finite number"),
        (["saliency.memory_budget_mb=inf"], "saliency.memory_budget_mb must be a finite number"),
        (
            ["saliency.incremental=maybe"],
            "saliency.incremental: Invalid value 'maybe', expected one of [auto, true, false]",
        ),
        (
            ["output.comparison_frame=500", "rollout.steps=200"],
            "output.comparison_frame 500 is outside the rollout's 0..199",
        ),
        (
            ["output.comparison=false", "output.comparison_frame=3"],
            "output.comparison_frame=3 asks for the figure that output.comparison=false turns off: drop one of them",
        ),
        (["output.stills=[3,250]"], "output.stills: frame 250 is outside the rollout's 0..199"),
        (
            ["output.report_steps=[5,300]", "rollout.steps=200"],
            "output.report_steps must be [start, stop] with 0 <= start < stop <= rollout.steps (200), got [5, 300]",
        ),
        (["output.report_steps=[7,7]"], "output.report_steps must be [start, stop]"),
        (["output.report_steps=[1,2,3]"], "output.report_steps must be [start, stop]"),
        (["rollout.max_episodes=0"], "rollout.max_episodes must be >= 1"),
        (["rollout.seed=-1"], "rollout.seed must be in 0..2**32-1"),
        (["dtype=bfloat16"], "dtype: Invalid value 'bfloat16', expected one of [float32, float64]"),
        (["saliency.frames_per_batch=0"], "saliency.frames_per_batch must be >= 1"),
        # settings no method of the job takes: they would run exact and uncompiled without a word
        (
            ["saliency.method=rise", "saliency.precision=fast"],
            "saliency.precision=fast applies to the 2017 method's passes only, and saliency.method=rise makes none",
        ),
        (["saliency.method=[occlusion,lime]", "saliency.compile=true"], "saliency.method=occlusion,lime makes none"),
        (["output.fps=0"], "output.fps must be in 1..240"),
        (["output.scale=0"], "output.scale must be in 1..16"),
        (["render.actor_gain=nan"], "render.actor_gain must be a finite number > 0"),
        (["render.alpha=2"], "render.alpha must be in 0..1"),
        (["store.shard=2", "store.num_shards=2"], "store.shard must be in 0..store.num_shards-1"),
        (["store.frames_per_chunk=0"], "store.frames_per_chunk must be >= 1"),
        (["store.shard=1", "store.num_shards=2"], "store.num_shards=2 needs store.rollout"),
        (["store.rollout=/tmp/x", "rollout.max_episodes=1"], "rollout.max_episodes does not apply to a rollout store"),
        (["device=tpu"], "Could not find 'device/tpu'"),
        # Hydra's own errors, in one line
        (["saliency.radus=3"], "saliency.radus: Key 'radus' not in 'SaliencyConfig'"),
        (["saliency.radius=["], "bad override"),
        (["env=nope"], "Could not find 'env/nope' (available: breakout, pong, spaceinvaders)"),
        # a misspelling: the closest name, and where every key is listed
        (
            ["env=pongg"],
            "Could not find 'env/pongg' (available: breakout, pong, spaceinvaders); did you mean env=pong?",
        ),
        (
            ["saliency.occlusion.windw=3"],
            "saliency.occlusion.windw: Key 'windw' not in 'OcclusionSettings' (did you mean saliency.occlusion.window? "
            "--cfg job prints every key)",
        ),
        (
            ["agent.preprocessing=greydanus2017"],
            "agent.preprocessing was removed: every agent plays in its own kind's pipeline",
        ),
        (["saliency.radius=3,5"], "Ambiguous value for argument"),  # a sweep without --multirun
    ],
)
def test_bad_settings_are_refused_before_any_rollout(overrides, match):
    with pytest.raises(ConfigError) as info:
        precheck(quote_enum_bools(overrides))
    assert match in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("flags", [["-m", "--info"], ["--cfg", "job", "--info"], ["-m", "--shell-completion"]])
def test_two_modes_are_one_line_even_where_hydra_answers_one_of_them(flags):
    """--info (Hydra's own) with -m ended in Hydra's traceback; both commands now say it in one line."""
    from engine.cli import train

    with pytest.raises(ConfigError, match="only one of --run, --multirun, --cfg, --info and --shell-completion"):
        precheck(["saliency.radius=3,5", *flags])
    with pytest.raises(ConfigError, match="only one of --run, --multirun"):
        train.precheck([*flags], train.trainers())


def test_a_multirun_is_checked_job_by_job():
    with pytest.raises(ConfigError, match="density must be an integer >= 1"):
        precheck(["-m", "saliency.radius=3,5", "saliency.density=5,0", "rollout.steps=2"])
    jobs = cli.sweep_jobs(["saliency.radius=3,5", "saliency.density=5,10", "rollout.steps=2"], multirun=True)
    assert len(jobs) == 4 and ["saliency.radius=5", "saliency.density=10", "rollout.steps=2"] in jobs


def test_a_sweep_over_more_agents_than_are_loaded_still_finds_a_missing_checkpoint(monkeypatch, tmp_path):
    """The precheck loads at most MAX_PRECHECKED_AGENTS agents; each further checkpoint is still looked up."""
    monkeypatch.setattr(cli, "MAX_PRECHECKED_AGENTS", 1)
    missing = tmp_path / "missing.pt"
    with pytest.raises(ConfigError, match="missing.pt"):
        precheck(["-m", f"agent.checkpoint=builtin/pong_ppo,{missing}", "rollout.steps=2"])


def test_good_command_lines_pass_the_check():
    precheck(["rollout.steps=2", "saliency.density=20"])
    precheck(["-m", "saliency.radius=3,5", "saliency.interp=occlude,searchlight", "rollout.steps=2"])
    precheck(["--cfg", "job", "preset=paper"])


@pytest.mark.parametrize("value,setting", [("true", True), ("false", False), ("auto", "auto"), ("True", True)])
def test_incremental_takes_true_false_auto(value, setting):
    """Hydra reads true/false as booleans, which an enum refuses: the command line quotes them."""
    (override,) = quote_enum_bools([f"saliency.incremental={value}"])
    config = composed(override)
    assert config.saliency.incremental == Incremental(value.lower())
    assert engine_saliency(config.saliency).incremental == setting
    assert quote_enum_bools(["-m", "saliency.incremental=true,false"])[1] == "saliency.incremental='true','false'"


def test_renamed_options_name_the_new_one():
    assert RENAMED["saliency.chunk_size"] == "saliency.perturbations_per_eval"
    with pytest.raises(EngineError, match="^saliency.chunk_size was renamed: use saliency.perturbations_per_eval$"):
        JobConfig.from_dict({"saliency": {"chunk_size": 64}})
    with pytest.raises(ConfigError, match="saliency.chunk_size was renamed"):
        precheck(["+saliency.chunk_size=64"])


def test_from_dict_rejects_unknown_keys_types_and_ranges():
    with pytest.raises(EngineError, match="saliency.radus: Key 'radus' not in 'SaliencyConfig'"):
        JobConfig.from_dict({"saliency": {"radus": 3}})
    with pytest.raises(
        EngineError, match="saliency.density: Value 'five' of type 'str' could not be converted to Integer"
    ):
        JobConfig.from_dict({"saliency": {"density": "five"}})
    with pytest.raises(EngineError, match="saliency.memory_budget_mb must be a finite number"):
        JobConfig.from_dict({"saliency": {"memory_budget_mb": math.nan}})
    config = JobConfig.from_dict({"saliency": {"interp": "searchlight", "radius": 3}, "rollout": {"steps": 7}})
    assert config.saliency.interp is Interp.searchlight and config.saliency.radius == 3.0 and config.rollout.steps == 7


def test_engine_saliency_hands_the_engine_plain_values():
    s = engine_saliency(SaliencyConfig(incremental=Incremental.false, interp=Interp.searchlight))
    assert s.incremental is False and type(s.interp) is str and s.interp == "searchlight" and type(s.method) is str


def test_validate_job_loads_the_builtin_agent():
    prepared = validate_job(composed("rollout.steps=2"))
    assert type(prepared.agent).__name__ == "CleanRLPPOLSTM"
    assert "engine/agents/pong_ppo/step_" in str(prepared.checkpoint).replace("\\", "/")
    prepared = validate_job(composed("rollout.steps=2", "agent=builtin_pong"))
    assert prepared.agent.core == "lstm" and "engine/agents/pong/step_" in str(prepared.checkpoint).replace("\\", "/")


def test_paper_state_alignment_is_the_original_off_by_one(pong_agent, pong_rollout):
    import torch

    from engine.core.saliency import paper_shift

    shifted = paper_shift(pong_rollout.states)
    assert torch.equal(shifted[0][1:], pong_rollout.states[0][:-1]) and torch.all(shifted[0][0] == 0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["saliency.radius=3,5", "output.dir={tmp}/fixed"], r"jobs 0 and 1 of this sweep both write to output.dir="),
        (
            ["saliency.radius=3,5", "store.rollout={tmp}/r", "store.saliency={tmp}/s"],
            r"jobs 0 and 1 of this sweep share store.saliency=.* but score other maps \(saliency.radius: 3.0 and 5.0\)",
        ),
        (
            ["rollout.seed=0,1", "store.rollout={tmp}/r"],
            r"share store.rollout=.* but record other games \(rollout.seed: 0 and 1\)",
        ),
        (
            ["agent.checkpoint=builtin/pong_ppo,builtin/pong_ppo@1003520", "store.rollout={tmp}/r"],
            r"played by .*: builtin/pong_ppo and builtin/pong_ppo@1003520\).*set store.player",
        ),
        # each shard's store was its job's own (never complete), and the player was ignored (each job its own game)
        (
            ["store.shard=0,1", "store.num_shards=2", "store.rollout={tmp}/r"],
            r"store.num_shards=2 splits one saliency store between jobs, but without store.saliency .*: set "
            r"store.saliency=<dir>",
        ),
        (
            ["agent.checkpoint=builtin/pong_ppo,builtin/pong_ppo@1003520", "store.player=builtin/pong_ppo"],
            r"store.player=builtin/pong_ppo records the game into store.rollout, which is not set",
        ),
    ],
    ids=[
        "one output.dir",
        "one saliency store",
        "one rollout store, two seeds",
        "one rollout store, two players",
        "shards without a shared store",
        "a player without a store",
    ],
)
def test_a_sweep_whose_jobs_would_write_over_each_other_is_refused_before_any_runs(tmp_path, overrides, match):
    args = ["-m", "rollout.steps=2"] + [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    with pytest.raises(ConfigError, match=match) as refused:
        precheck(args)
    assert "\n" not in str(refused.value) and not list(tmp_path.iterdir())


def test_sweeps_that_share_stores_as_intended_are_accepted(tmp_path):
    """One recorded game scored with several settings (each job its own saliency store), shards of one store, and a
    checkpoint sweep whose game one store.player records."""
    precheck(["-m", "rollout.steps=2", "saliency.radius=3,5", f"store.rollout={tmp_path}/r"])
    precheck(
        [
            "-m",
            "rollout.steps=2",
            "store.shard=0,1",
            "store.num_shards=2",
            f"store.rollout={tmp_path}/r",
            f"store.saliency={tmp_path}/s",
        ]
    )
    precheck(
        [
            "-m",
            "rollout.steps=2",
            "agent.checkpoint=builtin/pong_ppo,builtin/pong_ppo@1003520",
            "store.player=builtin/pong_ppo",
            f"store.rollout={tmp_path}/r",
        ]
    )
    precheck(["-m", "rollout.steps=2", "saliency.radius=3,5", f"output.dir={tmp_path}/r" + "${saliency.radius}"])


def test_a_checkpoint_sweep_over_a_recorded_game_needs_no_player(tmp_path):
    """Every job replays a complete rollout store, whoever recorded it: the sweep was refused as recording other
    games, with the advice to name a player that is not needed."""
    from engine.jobs.run import run_job
    from tests.conftest import tiny_job

    sweep = ["-m", "rollout.steps=2", "agent.checkpoint=builtin/pong_ppo,builtin/pong_ppo@1003520"]
    store = f"store.rollout={tmp_path}/r"
    with pytest.raises(ConfigError, match="record other games"):
        precheck([*sweep, store])  # nothing recorded yet: the two jobs would record two games into it
    played = {"checkpoint": "builtin/pong_ppo"}
    run_job(tiny_job(tmp_path / "run", steps=2, movie=False, agent=played, store={"rollout": f"{tmp_path}/r"}))
    precheck([*sweep, store])
    # a games root (rollout.num_envs): every game's store complete
    games = [*sweep, "rollout.num_envs=2", f"store.rollout={tmp_path}/g"]
    with pytest.raises(ConfigError, match="record other games"):
        precheck(games)
    run_job(
        tiny_job(
            tmp_path / "games",
            steps=2,
            movie=False,
            agent=played,
            rollout={"num_envs": 2},
            store={"rollout": f"{tmp_path}/g"},
        )
    )
    precheck(games)


def test_an_output_place_that_cannot_be_written_is_refused_before_any_run(tmp_path):
    """output.dir (or the folder Hydra makes a job's directory in) that is a file or lies inside one: one line
    naming the key, before Hydra makes a directory or the game is played."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    cases = [
        (["output.dir=" + str(afile)], f"output.dir {afile} is a file, not a directory"),
        (["output.dir=" + str(afile / "run")], f"output.dir {afile / 'run'} is inside a file"),
        (["saliency.radius=3,5", f"hydra.sweep.dir={afile}/sweep"], "hydra.sweep.dir"),
        ([f"hydra.run.dir={afile}/" + "${now:%H-%M-%S}"], "hydra.run.dir"),
    ]
    for overrides, match in cases:
        multirun = ["-m"] if any("sweep" in o for o in overrides) else []
        with pytest.raises(ConfigError, match=match) as refused:
            precheck([*multirun, "rollout.steps=2", *overrides])
        assert "\n" not in str(refused.value) and afile.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            ["rollout.steps=4", "-m", "saliency.radius=3,5"],
            r"unrecognized arguments: saliency.radius=3,5: options \(-m",
        ),
        (["--rollout.steps=5"], "--rollout.steps=5 is not an option: overrides take no dashes, write rollout.steps=5"),
        (["=5"], "the override '=5' names no key: write key=value"),
    ],
)
def test_arguments_hydra_would_not_take_are_one_line_saying_how_to_write_them(argv, match):
    with pytest.raises(ConfigError, match=match) as refused:
        precheck(argv)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["saliency.precision=fast", "saliency.compile=true"], "saliency.precision=fast and saliency.compile=true"),
        (["saliency.precision=fast", "saliency.score=action_logprob"], "gives the logit_l2 score only"),
    ],
)
def test_fast_precision_with_settings_it_cannot_serve_is_refused(overrides, match):
    """Settings fast precision never serves are refused, not run on the exact path under the fast setting's name."""
    with pytest.raises(ConfigError, match=match):
        precheck(["rollout.steps=2", *overrides])


def test_a_quoted_home_folder_is_the_home_folder(tmp_path, monkeypatch):
    """output.dir='~/x' (quoted, so no shell expands it) is the home folder's x, not a folder named ~ in the working
    directory; likewise the store paths and a training run_dir. URLs are left as they are."""
    from engine.jobs.config import JobConfig
    from engine.training.a2c import TrainConfig
    from engine.training.ppo import PPOConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    config = JobConfig.from_dict(
        {"output": {"dir": "~/run"}, "store": {"rollout": "~/stores/r", "saliency": "s3://bucket/~maps"}}
    )
    assert config.output.dir == str(tmp_path / "run") and config.store.rollout == str(tmp_path / "stores" / "r")
    assert config.store.saliency == "s3://bucket/~maps"
    assert TrainConfig(run_dir="~/runs/a").run_dir == str(tmp_path / "runs" / "a")
    assert PPOConfig(run_dir="~/runs/p").run_dir == str(tmp_path / "runs" / "p")


@pytest.mark.parametrize("module, entry", [("engine", "main.yaml"), ("engine.train", "train_entry.yaml")])
def test_help_lists_the_groups_its_command_takes(tmp_path, module, entry):
    """Both command lines share one config folder; each --help lists the groups of its own defaults list, with
    every option of each, and no other command's groups."""
    import subprocess
    import sys

    import yaml

    defaults = yaml.safe_load((CONFIG_DIR / entry).read_text())["defaults"]
    groups = sorted(next(iter(d)) for d in defaults if isinstance(d, dict) and not next(iter(d)).startswith("override"))
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    lines = [line for line in listed.splitlines() if ": " in line and not line.startswith("Compose")]
    assert [line.split(":")[0] for line in lines] == groups
    for line in lines:
        name, options = line.split(": ", 1)
        assert options.split(", ") == sorted(p.stem for p in (CONFIG_DIR / name).glob("*.yaml")), line
    # the header says what the command does; the footer's examples are command lines that compose
    assert result.stdout.startswith(f"python -m {module}: ")
    examples = [line.split("#")[0].split()[3:] for line in result.stdout.splitlines() if line.startswith("  python -m")]
    assert len(examples) >= 3
    from engine.cli.train import trainers

    trainers()  # the trainer's schemas, into Hydra's ConfigStore
    for args in examples:
        # a sweep's first job
        overrides = [a.split(",")[0] for a in args if a not in ("-m", "--cfg", "job")]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name=entry.removesuffix(".yaml"), overrides=overrides)


def test_an_agent_its_own_pipeline_cannot_feed_is_refused_without_a_fix_that_fails(tmp_path):
    """A 2017 network over 4 stacked frames loads (the class takes any channel count), but the 2017 pipeline makes
    one frame: unsetting env.pipeline, the fix for a pipeline chosen by hand, would not help."""
    from engine.policies.greydanus2017 import ActorCritic

    torch.save(ActorCritic(num_actions=6, channels=4).state_dict(), path := tmp_path / "four_frames.pt")
    for pipeline in ([], ["env.pipeline=greydanus2017"], ["env.pipeline=gymnasium_atari"]):
        with pytest.raises(ConfigError) as info:
            precheck([f"agent.checkpoint={path}", "rollout.steps=2", *pipeline])
        message = str(info.value)
        assert "takes observations (4, 80, 80), but its kind's pipeline (greydanus2017) makes (1, 80, 80)" in message
        assert "unset env.pipeline" not in message, pipeline
