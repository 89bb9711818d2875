"""The agents of the 2017 paper (LSTM core) and of baby-a3c (GRU core): four ELU convolutions, a recurrent cell,
a value head and a policy head, and their loading from the published state dicts."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import pad_rows
from ..core.device import resolve_device, resolve_dtype
from ..core.errors import CheckpointError
from ..core.policy import ConvTrunk, DeltaNetwork, PolicyOutput, State, reset_rows
from .checkpoint import (
    MAX_ACTIONS,
    MAX_CHANNELS,
    MAX_HIDDEN,
    OWN_NETWORK,
    check_keys_and_shapes,
    check_weights,
    dims,
    load_checked,
    read_state_dict,
)

CORES = ("lstm", "gru")
CONV_FEATURES = 32 * 5 * 5


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU (alpha 1) as ``exp(min(x, 0)) - 1 + max(x, 0)``; overwrites ``x`` when autograd is off.

    torch's ``F.elu`` evaluates a scalar ``expm1`` on the CPU; this form uses the vectorised ``exp`` and, done
    in place on the convolution's output (no fresh large buffers to page in), is several times faster on a
    perturbation batch, where the ELUs were the largest cost. It differs from ``F.elu`` by float32 rounding
    only (at most 6e-8, for x just below 0), and every part of the engine (rollouts, the loop reference,
    the benchmark's bare forward pass) uses it, so they all agree. Call it only on a tensor you own.
    """
    positive = F.relu(x)
    if torch.is_grad_enabled():  # autograd needs the intermediate values intact
        return torch.exp(x - positive) - 1 + positive
    return x.sub_(positive).exp_().sub_(1).add_(positive)


