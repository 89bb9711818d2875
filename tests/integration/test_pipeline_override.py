"""Playing an agent in another supported pipeline than its library's (``engine.rollout(..., pipeline=...)``,
``env.pipeline=...``): it plays there with a warning and the rollout records the pipeline it played in; a pipeline
whose observations the agent cannot take, or an unknown one, is refused with what to do."""

import pytest
import torch

from engine.env.rollout import rollout
from engine.policies.loading import load_policy
from engine.policies.registry import resolve_checkpoint


@pytest.fixture(scope="module")
def pong_ppo():
    return load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu")  # cleanrl_atari, 1x84x84


def test_another_pipeline_plays_with_a_warning_and_is_recorded(pong_ppo):
    with pytest.warns(UserWarning, match="playing a cleanrl_atari agent in the gymnasium_atari pipeline"):
        played = rollout(pong_ppo, "PongNoFrameskip-v4", 12, seed=0, greedy=True, pipeline="gymnasium_atari")
    assert played.pipeline["name"] == "gymnasium_atari"
    with torch.inference_mode():  # the recorded outputs are the agent's on what that pipeline showed it
        out = pong_ppo(played.observations.float() / 255, tuple(s for s in played.states))
    assert torch.equal(out.logits, played.logits)
    own = rollout(pong_ppo, "PongNoFrameskip-v4", 12, seed=0, greedy=True)
    assert own.pipeline["name"] == "cleanrl_atari"
    with pytest.warns(UserWarning, match="gymnasium_atari pipeline"):
        games = rollout(pong_ppo, "PongNoFrameskip-v4", 12, seed=0, greedy=True, pipeline="gymnasium_atari", num_envs=2)
    assert torch.equal(games[0].observations, played.observations)


def test_a_pipeline_the_agent_cannot_take_or_an_unknown_one_is_refused(pong_ppo):
    with pytest.raises(ValueError, match=r"\(1, 80, 80\).*play it in its own pipeline \(cleanrl_atari\)"):
        with pytest.warns(UserWarning):
            rollout(pong_ppo, "Pong-v4", 4, pipeline="greydanus2017")
    with pytest.raises(ValueError, match="pipeline must be one of greydanus2017, sb3_atari"):
        rollout(pong_ppo, "PongNoFrameskip-v4", 4, pipeline="dopamine")


def test_the_app_checks_env_pipeline_before_any_work():
    from engine.core.errors import EngineError
    from engine.jobs.config import JobConfig, check_config

    check_config(JobConfig.from_dict({"env": {"pipeline": "sb3_atari"}}))
    with pytest.raises(EngineError, match="env.pipeline must be one of"):
        check_config(JobConfig.from_dict({"env": {"pipeline": "dopamine"}}))


def test_a_job_plays_in_the_pipeline_it_is_told_and_says_so(tmp_path):
    import json

    from engine.jobs.run import run_job
    from tests.conftest import tiny_job

    config = tiny_job(
        tmp_path / "run",
        movie=False,
        agent={"checkpoint": "builtin/pong_ppo"},
        env={"id": "PongNoFrameskip-v4", "pipeline": "gymnasium_atari"},
    )
    with pytest.warns(UserWarning, match="gymnasium_atari pipeline"):
        run_job(config)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["env"]["pipeline"] == "gymnasium_atari"
    assert "gymnasium_atari" in json.dumps(summary["pipeline"])
