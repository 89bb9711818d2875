"""One loader for every supported file: the format is recognised from the file, and a named kind refuses others."""

import pytest
import torch

from engine.core.errors import CheckpointError
from engine.policies.greydanus2017 import ActorCritic
from engine.core.policy import Policy
from engine.policies.registry import resolve_checkpoint
from engine.policies.cleanrl import CleanRLPolicy
from engine.policies.loading import detect_kind, load_policy
from engine.policies.sb3 import SB3Policy
from tests import cleanrl_scripts, sb3_agents


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agents")
    sb3_agents.make_agent("ppo", folder / "ppo.zip")
    cleanrl_scripts.save_like_cleanrl(cleanrl_scripts.make_agent("ppo_atari"), folder / "agent.cleanrl_model")
    return {"sb3": folder / "ppo.zip", "cleanrl": folder / "agent.cleanrl_model",
            "greydanus2017": resolve_checkpoint("builtin/pong")}


@pytest.mark.parametrize("kind,cls", [("sb3", SB3Policy), ("cleanrl", CleanRLPolicy), ("greydanus2017", ActorCritic)])
def test_each_format_is_recognised_and_loaded(files, kind, cls):
    assert detect_kind(files[kind]) == kind
    policy = load_policy(files[kind], device="cpu")
    assert isinstance(policy, cls) and isinstance(policy, Policy)
    assert isinstance(load_policy(files[kind], device="cpu", kind=kind), cls)
    obs = torch.rand(2, *policy.observation_shape)
    out = policy(obs, policy.initial_state(2))
    assert out.logits.shape == (2, policy.num_actions) and out.value.shape == (2,)


def test_a_named_kind_refuses_another_kind(files):
    with pytest.raises(CheckpointError, match=r"holds a sb3 agent, not a cleanrl one: set the agent kind to sb3"):
        load_policy(files["sb3"], device="cpu", kind="cleanrl")
    with pytest.raises(CheckpointError, match="agent kind must be one of"):
        load_policy(files["sb3"], device="cpu", kind="rllib")


def test_other_files_get_the_2017_loaders_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an agent\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_policy(text, device="cpu")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError):
        load_policy(tmp_path / "other.pt", device="cpu")