class ActorCritic(nn.Module):
    """Four 3x3 stride-2 ELU convolutions (80x80 -> 5x5), a recurrent cell, a value head and a policy head.

    Args:
        num_actions: size of the policy head.
        core: ``"lstm"`` (``LSTMCell``, state ``(hx, cx)``) or ``"gru"`` (``GRUCell``, state ``(hx,)``).
        hidden_size: width of the recurrent cell (256 in every published agent).
        channels: input channels (1 for the 2017 preprocessing).

    The parameter names match the published state dicts (conv1..conv4, lstm|gru, critic_linear, actor_linear).
    """

    pipeline = "greydanus2017"
    frame_stack = 1
    # the recurrent cell, named after the state dicts' keys: only the one of ``core`` is set
    lstm: nn.LSTMCell
    gru: nn.GRUCell

    def __init__(self, num_actions: int, core: str = "gru", hidden_size: int = 256, channels: int = 1):
        super().__init__()
        if core not in CORES:
            raise ValueError(f"core must be one of {CORES}, got {core!r}")
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        self.core, self.num_actions, self.hidden_size, self.channels = core, num_actions, hidden_size, channels
        self.conv1 = nn.Conv2d(channels, 32, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        cell = nn.LSTMCell if core == "lstm" else nn.GRUCell
        setattr(self, core, cell(CONV_FEATURES, hidden_size))
        self.critic_linear = nn.Linear(hidden_size, 1)
        self.actor_linear = nn.Linear(hidden_size, num_actions)
        # Channels-last convolution weights make oneDNN run conv1 (one input channel) about 10x faster on
        # the CPU; loading a state dict keeps this layout, and it is native on CUDA too.
        self.to(memory_format=torch.channels_last)

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        return (self.channels, 80, 80)

    @property
    def device(self) -> torch.device:
        return self.actor_linear.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.actor_linear.weight.dtype

    def reset_state(self, state: State, done: torch.Tensor) -> State:
        return reset_rows(state, done)

    @property
    def activation_elements(self) -> int:
        """Elements one input's forward pass holds besides the observation (each conv output and its ELU, the
        cell's gates and state), for sizing perturbation batches."""
        conv = 32 * (40 * 40 + 20 * 20 + 10 * 10 + 5 * 5)
        return 2 * conv + 8 * self.hidden_size

    @property
    def state_size(self) -> int:
        """How many tensors the recurrent state holds (2 for LSTM, 1 for GRU)."""
        return 2 if self.core == "lstm" else 1

    def initial_state(self, batch: int = 1) -> State:
        """The zero state of an episode start, on the agent's device and dtype: a tuple of (batch, hidden)."""
        p = self.actor_linear.weight
        return tuple(p.new_zeros(batch, self.hidden_size) for _ in range(self.state_size))

    @property
    def convs(self) -> tuple[nn.Conv2d, ...]:
        return (self.conv1, self.conv2, self.conv3, self.conv4)

    def conv_activations(self, x: torch.Tensor, start: int = 0, stop: int = 4) -> torch.Tensor:
        """Apply ``ELU(conv)`` layers ``start..stop-1`` (0-based): (N, C, H, W) -> (N, 32, H', W')."""
        for conv in self.convs[start:stop]:
            x = elu(conv(x))
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, channels, 80, 80) -> (N, 800) convolutional features."""
        return self.conv_activations(x).flatten(1)

    def step_core(self, features: torch.Tensor, state: State) -> State:
        """Advance the recurrent cell: (N, 800) features and a state tuple -> the next state tuple."""
        if self.core == "lstm":
            hx, cx = self.lstm(features, (state[0], state[1]))
            return (hx, cx)
        return (self.gru(features, state[0]),)

    def heads(self, hx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, hidden) -> value (N,), logits (N, actions)."""
        return self.critic_linear(hx).squeeze(-1), self.actor_linear(hx)

    def forward(self, x: torch.Tensor, state: State, batch_invariant: bool = True) -> PolicyOutput:
        """x: (N, channels, 80, 80) preprocessed frames; state: tuple of (N, hidden). One pass, both heads.

        With ``batch_invariant`` (the default) a frame's outputs are bit-for-bit the same whatever else is
        in the batch (rows padded as in ``engine.batching``), so chunking perturbations, or recomputing a
        rollout's outputs in one batch, never changes a result. The loop reference turns it off to time
        a true one-input forward pass.
        """
        n = x.shape[0]
        if batch_invariant:
            x, state = pad_rows(x), tuple(pad_rows(s) for s in state)
        return self.from_features(self.features(x), state, n)

    def conv_trunk(self) -> ConvTrunk:
        """The four ELU convolutions, for exact incremental inference (:class:`IncrementalPolicy`)."""
        return ConvTrunk(tuple((conv, elu) for conv in self.convs))

    def from_trunk(self, activations: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        """The recurrent core and both heads on conv4's activations (N, 32, 5, 5)."""
        return self.from_features(activations.flatten(1), state, n)

    def delta_network(self) -> DeltaNetwork:
        """The recurrent cell and both heads after the trunk, for delta propagation
        (:class:`engine.core.policy.DeltaPolicy`)."""
        cell: nn.GRUCell | nn.LSTMCell = self.lstm if self.core == "lstm" else self.gru
        return DeltaNetwork(body=(), core=cell, actor=self.actor_linear, critic=self.critic_linear)

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        """The recurrent core and both heads on (N, 800) features; only the first ``n`` rows are returned."""
        next_state = self.step_core(features, state)
        value, logits = self.heads(next_state[0])
        return PolicyOutput(value[:n], logits[:n], tuple(s[:n] for s in next_state))


def _infer_sizes(state_dict: dict[str, torch.Tensor], source: str) -> tuple[str, int, int, int]:
    """(core, num_actions, hidden_size, channels) from the keys and shapes, each checked against its bounds."""
    cores = [c for c in CORES if f"{c}.weight_ih" in state_dict]
    if len(cores) != 1:
        raise CheckpointError(
            f"{source}: cannot tell the recurrent core: expected exactly one of 'lstm.weight_ih' or 'gru.weight_ih' "
            f"among its keys, found keys {sorted(state_dict)[:12]}{'...' if len(state_dict) > 12 else ''}"
            + ("" if cores else f"; {OWN_NETWORK}")
        )
    core = cores[0]
    num_actions = dims(state_dict, "actor_linear.weight", 2, source)[0]
    hidden_size = dims(state_dict, f"{core}.weight_hh", 2, source)[1]
    channels = dims(state_dict, "conv1.weight", 4, source)[1]
    for what, value, key, bound in (
        ("actions", num_actions, "actor_linear.weight", MAX_ACTIONS),
        ("hidden units", hidden_size, f"{core}.weight_hh", MAX_HIDDEN),
        ("input channels", channels, "conv1.weight", MAX_CHANNELS),
    ):
        if not 1 <= value <= bound:
            raise CheckpointError(
                f"{source}: {key} {tuple(state_dict[key].shape)} implies {value} {what}, outside 1..{bound}: "
                "the file is corrupt or not an agent of the spec (nothing was allocated)"
            )
    return core, num_actions, hidden_size, channels


def build_agent_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    source: str = "state dict",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> ActorCritic:
    """Infer the core, actions, hidden size and channels from keys/shapes, build the agent, load the weights.

    Every size is checked (bounds, then each tensor's shape against the architecture they imply) before a
    module is allocated; weights must be dense, stored once, floating point, finite and below ``MAX_ABS_WEIGHT``,
    and the agent's outputs on a test observation finite on ``device`` in ``dtype`` (default: the CPU, float32),
    where it is returned in eval mode. Anything else is a :class:`CheckpointError` naming ``source`` and the problem.
    """
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{source}: not a state dict (a dict of names to tensors)")
    core, num_actions, hidden_size, channels = _infer_sizes(state_dict, source)
    with torch.device("meta"):  # the architecture's shapes, without allocating anything
        expected = {
            k: tuple(v.shape)
            for k, v in ActorCritic(num_actions, core=core, hidden_size=hidden_size, channels=channels)
            .state_dict()
            .items()
        }
    check_keys_and_shapes(state_dict, expected, source, f"the {core.upper()} actor-critic of the spec")
    check_weights(state_dict, source)
    agent = ActorCritic(num_actions=num_actions, core=core, hidden_size=hidden_size, channels=channels)
    return load_checked(
        agent,
        state_dict,
        source,
        device=None if device is None else resolve_device(device),
        dtype=None if dtype is None else resolve_dtype(dtype),
    )


def load_agent(
    path: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"
) -> ActorCritic:
    """Load a legacy or zip ``torch.save``d state dict (``weights_only=True``) into an :class:`ActorCritic`.

    The core (LSTM or GRU), number of actions, hidden size and input channels are inferred from the keys and
    shapes, and checked before anything is allocated. Any problem with the file (missing, empty, not a
    checkpoint, more work than its size warrants, damaged, Python objects other than tensors, wrong architecture,
    expanded, non-finite, non-float or absurdly large weights, outputs that are not finite) raises
    :class:`CheckpointError` naming the file and the problem. The agent is returned in eval mode on ``device``
    (``"auto"`` = CUDA when present) with ``dtype``.
    """
    return build_agent_from_state_dict(
        read_state_dict(path), source=repr(os.fspath(path)), device=resolve_device(device), dtype=resolve_dtype(dtype)
    )
