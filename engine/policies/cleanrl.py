"""CleanRL's Atari agents behind the policy interface: ``ppo_atari``, ``ppo_atari_lstm`` and ``dqn_atari``.

A CleanRL user saves an agent with ``torch.save(agent.state_dict(), path)`` (``dqn_atari`` writes
``runs/<run>/<exp>.cleanrl_model``; the PPO scripts save nothing by default, so users add that line). The
modules below rebuild the scripts' networks with the same parameter names (``network.0`` ... ``network.7``,
``actor``, ``critic``, ``lstm``; ``network.9`` for the Q-network's last layer), so such a file loads into them
unchanged; :func:`load_cleanrl` reads it with ``torch.load(weights_only=True)`` (no code from the file runs) and
tells the three scripts apart by keys and shapes.

The scripts divide the observation bytes by 255 inside ``get_value`` / ``get_action_and_value`` /
``QNetwork.forward``. Observations at the policy interface are already ``bytes / 255``, so these modules start at
``self.network``: their outputs equal the scripts' own (bit for bit on the CPU when run row by row, since
``x / 255.0`` is the same float either way).

Correspondence with the scripts (``x`` the uint8 observations as floats, ``obs = x / 255``):

- ``ppo_atari``: ``logits = agent.actor(agent.network(x / 255.0))``, ``value = agent.get_value(x)``; 4 stacked frames.
- ``ppo_atari_lstm``: one step of ``agent.get_action_and_value(x, (h, c), done)``: the state is reset with
  ``(1 - done)`` *before* the step (the script's ``next_done`` flags the first observation of an episode), which
  is :meth:`reset_state`; the script's ``(1, N, 128)`` state tensors are ``(N, 128)`` at the interface; 1 frame.
- ``dqn_atari``: ``logits = q_network(x)`` (the Q-values), ``value = max_a Q``; 4 stacked frames.

Environment pipeline: ``cleanrl_atari`` (the scripts' wrappers: noop reset, max-and-skip 4, episodic life, fire
reset, reward clipping, ``ResizeObservation(84, 84)``, ``GrayScaleObservation``, ``FrameStack``).
``ppo_atari_multigpu`` and ``ppo_atari_envpool`` define the same ``Agent`` and their files load here too; the
envpool script's observations come from envpool's own preprocessing, which this pipeline does not reproduce.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from ..core.batching import pad_rows
from ..core.device import resolve_device, resolve_dtype
from ..core.errors import CheckpointError
from ..core.policy import Activation, ConvTrunk, DeltaNetwork, PolicyOutput, State, reset_rows
from .checkpoint import (
    MAX_ACTIONS,
    MAX_CHANNELS,
    MAX_HIDDEN,
    OWN_NETWORK,
    NotACheckpoint,
    check_keys_and_shapes,
    check_weights,
    load_checked,
    read_state_dict,
)

ARCHITECTURES = ("ppo_atari", "ppo_atari_lstm", "dqn_atari")
PIPELINE = "cleanrl_atari"
SIZE = 84  # the scripts' ResizeObservation((84, 84)); the Nature CNN's 64 * 7 * 7 features need it
FEATURES = 64 * 7 * 7
HIDDEN = 512  # the Nature CNN's linear layer
LSTM_HIDDEN = 128  # ppo_atari_lstm's nn.LSTM(512, 128)
_SUPPORTED = (
    "supported: CleanRL's ppo_atari (keys network.{0,2,4,7}.*, actor.*, critic.*), ppo_atari_lstm (the same plus "
    "lstm.*_l0) and dqn_atari (network.{0,2,4,7,9}.*), saved with torch.save(agent.state_dict(), path)"
)


def nature_cnn(channels: int, num_actions: int | None = None) -> nn.Sequential:
    """The scripts' ``self.network``: three ReLU convolutions (8x8/4, 4x4/2, 3x3/1) on (channels, 84, 84), then
    Linear(3136, 512) and ReLU; with ``num_actions`` (``dqn_atari``) a last Linear(512, num_actions)."""
    layers = [
        nn.Conv2d(channels, 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
    ]
    if num_actions is not None:
        layers.append(nn.Linear(HIDDEN, num_actions))
    return nn.Sequential(*layers)


class CleanRLPolicy(nn.Module):
    """A CleanRL Atari agent as a :class:`engine.core.policy.Policy` (the base of the three scripts' modules): the
    Nature CNN trunk, the observation shape, device and dtype, batch-invariant evaluation. Each script's subclass
    defines ``from_features`` (the rest of its network on the trunk's flattened features)."""

    script: str = ""
    pipeline = PIPELINE
    # each subclass sets and defines these
    network: nn.Sequential
    from_features: Callable[[torch.Tensor, State, int | None], PolicyOutput]

    def __init__(self, num_actions: int, channels: int):
        super().__init__()
        if not 1 <= num_actions <= MAX_ACTIONS:
            raise ValueError(f"num_actions must be in 1..{MAX_ACTIONS}, got {num_actions}")
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be in 1..{MAX_CHANNELS}, got {channels}")
        self.num_actions, self.channels = num_actions, channels

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        return (self.channels, SIZE, SIZE)

    @property
    def frame_stack(self) -> int:
        """Grayscale frames stacked along C by ``FrameStack``: 4 for ppo_atari and dqn_atari, 1 for the LSTM agent."""
        return self.channels

    @property
    def device(self) -> torch.device:
        return cast(nn.Conv2d, self.network[0]).weight.device

    @property
    def dtype(self) -> torch.dtype:
        return cast(nn.Conv2d, self.network[0]).weight.dtype

    # --- the convolutional trunk, for exact incremental inference (see engine.core.incremental) -----------------
    # The input scale sits outside the convolutions: obs = bytes / 255 enters conv1 directly.

    @property
    def convs(self) -> tuple[nn.Conv2d, ...]:
        """The trunk's convolutions (8x8 stride 4, 4x4 stride 2, 3x3 stride 1, no padding), each followed by ReLU."""
        return cast(tuple[nn.Conv2d, ...], (self.network[0], self.network[2], self.network[4]))

    def conv_activations(self, x: torch.Tensor, start: int = 0, stop: int = 3) -> torch.Tensor:
        """Apply ``ReLU(conv)`` layers ``start..stop-1`` (0-based) of the trunk."""
        for index in range(start, stop):
            x = self.network[2 * index + 1](self.network[2 * index](x))
        return x

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """(N, C, 84, 84) observations in [0, 1] -> (N, 3136) flattened convolutional features."""
        return self.conv_activations(obs).flatten(1)

    def conv_trunk(self) -> ConvTrunk:
        """The declaration of :class:`engine.core.policy.IncrementalPolicy`: the three ReLU convolutions."""
        return ConvTrunk(tuple((cast(nn.Conv2d, self.network[2 * i]), self.network[2 * i + 1]) for i in range(3)))

    def from_trunk(self, activations: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        """The rest of the network on the last convolution's activations (N, 64, 7, 7)."""
        return self.from_features(activations.flatten(1), state, n)

    def nature_body(self) -> tuple[tuple[nn.Linear, Activation], ...]:
        """The Nature CNN after its convolutions, for :meth:`delta_network`: Linear(3136, 512) and its ReLU."""
        return ((cast(nn.Linear, self.network[7]), self.network[8]),)

    def initial_state(self, batch: int = 1) -> State:
        return ()

    def reset_state(self, state: State, done: torch.Tensor) -> State:
        return reset_rows(state, done)

    def forward(self, obs: torch.Tensor, state: State = (), batch_invariant: bool = True) -> PolicyOutput:
        """obs: (N, C, 84, 84) in [0, 1] (the bytes / 255); state: the recurrent state (``()`` if feed-forward).

        With ``batch_invariant`` (the default) rows are padded as in ``engine.core.batching``, so a row's outputs
        are bit-for-bit the same whatever else is in the batch.
        """
        n = obs.shape[0]
        if batch_invariant:
            obs, state = pad_rows(obs), tuple(pad_rows(s) for s in state)
        return self.from_features(self.features(obs), state, n)

    def extra_repr(self) -> str:
        return f"script={self.script!r}, num_actions={self.num_actions}, channels={self.channels}"


class CleanRLPPO(CleanRLPolicy):
    """``ppo_atari``'s ``Agent``: ``network`` (Nature CNN), ``actor`` Linear(512, A), ``critic`` Linear(512, 1)."""

    script = "ppo_atari"

    def __init__(self, num_actions: int, channels: int = 4):
        super().__init__(num_actions, channels)
        self.network = nature_cnn(channels)
        self.actor = nn.Linear(HIDDEN, num_actions)
        self.critic = nn.Linear(HIDDEN, 1)

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        hidden = self.network[8](self.network[7](features))
        return PolicyOutput(self.critic(hidden).squeeze(-1)[:n], self.actor(hidden)[:n], ())

    def delta_network(self) -> DeltaNetwork:
        """For delta propagation (:class:`engine.core.policy.DeltaPolicy`): the linear layer and both heads."""
        return DeltaNetwork(body=self.nature_body(), core=None, actor=self.actor, critic=self.critic)


class CleanRLPPOLSTM(CleanRLPolicy):
    """``ppo_atari_lstm``'s ``Agent``: ``network`` (Nature CNN on one frame), ``lstm`` LSTM(512, 128), ``actor``
    Linear(128, A), ``critic`` Linear(128, 1). The state is ``(h, c)``, each (N, hidden) at the interface."""

    script = "ppo_atari_lstm"

    def __init__(self, num_actions: int, channels: int = 1, hidden_size: int = LSTM_HIDDEN):
        super().__init__(num_actions, channels)
        if not 1 <= hidden_size <= MAX_HIDDEN:
            raise ValueError(f"hidden_size must be in 1..{MAX_HIDDEN}, got {hidden_size}")
        self.hidden_size = hidden_size
        self.network = nature_cnn(channels)
        self.lstm = nn.LSTM(HIDDEN, hidden_size)
        self.actor = nn.Linear(hidden_size, num_actions)
        self.critic = nn.Linear(hidden_size, 1)

    def initial_state(self, batch: int = 1) -> State:
        """The zero ``(h, c)`` of an episode start (the script's ``next_lstm_state``), each (batch, hidden)."""
        p = self.actor.weight
        return (p.new_zeros(batch, self.hidden_size), p.new_zeros(batch, self.hidden_size))

    def reset_state(self, state: State, done: torch.Tensor) -> State:
        """The script's ``(1.0 - done) * state``: rows where ``done`` is true become zeros."""
        return reset_rows(state, done)

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        hidden = self.network[8](self.network[7](features))
        # the script's one-step call, sequence length 1 and the (layers=1, N, hidden) state layout of nn.LSTM
        out, (h, c) = self.lstm(hidden.unsqueeze(0), (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        out = out[0]
        return PolicyOutput(self.critic(out).squeeze(-1)[:n], self.actor(out)[:n], (h[0][:n], c[0][:n]))

    def delta_network(self) -> DeltaNetwork:
        """For delta propagation (:class:`engine.core.policy.DeltaPolicy`): the linear layer, the LSTM and both
        heads."""
        return DeltaNetwork(body=self.nature_body(), core=self.lstm, actor=self.actor, critic=self.critic)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_size={self.hidden_size}"


class CleanRLDQN(CleanRLPolicy):
    """``dqn_atari``'s ``QNetwork``: ``network`` (Nature CNN, then Linear(512, A)). Logits are the Q-values, the
    value is ``max_a Q``."""

    script = "dqn_atari"

    def __init__(self, num_actions: int, channels: int = 4):
        super().__init__(num_actions, channels)
        self.network = nature_cnn(channels, num_actions)

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        q = self.network[9](self.network[8](self.network[7](features)))[:n]
        return PolicyOutput(q.amax(dim=-1), q, ())

    def delta_network(self) -> DeltaNetwork:
        """For delta propagation (:class:`engine.core.policy.DeltaPolicy`): the linear layer and the Q head (the
        value is ``max_a Q``: no critic)."""
        return DeltaNetwork(body=self.nature_body(), core=None, actor=cast(nn.Linear, self.network[9]), critic=None)


_CLASSES = {"ppo_atari": CleanRLPPO, "ppo_atari_lstm": CleanRLPPOLSTM, "dqn_atari": CleanRLDQN}


# --- loading ----------------------------------------------------------------------------------------------------


def _keys(state_dict: dict[str, torch.Tensor], limit: int = 14) -> str:
    keys = sorted(state_dict)
    return f"{keys[:limit]}{' ...' if len(keys) > limit else ''}"


def _shape(state_dict: dict[str, torch.Tensor], key: str, ndim: int, source: str, script: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"{source}: looks like CleanRL's {script} but has no tensor {key!r}; {_SUPPORTED}")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(
            f"{source}: {key} has shape {shape}, expected {ndim} dimensions for CleanRL's {script}; {_SUPPORTED}"
        )
    return shape


def identify_cleanrl(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> tuple[str, dict[str, int]]:
    """Which script wrote ``state_dict`` and the sizes to build its module with: ``(script, kwargs)``.

    Refuses, with what was found and what is supported, CleanRL's other agents (continuous actions, classic-control
    MLPs, C51) and anything else.
    """
    keys = set(state_dict)
    if (
        "actor_logstd" in keys
        or any(k.startswith("actor_mean.") for k in keys)
        or any(k.startswith(("fc_mu.", "fc_mean.", "fc_logstd.")) for k in keys)
    ):
        raise CheckpointError(
            f"{source}: a continuous-action agent (found {_keys(state_dict)}: CleanRL's ppo_continuous_action, ddpg, "
            "td3 or sac): saliency scores a discrete action-preference vector (logits or Q-values), so it is not "
            f"supported; {_SUPPORTED}"
        )
    if "atoms" in keys:
        raise CheckpointError(
            f"{source}: a distributional Q-network (an 'atoms' buffer: CleanRL's c51 / c51_atari), not supported; "
            f"{_SUPPORTED}"
        )
    if "actor_linear.weight" in keys and any(k.startswith(("conv1.", "lstm.weight_ih", "gru.")) for k in keys):
        raise CheckpointError(
            f"{source}: a 2017-style actor-critic agent (conv1..conv4, lstm/gru, actor_linear), not a CleanRL agent: "
            "load it with engine.policies.greydanus2017.load_agent (agent=greydanus2017 / baby-a3c in the app)"
        )
    if any(k.startswith(("actor.0.", "critic.0.")) for k in keys):
        raise CheckpointError(
            f"{source}: actor and critic are MLPs on vector observations (found {_keys(state_dict)}: CleanRL's "
            f"classic-control ppo), not the Nature CNN on 84x84 frames; {_SUPPORTED}"
        )
    first = state_dict.get("network.0.weight")
    if first is None:
        raise CheckpointError(
            f"{source}: not a CleanRL Atari agent: no 'network.0.weight' (the Nature CNN's first convolution) among "
            f"its keys {_keys(state_dict)}; {_SUPPORTED}; {OWN_NETWORK}"
        )
    if first.ndim == 2 or (first.ndim == 4 and "network.7.weight" not in keys and "network.9.weight" not in keys):
        raise CheckpointError(
            f"{source}: network.0.weight has shape {tuple(first.shape)}: an MLP on vector observations (CleanRL's "
            f"classic-control ppo / dqn, keys {_keys(state_dict)}), not the Nature CNN on 84x84 frames; {_SUPPORTED}"
        )
    if "lstm.weight_ih_l0" in keys:
        script = "ppo_atari_lstm"
    elif "actor.weight" in keys or "critic.weight" in keys:
        script = "ppo_atari"
    elif "network.9.weight" in keys:
        script = "dqn_atari"
    else:
        raise CheckpointError(
            f"{source}: a Nature CNN without a recognised head (no actor/critic, lstm or network.9): keys "
            f"{_keys(state_dict)}; {_SUPPORTED}"
        )
    channels = _shape(state_dict, "network.0.weight", 4, source, script)[1]
    sizes: dict[str, int] = {"channels": channels}
    checks = [("input channels", channels, "network.0.weight", MAX_CHANNELS)]
    if script == "dqn_atari":
        sizes["num_actions"] = _shape(state_dict, "network.9.weight", 2, source, script)[0]
        checks.append(("actions", sizes["num_actions"], "network.9.weight", MAX_ACTIONS))
    else:
        sizes["num_actions"] = _shape(state_dict, "actor.weight", 2, source, script)[0]
        checks.append(("actions", sizes["num_actions"], "actor.weight", MAX_ACTIONS))
    if script == "ppo_atari_lstm":
        sizes["hidden_size"] = _shape(state_dict, "lstm.weight_hh_l0", 2, source, script)[1]
        checks.append(("LSTM hidden units", sizes["hidden_size"], "lstm.weight_hh_l0", MAX_HIDDEN))
    for what, value, key, bound in checks:
        if not 1 <= value <= bound:
            raise CheckpointError(
                f"{source}: {key} {tuple(state_dict[key].shape)} implies {value} {what}, outside 1..{bound}: the file "
                f"is corrupt or not CleanRL's {script} (nothing was allocated)"
            )
    return script, sizes


def build_cleanrl_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    source: str = "state dict",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> CleanRLPolicy:
    """Identify the script, check every key and shape against its module (before allocating it), check the weights
    (dense, stored once, floating point, finite, plausible), load them, move the policy to ``device`` and ``dtype``
    (default: the CPU, float32) and check its outputs on a test observation are finite there."""
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{source}: not a state dict (a dict of names to tensors)")
    script, sizes = identify_cleanrl(state_dict, source)
    cls = _CLASSES[script]
    with torch.device("meta"):  # the architecture's shapes, without allocating anything
        expected = {k: tuple(v.shape) for k, v in cls(**sizes).state_dict().items()}
    architecture = f"CleanRL's {script} ({sizes['num_actions']} actions, {sizes['channels']} channels)"
    check_keys_and_shapes(
        state_dict,
        expected,
        source,
        architecture,
        supported=_SUPPORTED,
        hint=" (network.7 takes the 64x7x7 features of an 84x84 observation)",
    )
    check_weights(state_dict, source)
    return load_checked(
        cls(**sizes),
        state_dict,
        source,
        device=None if device is None else resolve_device(device),
        dtype=None if dtype is None else resolve_dtype(dtype),
    )


def _looks_like_msgpack(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1)
    except OSError:
        return False
    return bool(head) and (0x90 <= head[0] <= 0x9F or head[0] in (0x80, 0x81, 0x82, 0x83, 0xDC, 0xDD, 0xDE, 0xDF))


def load_cleanrl(
    path: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"
) -> CleanRLPolicy:
    """Load a CleanRL ``ppo_atari`` / ``ppo_atari_lstm`` / ``dqn_atari`` agent saved with
    ``torch.save(agent.state_dict(), path)`` (any file name, e.g. ``*.cleanrl_model``) as a policy.

    The file is read with ``torch.load(weights_only=True)``; the script, the action count, the observation channels
    (and the LSTM's width) are inferred from the keys and shapes and checked before anything is allocated. Anything
    else (a pickled module, a continuous-action or classic-control agent, unknown keys, wrong shapes, non-finite
    weights or outputs, a JAX script's flax file) raises :class:`CheckpointError` saying what was found and what is
    supported. The policy is returned in eval mode on ``device`` (``"auto"`` = CUDA when present) with ``dtype``.
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    source = repr(os.fspath(path))
    try:
        state_dict = read_state_dict(path)
    except NotACheckpoint as exc:
        if _looks_like_msgpack(os.fspath(path)):
            raise CheckpointError(
                f"{exc} (it looks like a msgpack file, which CleanRL's JAX scripts (*_jax.py) write with flax: only "
                "the PyTorch scripts' torch.save(agent.state_dict(), path) files are supported)"
            ) from exc
        raise
    return build_cleanrl_from_state_dict(state_dict, source=source, device=device, dtype=dtype)


__all__ = [
    "ARCHITECTURES",
    "CleanRLPolicy",
    "CleanRLDQN",
    "CleanRLPPO",
    "CleanRLPPOLSTM",
    "build_cleanrl_from_state_dict",
    "identify_cleanrl",
    "load_cleanrl",
    "nature_cnn",
]
