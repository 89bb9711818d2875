"""The actor-critic agents of the 2017 paper (LSTM core) and of baby-a3c (GRU core), and their loading.

The recurrent state is always a tuple of batch-first tensors: ``(hx, cx)`` for the LSTM core, ``(hx,)`` for
the GRU core. Other modules treat it as an opaque tuple (index it, repeat it, move it) and never ask which
core produced it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .batching import pad_rows
from .device import resolve_device, resolve_dtype
from .errors import CheckpointError

State = tuple[torch.Tensor, ...]
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


class PolicyOutput(NamedTuple):
    """One forward pass: ``value`` (N,), ``logits`` (N, actions), ``state`` (the next recurrent state)."""

    value: torch.Tensor
    logits: torch.Tensor
    state: State


class ActorCritic(nn.Module):
    """Four 3x3 stride-2 ELU convolutions (80x80 -> 5x5), a recurrent cell, a value head and a policy head.

    Args:
        num_actions: size of the policy head.
        core: ``"lstm"`` (``LSTMCell``, state ``(hx, cx)``) or ``"gru"`` (``GRUCell``, state ``(hx,)``).
        hidden_size: width of the recurrent cell (256 in every published agent).
        channels: input channels (1 for the 2017 preprocessing).

    The parameter names match the published state dicts (conv1..conv4, lstm|gru, critic_linear, actor_linear).
    """

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

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        """The recurrent core and both heads on (N, 800) features; only the first ``n`` rows are returned."""
        next_state = self.step_core(features, state)
        value, logits = self.heads(next_state[0])
        return PolicyOutput(value[:n], logits[:n], tuple(s[:n] for s in next_state))


# --- recurrent-state helpers: the only place that knows a state is a tuple --------------------------------


def index_state(state: State, index) -> State:
    """Select rows of every tensor of a state (an int, slice, or index tensor)."""
    return tuple(s[index] for s in state)


def state_to(state: State, device=None, dtype=None) -> State:
    """Move/cast every tensor of a state."""
    return tuple(s.to(device=device, dtype=dtype) for s in state)


def stack_states(states: list[State]) -> State:
    """A list of per-step states (each a tuple of (1, hidden)) -> one state tuple of (T, hidden)."""
    return tuple(torch.cat(parts, dim=0) for parts in zip(*states))


# --- loading --------------------------------------------------------------------------------------------------

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file): check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path!r} is not a torch checkpoint that loads with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): pass a file written by torch.save(model.state_dict())"
        ) from exc
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:  # common wrappers: {"state_dict": {...}, "step": ...}
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict of tensors: "
            "save the agent with torch.save(model.state_dict(), path)"
        )
    # checkpoints saved from nn.DataParallel prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def build_agent_from_state_dict(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> ActorCritic:
    """Infer the core, actions, hidden size and channels from keys/shapes, build the agent, load the weights."""
    cores = [c for c in CORES if f"{c}.weight_ih" in state_dict]
    if len(cores) != 1:
        raise CheckpointError(
            f"{source}: cannot tell the recurrent core: expected exactly one of 'lstm.weight_ih' or 'gru.weight_ih' "
            f"among its keys, found keys {sorted(state_dict)[:12]}{'...' if len(state_dict) > 12 else ''}"
        )
    core = cores[0]
    try:
        num_actions = state_dict["actor_linear.weight"].shape[0]
        hidden_size = state_dict[f"{core}.weight_hh"].shape[1]
        channels = state_dict["conv1.weight"].shape[1]
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{source}: missing or malformed key {exc}: not an actor-critic agent of the spec") from exc
    agent = ActorCritic(num_actions=num_actions, core=core, hidden_size=hidden_size, channels=channels)
    expected = agent.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source}: keys do not match the {core.upper()} actor-critic of the spec: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if state_dict[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"{source}: tensors of the wrong shape: {'; '.join(wrong)}")
    agent.load_state_dict(state_dict)
    return agent


def load_agent(
    path: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"
) -> ActorCritic:
    """Load a legacy or zip ``torch.save``d state dict (``weights_only=True``) into an :class:`ActorCritic`.

    The core (LSTM or GRU), number of actions, hidden size and input channels are inferred from the keys and
    shapes. Raises :class:`CheckpointError` with the reason for anything else. The agent is returned in eval
    mode on ``device`` (``"auto"`` = CUDA when present) with ``dtype``.
    """
    agent = build_agent_from_state_dict(_read_state_dict(path), source=repr(os.fspath(path)))
    return agent.to(device=resolve_device(device), dtype=resolve_dtype(dtype)).eval()
