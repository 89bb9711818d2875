"""One loader for every supported file: the format is recognised from the file, and a named kind refuses others."""

import zipfile

import pytest
import torch

from engine.core.errors import CheckpointError
from engine.core.policy import Policy
from engine.policies.cleanrl import CleanRLPolicy
from engine.policies.greydanus2017 import ActorCritic
from engine.policies.loading import detect_kind, load_policy
from engine.policies.registry import resolve_checkpoint
from engine.policies.sb3 import SB3Policy
from tests import cleanrl_scripts, sb3_agents


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agents")
    sb3_agents.make_agent("ppo", folder / "ppo.zip")
    cleanrl_scripts.save_like_cleanrl(cleanrl_scripts.make_agent("ppo_atari"), folder / "agent.cleanrl_model")
    return {
        "sb3": folder / "ppo.zip",
        "cleanrl": folder / "agent.cleanrl_model",
        "greydanus2017": resolve_checkpoint("builtin/pong"),
    }


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


def _refused(path, kind, *fragments, absent=()):
    with pytest.raises(CheckpointError) as info:
        load_policy(path, device="cpu", kind=kind)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    for fragment in absent:
        assert fragment not in message, message
    return message


@pytest.mark.parametrize("kind", ["auto", "sb3", "cleanrl", "greydanus2017"])
def test_files_of_no_agent_kind_are_named_for_what_they_are(tmp_path, kind):
    """Whatever kind was asked for, the answer says what the file is, never that it is an agent of another kind."""
    wrong = ("greydanus2017 agent", "cleanrl agent", "sb3 agent", "set the agent kind")
    (text := tmp_path / "notes.txt").write_text("not an agent\n")
    _refused(
        text,
        kind,
        "is not an agent file: it is a text file (it starts with 'not an agent')",
        "wrap_policy",
        absent=wrong,
    )
    (js := tmp_path / "config.json").write_text('{"game": "Pong", "frames": 3}')
    _refused(js, kind, "it is a JSON file", absent=wrong)
    (empty := tmp_path / "empty.pt").write_bytes(b"")
    _refused(empty, kind, "the file is empty", absent=wrong)
    with zipfile.ZipFile(archive := tmp_path / "bundle.zip", "w") as out:
        out.writestr("readme.txt", "hello")
        out.writestr("weights/model.bin", b"\0" * 8)
    _refused(
        archive, kind, "a zip archive holding ['readme.txt', 'weights/model.bin']", "not an SB3 model", absent=wrong
    )
    _refused(tmp_path / "missing.pt", kind, "does not exist", absent=wrong)


@pytest.mark.parametrize("kind", ["auto", "sb3", "cleanrl", "greydanus2017"])
def test_an_unknown_state_dict_points_to_wrap_policy(tmp_path, kind):
    torch.save({f"encoder.layer{i}.weight": torch.zeros(3) for i in range(8)}, path := tmp_path / "mine.pt")
    _refused(
        path,
        kind,
        "a state dict of no supported agent",
        "encoder.layer0.weight",
        "encoder.layer4.weight",
        "engine.policies.module.wrap_policy",
        absent=("greydanus2017 agent", "set the agent kind"),
    )
    torch.save([torch.zeros(3)], listed := tmp_path / "list.pt")
    _refused(listed, kind, "holds a list, not a state dict")
    # a wrapper under a key of its own: the keys and what each holds show where the weights are
    torch.save({"agent": {"conv.weight": torch.zeros(3)}, "global_step": 5}, wrapped := tmp_path / "wrapped.pt")
    _refused(wrapped, kind, "holds a dict of {'agent': dict, 'global_step': int}, not a state dict")


def test_cleanrl_outputs_must_be_finite_in_the_dtype_asked_for(tmp_path):
    """Every loader takes its finite-output test step in the dtype asked for: 1e5 is finite in float32, not in
    float16."""
    agent = cleanrl_scripts.make_agent("ppo_atari")
    with torch.no_grad():
        agent.network[0].weight.fill_(1e5)
    cleanrl_scripts.save_like_cleanrl(agent, path := tmp_path / "big.cleanrl_model")
    assert isinstance(load_policy(path, device="cpu"), CleanRLPolicy)
    with pytest.raises(CheckpointError, match="outputs on a test observation .* are not finite"):
        load_policy(path, device="cpu", dtype=torch.float16)
