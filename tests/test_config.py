"""Every config group composes into a valid typed JobConfig; bad overrides fail before heavy work."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from engine.app import CONFIG_DIR, job_config
from engine.config import JobConfig
from engine.errors import EngineError
from engine.pipeline import validate_job
from tests.conftest import CHECKPOINTS

# Our config groups; configs/hydra/ holds options for Hydra's own groups (launchers), composed separately below.
GROUPS = {
    g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONFIG_DIR.iterdir() if g.is_dir() and g.name != "hydra"
}
LAUNCHERS = sorted(p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml"))


def composed(*overrides: str) -> JobConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="main", overrides=["output.dir=/tmp/unused", *overrides])
    return job_config(cfg)


def test_groups_are_the_documented_ones():
    assert set(GROUPS) == {"env", "agent", "saliency", "render", "output", "device", "preset"}
    assert {"pong", "breakout", "spaceinvaders"} <= set(GROUPS["env"])
    assert {"perturbation", "jacobian", "both"} <= set(GROUPS["saliency"])


@pytest.mark.parametrize("group,option", [(g, o) for g, options in sorted(GROUPS.items()) for o in options])
def test_every_group_option_composes(group, option):
    config = composed(f"{group}={option}")
    assert isinstance(config, JobConfig)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_config_composes(launcher):
    """Each shipped launcher resolves to its plugin's config (the plugins come with the test extras)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="main", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target.startswith("hydra_plugins.") and "Launcher" in target, target


def test_defaults_are_the_main_job():
    config = composed()
    # the built-in LSTM agent shipped in the package: no checkpoint directory, no download
    assert config.env.id == "Pong-v4" and config.agent.checkpoint == "builtin/pong" and config.agent.core == "lstm"
    assert not config.agent.checkpoint_dirs and not config.agent.allow_download
    assert config.saliency.method == "perturbation" and config.saliency.density == 5 and config.saliency.radius == 5
    assert config.render.style == "paper" and config.output.movie and config.output.fps == 8
    baby = composed("agent=baby_a3c_pong")
    assert baby.agent.checkpoint == "baby-a3c/pong" and Path(baby.agent.checkpoint_dirs[0]).resolve() == CHECKPOINTS.resolve()


def test_paper_preset_sets_the_2017_quirks():
    config = composed("preset=paper")
    assert config.saliency.compat == "paper" and config.saliency.state_alignment == "paper"
    assert config.render.style == "paper"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["env.id=Pongg-v4"], "unknown environment id 'Pongg-v4'"),
        (["agent.checkpoint=/nope/model.tar"], "neither an existing file nor a known name"),
        (["saliency.density=0"], "density must be in 1..80"),
        (["saliency.radius=-1"], "radius must be a number"),
        (["saliency.method=gradcam"], "saliency.method must be one of"),
        (["env=breakout"], "Breakout-v4 has 4 actions but the agent"),
        (["render.style=fancy"], "render.style must be one of"),
        (["rollout.steps=0"], "rollout.steps must be >= 1"),
        (["env.id=ALE/Tetris-v5", "render.style=paper"], "Tetris"),
    ],
)
def test_bad_overrides_fail_clearly(overrides, match):
    with pytest.raises(ValueError, match=match):  # EngineError or an engine argument check
        validate_job(composed(*overrides))


def test_unknown_keys_and_types_are_rejected():
    with pytest.raises(EngineError, match="unknown config key"):
        JobConfig.from_dict({"saliency": {"radus": 3}})
    with pytest.raises(EngineError, match="saliency.density must be int"):
        JobConfig.from_dict({"saliency": {"density": "five"}})


def test_paper_state_alignment_is_the_original_off_by_one(pong_agent, pong_rollout):
    import torch

    from engine.pipeline import paper_aligned_states

    shifted = paper_aligned_states(pong_rollout)
    assert torch.equal(shifted[0][1:], pong_rollout.states[0][:-1]) and torch.all(shifted[0][0] == 0)
