import io
import pickle

import pytest
import torch

from engine import CheckpointError, load_agent
from engine.policies.greydanus2017 import ActorCritic
from tests.conftest import checkpoint


@pytest.mark.parametrize("game,actions", [("pong", 6), ("breakout", 4), ("spaceinvaders", 6)])
def test_loads_real_legacy_checkpoints(game, actions):
    path = checkpoint(game, 80)
    agent = load_agent(path, device="cpu")
    assert (agent.core, agent.num_actions, agent.hidden_size, agent.training) == ("gru", actions, 256, False)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in agent.state_dict().items():
        assert torch.equal(value, raw[key]), key


def test_lstm_round_trip_zip_format(tmp_path, dtype):
    torch.manual_seed(0)
    agent = ActorCritic(num_actions=4, core="lstm")
    path = tmp_path / "lstm.pt"
    torch.save(agent.state_dict(), path)
    loaded = load_agent(path, device="cpu", dtype=dtype)
    assert loaded.core == "lstm" and loaded.num_actions == 4 and loaded.state_size == 2
    assert loaded.actor_linear.weight.dtype == dtype
    x, state = torch.rand(3, 1, 80, 80), agent.initial_state(3)
    with torch.inference_mode():
        expected = agent(x, state)
        got = loaded.float()(x, state)
    assert torch.equal(expected.logits, got.logits) and torch.equal(expected.value, got.value)


def test_wrapped_and_data_parallel_state_dicts(tmp_path):
    agent = ActorCritic(num_actions=6, core="gru")
    torch.save({"state_dict": {f"module.{k}": v for k, v in agent.state_dict().items()}, "step": 3}, tmp_path / "w.pt")
    assert load_agent(tmp_path / "w.pt", device="cpu").num_actions == 6


def _save(tmp_path, obj, name="bad.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_bad_checkpoints_fail_clearly(tmp_path):
    sd = ActorCritic(num_actions=6, core="gru").state_dict()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_agent(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_agent(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_agent(_save(tmp_path, [1, 2, 3]))
    with pytest.raises(CheckpointError, match="cannot tell the recurrent core"):
        load_agent(_save(tmp_path, {k: v for k, v in sd.items() if not k.startswith("gru.")}))
    missing = dict(sd)
    del missing["conv3.bias"]
    with pytest.raises(CheckpointError, match=r"missing \['conv3.bias'\]"):
        load_agent(_save(tmp_path, missing))
    with pytest.raises(CheckpointError, match=r"unexpected \['extra.weight'\]"):
        load_agent(_save(tmp_path, {**sd, "extra.weight": torch.zeros(1)}))
    wrong = {**sd, "conv2.weight": torch.zeros(32, 32, 5, 5)}
    with pytest.raises(CheckpointError, match=r"conv2.weight: \(32, 32, 5, 5\) \(expected \(32, 32, 3, 3\)\)"):
        load_agent(_save(tmp_path, wrong))
    # a pickle that weights_only refuses (arbitrary objects) is not silently executed
    path = tmp_path / "obj.pt"
    path.write_bytes(pickle.dumps(io.BytesIO(b"x")))
    with pytest.raises(CheckpointError):
        load_agent(path)


def test_device_validation():
    from engine import EngineError
    from engine.core.device import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EngineError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            resolve_device("cuda")
