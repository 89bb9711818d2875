"""The roofline model (engine.core.roofline) against FLOPs and bytes counted by hand."""

import pytest
import torch
from torch import nn

from engine.core.policy import ConvTrunk, PolicyOutput
from engine.core.roofline import LayerCost, RooflineTable, roofline, roofline_fraction
from engine.policies.greydanus2017 import ActorCritic
from engine.training.ppo import make_agent


class OneConv(nn.Module):
    """A conv trunk of one 5x5/2 convolution (3 -> 8 channels, padding 1) on 3x32x32, then Linear(8*15*15, 4)."""

    observation_shape = (3, 32, 32)
    num_actions = 4
    pipeline = "gymnasium_atari"
    frame_stack = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=2, padding=1)
        self.head = nn.Linear(8 * 15 * 15, 4)

    @property
    def device(self):
        return self.head.weight.device

    @property
    def dtype(self):
        return self.head.weight.dtype

    def initial_state(self, batch=1):
        return ()

    def reset_state(self, state, done):
        return state

    def conv_trunk(self):
        return ConvTrunk(((self.conv, torch.relu),))

    def from_trunk(self, activations, state, n=None):
        q = self.head(activations.flatten(1))[:n]
        return PolicyOutput(q.amax(-1), q, ())

    def forward(self, obs, state=()):
        return self.from_trunk(torch.relu(self.conv(obs)), state)


def test_single_conv_and_linear_by_hand():
    table = roofline(OneConv(), "plain", batch=1)
    conv, head = table.layers
    out = 8 * 15 * 15  # (32 + 2 - 5) // 2 + 1 = 15
    assert conv.flops == 2 * out * 3 * 5 * 5
    weights = 8 * 3 * 25 + 8
    assert conv.bytes == 4 * (3 * 32 * 32 + weights + out)
    assert head.kind == "linear" and head.flops == 2 * out * 4
    assert head.bytes == 4 * (out + 4 + out * 4 + 4)
    assert table.flops == conv.flops + head.flops
    assert table.intensity == pytest.approx(table.flops / table.bytes)
    # the weights are read once per forward pass of `batch` inputs
    batched = roofline(OneConv(), "plain", batch=10)
    assert batched.layers[0].bytes == pytest.approx(4 * (3 * 32 * 32 + weights / 10 + out))
    assert roofline(OneConv().double(), "plain").layers[0].bytes == 2 * conv.bytes


def test_2017_agent_plain_flops_by_hand():
    agent = ActorCritic(6, "gru")
    table = roofline(agent, "plain", radius=5, density=5)
    sides = [80, 40, 20, 10, 5]
    channels = [1, 32, 32, 32, 32]
    convs = sum(2 * channels[i + 1] * sides[i + 1] ** 2 * channels[i] * 9 for i in range(4))
    gru = 2 * 3 * 256 * (800 + 256)  # W_ih (768 x 800) x and W_hh (768 x 256) h
    heads = 2 * 256 * 1 + 2 * 256 * 6
    assert convs == 2 * (460_800 + 3_686_400 + 921_600 + 230_400)
    assert table.flops == convs + gru + heads
    assert [r.name for r in table.layers] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "gru",
        "critic_linear",
        "actor_linear",
    ]
    assert table.masks == 16 * 16


def test_cleanrl_lstm_rows():
    table = roofline(make_agent(6), "plain")
    kinds = {r.name: r for r in table.layers}
    assert kinds["lstm"].flops == 2 * 4 * 128 * (512 + 128)
    assert kinds["network.7"].flops == 2 * 3136 * 512


@pytest.mark.parametrize("agent", [ActorCritic(6, "gru"), make_agent(6)], ids=["greydanus2017", "cleanrl_lstm"])
def test_incremental_below_plain_and_tends_to_it(agent):
    plain = roofline(agent, "plain", radius=5, density=5).flops
    assert roofline(agent, "incremental", radius=5, density=5).flops < plain
    gaps = [plain - roofline(agent, "incremental", radius=r, density=5).flops for r in (2, 5, 8, 12)]
    assert all(later <= earlier for earlier, later in zip(gaps, gaps[1:]))
    # masks this wide (4 sigma = 48 pixels) change every trunk position: the windows are whole maps, and only the
    # shared activations (once per observation) come on top
    wide = roofline(agent, "incremental", radius=12, density=5)
    assert plain <= wide.flops <= plain * (1 + 1 / wide.masks) + 1e-6


def test_roofline_fraction_by_hand():
    table = RooflineTable(
        "plain", (LayerCost("a", "conv", 100.0, 50.0), LayerCost("b", "linear", 300.0, 150.0)), 5, 5, 1, 1, 4
    )
    assert table.flops == 400 and table.bytes == 200 and table.intensity == 2
    # memory bound: 2 FLOP/B * 10 B/s = 20 FLOP/s < 1000; 0.025 inputs/s * 400 FLOP = 10 FLOP/s
    assert roofline_fraction(0.025, table, 1000.0, 10.0) == pytest.approx(0.5)
    # compute bound: min(30, 2 * 100) = 30 FLOP/s; 0.06 * 400 = 24
    assert roofline_fraction(0.06, table, 30.0, 100.0) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        roofline_fraction(1.0, table, 0.0, 10.0)


def test_refuses_without_a_trunk_or_bad_plan():
    with pytest.raises(ValueError, match="plan"):
        roofline(ActorCritic(6), "windows")

    class NoTrunk(OneConv):
        conv_trunk = None

    with pytest.raises(ValueError, match="no conv trunk"):
        roofline(NoTrunk(), "plain")
