"""The policy interface every part of the engine uses, and its first implementation: the actor-critic agents of
the 2017 paper (LSTM core) and of baby-a3c (GRU core), with their loading.

The recurrent state is always a tuple of batch-first tensors: ``(hx, cx)`` for the LSTM core, ``(hx,)`` for
the GRU core, ``()`` for a feed-forward agent, four tensors for an agent with separate actor and critic LSTMs.
Other modules treat it as an opaque tuple (index it, repeat it, move it) and never ask what produced it.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
import zipfile
from typing import Callable, NamedTuple, Protocol, runtime_checkable

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
    """One forward pass: ``value`` (N,), ``logits`` (N, actions), ``state`` (the next recurrent state).

    ``logits`` is the action-preference vector the actor map scores: a policy's logits, or a value-based agent's
    Q-values; ``value`` is the critic's state value (``max_a Q`` for a Q-network).
    """

    value: torch.Tensor
    logits: torch.Tensor
    state: State


# Environment pipelines an agent can declare (``Policy.pipeline``); engine.env builds each one exactly as its
# library does, since the observation bytes differ between them.
PIPELINES = ("greydanus2017", "sb3_atari", "cleanrl_atari", "gymnasium_atari")


@runtime_checkable
class Policy(Protocol):
    """What the engine needs of an agent, whatever library trained it.

    Observations at this interface are floating tensors ``(N, C, H, W)`` in [0, 1] (the observation bytes / 255)
    on the policy's ``device`` and ``dtype``; a network that divides bytes by 255 itself gets that division
    skipped by its adapter, so outputs equal the library's own. Perturbations act on these observations: the
    same mask on every channel (all frames of a stack).

    Attributes:
        observation_shape: ``(C, H, W)`` of one observation (``(1, 80, 80)`` for the 2017 agents, ``(4, 84, 84)``
            for stacked-frame agents).
        num_actions: size of the action-preference vector.
        device, dtype: where and in what the policy computes.
        pipeline: the environment pipeline the agent was trained with (one of :data:`PIPELINES`).
        frame_stack: observations frames stacked along C by the pipeline (1: none).
    """

    observation_shape: tuple[int, int, int]
    num_actions: int
    pipeline: str
    frame_stack: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def __call__(self, obs: torch.Tensor, state: State) -> PolicyOutput:
        """One step of N observations, each with its own recurrent state (the state *before* the observation)."""
        ...

    def initial_state(self, batch: int = 1) -> State:
        """The state of an episode start for ``batch`` rows (zeros; ``()`` for a feed-forward agent)."""
        ...

    def reset_state(self, state: State, done: torch.Tensor) -> State:
        """``state`` with the rows where ``done`` (N,) is true set to the episode-start state."""
        ...


Activation = Callable[[torch.Tensor], torch.Tensor]


class ConvTrunk(NamedTuple):
    """The chain of convolutions a network starts with, as :class:`IncrementalPolicy` declares it.

    Attributes:
        layers: ``((conv, activation), ...)`` in order: each ``conv`` an ``nn.Conv2d`` (any kernel, stride, padding,
            dilation and groups; ``padding_mode="zeros"``; ``padding="same"`` only where it is symmetric), each
            ``activation`` a *pointwise* function (its output at a position depends only on its input there: ReLU,
            ELU, tanh, ...; ``None`` for none). It is called on a fresh convolution output, which it may
            overwrite. Pooling, normalisation over positions or anything else that mixes positions ends the
            trunk; it belongs to ``from_trunk``.
        input_scale: the factor the network applies to the observation in [0, 1] before the first convolution
            (1.0 when the convolutions see the observation itself; the usual ``/ 255`` of the bytes sits outside,
            in the observation's definition). The network must compute ``conv1(obs * input_scale)``.
    """

    layers: tuple[tuple[nn.Conv2d, Activation | None], ...]
    input_scale: float = 1.0


@runtime_checkable
class IncrementalPolicy(Policy, Protocol):
    """Optional: a :class:`Policy` whose network starts with a :class:`ConvTrunk` gets exact incremental inference.

    A perturbation's mask is exactly zero outside a box, so each perturbed copy's trunk activations differ from
    its observation's own only in a window around that box: ``engine.core.incremental`` derives the windows
    from each layer's kernel, stride and padding and computes the trunk only there (scores equal the plain pass
    up to float rounding; ``incremental="auto"`` uses it where the windows are small enough to pay). A policy
    without these two methods runs plain batched passes, and ``incremental=True`` on it is a ValueError.

    Contract: for observations ``obs`` (N, C, H, W) and any state, ``policy(obs, state)`` equals
    ``policy.from_trunk(a, state, N)`` where ``a`` is ``obs * input_scale`` run through each ``activation(conv(.))``
    of :meth:`conv_trunk` in turn, and batch-invariantly so (``from_trunk`` gets rows padded as in
    ``engine.core.batching`` and returns the first ``n``).
    """

    def conv_trunk(self) -> ConvTrunk:
        """The trunk's layers and input scale (the modules themselves, not copies: called once per saliency call)."""
        ...

    def from_trunk(self, activations: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        """The rest of the network on the last trunk layer's activations (N, C', H', W') and the state before
        the step; only the first ``n`` rows of the outputs are returned."""
        ...


def reset_rows(state: State, done: torch.Tensor) -> State:
    """Zero the rows of every state tensor where ``done`` (N,) is true: the episode-start state of every agent
    whose initial state is zeros (all the libraries' recurrent agents)."""
    if not state:
        return state
    done = done.to(device=state[0].device, dtype=torch.bool)
    return tuple(torch.where(done.view(-1, *([1] * (s.ndim - 1))), torch.zeros((), dtype=s.dtype, device=s.device), s) for s in state)


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
#
# A checkpoint is untrusted input: every way it can be wrong ends in a CheckpointError that names the file and
# the problem. ``torch.load(weights_only=True)`` builds tensors and plain containers only (no code runs); its
# own allocations are bounded by the file (a zip record must hold exactly the bytes a storage claims; a legacy
# file's storages are read from the file). The sizes the agent is built from are then checked against bounds
# and against each other before any module is allocated, and the weights must be finite floating-point numbers
# of plausible size.

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
# torch.save's legacy (non-zip) format starts with a pickle of this magic number
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# Bounds on the sizes inferred from a checkpoint, far above any published agent (ALE's full action set is 18,
# hidden 256, 1 channel): a file beyond them is corrupt, and the modules it implies are never allocated.
MAX_ACTIONS, MAX_HIDDEN, MAX_CHANNELS = 1024, 4096, 64
# The largest weight of a published agent is 296 (baby-a3c breakout@80); flipping the top exponent bit of a float32
# weight below 2 multiplies it by 2^128 (0.01 -> 3e36), and such an agent's saliency overflows to inf.
MAX_ABS_WEIGHT = 1e6
_FIX = "pass a file written by torch.save(model.state_dict(), path)"


def torch_reason(exc: BaseException) -> str:
    """torch's reason for refusing a file, in one line, without its advice on loading untrusted files."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = re.sub(r"expected %ld got %ld\d*", "the sizes recorded in the file disagree", text)
    unwanted = re.compile(r"weights_only|arbitrary code|trusted source|safe_globals|file an issue|documentation", re.I)
    kept = [
        sentence.rstrip(".")
        for line in text.splitlines()
        for sentence in re.split(r"(?<=[.!?])\s+", line.strip())
        if sentence and not unwanted.search(sentence)
    ]
    reason = ". ".join(kept[:2])[:240]
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _describe_unknown(head: bytes) -> str:
    """What a file that is no torch.save output looks like, for the error message."""
    sample = head[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"it is a text file (it starts with {first!r})"
    return f"it starts with the bytes {sample[:8].hex(' ')}, neither a zip archive nor torch.save's legacy format"


def _check_format(path: str) -> None:
    """Refuse, with the reason, a file that cannot be a ``torch.save``d state dict, before torch parses it."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise CheckpointError(f"{path!r} is not a torch checkpoint: the file is empty (0 bytes); {_FIX}")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:  # truncated: no central directory
            raise CheckpointError(
                f"{path!r} is not a torch checkpoint: a damaged or truncated zip archive ({exc}); {_FIX}"
            ) from exc
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise CheckpointError(
                f"{path!r} is a TorchScript archive (torch.jit.save), not a state dict: save the agent with "
                "torch.save(model.state_dict(), path)"
            )
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(f"{path!r} is not a torch checkpoint: a zip archive without torch.save's data.pkl; {_FIX}")
        return
    if _LEGACY_MAGIC in head[:32]:  # after the pickle's PROTO (and, from protocol 4, FRAME) opcodes
        return
    if head.startswith(b"L" + str(int.from_bytes(_LEGACY_MAGIC[2:], "little")).encode()):
        raise CheckpointError(
            f"{path!r} is a legacy torch.save file pickled with protocol 0 or 1, which torch cannot read safely: "
            "re-save its state dict with torch.save(model.state_dict(), path) and the default protocol"
        )
    if head[257:262] == b"ustar":
        raise CheckpointError(
            f"{path!r} is in torch's pre-1.0 tar format, which cannot be read without running the code it may "
            "contain: re-save its state dict with torch.save(model.state_dict(), path) where you trust it"
        )
    raise CheckpointError(f"{path!r} is not a torch checkpoint: {_describe_unknown(head)}; {_FIX}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file): check the path")
    _check_format(path)
    try:
        with warnings.catch_warnings(record=True) as caught:  # a damaged file also makes torch warn (odd protocol)
            warnings.simplefilter("always")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails in many ways inside torch (Unpickling/Runtime/Assertion...)
        reason = torch_reason(exc)
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path!r} is not a torch checkpoint that loads safely: it holds Python objects other than tensors "
                f"and plain containers ({reason}), refused because loading them could run code, or it is damaged; "
                f"{_FIX}"
            ) from exc
        raise CheckpointError(
            f"{path!r} is not a torch checkpoint that loads safely: the file is damaged or truncated ({reason}); {_FIX}"
        ) from exc
    for w in caught:  # the file loaded: pass torch's warnings on; when it did not, the error says it all
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:  # common wrappers: {"state_dict": {...}, "step": ...}
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict of tensors (names to tensors): "
            "save the agent with torch.save(model.state_dict(), path)"
        )
    # checkpoints saved from nn.DataParallel prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _dims(state_dict: dict[str, torch.Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"{source}: missing tensor {key!r}: not an actor-critic agent of the spec")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{source}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _infer_sizes(state_dict: dict[str, torch.Tensor], source: str) -> tuple[str, int, int, int]:
    """(core, num_actions, hidden_size, channels) from the keys and shapes, each checked against its bounds."""
    cores = [c for c in CORES if f"{c}.weight_ih" in state_dict]
    if len(cores) != 1:
        raise CheckpointError(
            f"{source}: cannot tell the recurrent core: expected exactly one of 'lstm.weight_ih' or 'gru.weight_ih' "
            f"among its keys, found keys {sorted(state_dict)[:12]}{'...' if len(state_dict) > 12 else ''}"
        )
    core = cores[0]
    num_actions = _dims(state_dict, "actor_linear.weight", 2, source)[0]
    hidden_size = _dims(state_dict, f"{core}.weight_hh", 2, source)[1]
    channels = _dims(state_dict, "conv1.weight", 4, source)[1]
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


def check_weights(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Dense, stored (not expanded), floating point, finite and of plausible size, or a CheckpointError listing
    the offenders."""
    for key, t in state_dict.items():
        if t.layout != torch.strided or t.device.type == "meta":
            raise CheckpointError(f"{source}: {key} is a {t.layout} tensor on {t.device}, not dense stored weights")
        if not t.dtype.is_floating_point:
            raise CheckpointError(
                f"{source}: {key} has dtype {t.dtype}; an agent's weights are floating point (float32 as saved by "
                "torch.save(model.state_dict()))"
            )
        stored = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if t.numel() * t.element_size() > stored:
            raise CheckpointError(
                f"{source}: {key} {tuple(t.shape)} has {t.numel()} values but only {stored // t.element_size()} "
                "are stored: an expanded (stride-0) or overlapping view, not trained weights"
            )
    with torch.no_grad():  # one reduction per tensor: NaN propagates through abs and amax
        peaks = {key: float(t.detach().abs().amax()) for key, t in state_dict.items()}
    bad = [
        f"{key} ({state_dict[key].numel() - int(torch.isfinite(state_dict[key].detach()).sum())} of {state_dict[key].numel()})"
        for key, peak in peaks.items()
        if not math.isfinite(peak)
    ]
    if bad:
        raise CheckpointError(
            f"{source}: non-finite (NaN or inf) weights in {', '.join(bad)}: the file is corrupt or the training "
            "diverged; such an agent would give NaN saliency maps"
        )
    huge = [f"{key} (max |w| {peak:.3g})" for key, peak in peaks.items() if peak > MAX_ABS_WEIGHT]
    if huge:
        raise CheckpointError(
            f"{source}: weights far beyond any trained agent's (|w| > {MAX_ABS_WEIGHT:g}) in {', '.join(huge)}: the "
            "file is corrupt (a flipped exponent bit multiplies a weight by 2^128) or not a trained agent"
        )


def build_agent_from_state_dict(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> ActorCritic:
    """Infer the core, actions, hidden size and channels from keys/shapes, build the agent, load the weights.

    Every size is checked (bounds, then each tensor's shape against the architecture they imply) before a
    module is allocated; weights must be dense, floating point, finite and below ``MAX_ABS_WEIGHT``, and the
    agent's outputs on a test frame finite. Anything else is a :class:`CheckpointError` naming ``source`` and the problem.
    """
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{source}: not a state dict (a dict of names to tensors)")
    core, num_actions, hidden_size, channels = _infer_sizes(state_dict, source)
    with torch.device("meta"):  # the architecture's shapes, without allocating anything
        expected = {
            k: tuple(v.shape)
            for k, v in ActorCritic(num_actions, core=core, hidden_size=hidden_size, channels=channels).state_dict().items()
        }
    check_keys_and_shapes(state_dict, expected, source, f"the {core.upper()} actor-critic of the spec")
    check_weights(state_dict, source)
    agent = ActorCritic(num_actions=num_actions, core=core, hidden_size=hidden_size, channels=channels)
    return load_checked(agent, state_dict, source)


def load_checked(module: nn.Module, state_dict: dict, source: str, device=None, dtype=None) -> nn.Module:
    """Load checked weights into a policy module, move it, put it in eval mode and take the finite-output test step
    (:func:`check_finite_outputs`); every failure is a :class:`CheckpointError` naming ``source``."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:  # unreachable after the shape checks, kept so nothing escapes as another type
        raise CheckpointError(f"{source}: the weights do not load into {type(module).__name__} ({torch_reason(exc)})") from exc
    module = module.to(device=device, dtype=dtype).eval()
    check_finite_outputs(module, source)
    return module


def check_keys_and_shapes(state_dict: dict, expected: dict[str, tuple], source: str, architecture: str, hint: str = "",
                          supported: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the keys of ``expected`` (name -> shape,
    e.g. from the architecture built on the ``meta`` device) with those shapes; ``supported`` (what the loader
    supports) is appended to a key error, ``hint`` to a shape error."""
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source}: keys do not match {architecture}: missing {missing or 'none'}, unexpected {extra or 'none'}"
            + (f"; {supported}" if supported else "")
        )
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if tuple(state_dict[k].shape) != shape
    ]
    if wrong:
        raise CheckpointError(f"{source}: tensors of the wrong shape for {architecture}: {'; '.join(wrong)}{hint}")


def check_finite_outputs(policy: "Policy", source: str) -> None:
    """Bounded weights can still compound to an overflow through the layers: one test step on a black and a white
    observation must give finite outputs, else :class:`CheckpointError`."""
    frames = torch.zeros(2, *policy.observation_shape, device=policy.device, dtype=policy.dtype)
    frames[1] = 1.0
    with torch.inference_mode():
        out = policy(frames, policy.initial_state(2), batch_invariant=False)
    if not all(bool(torch.isfinite(t).all()) for t in (out.value, out.logits, *out.state)):
        raise CheckpointError(
            f"{source}: the weights are finite but the agent's outputs on a test frame are not (they overflow): "
            "the file is corrupt or not a trained agent"
        )


def load_agent(
    path: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"
) -> ActorCritic:
    """Load a legacy or zip ``torch.save``d state dict (``weights_only=True``) into an :class:`ActorCritic`.

    The core (LSTM or GRU), number of actions, hidden size and input channels are inferred from the keys and
    shapes, and checked before anything is allocated. Any problem with the file (missing, empty, not a
    checkpoint, damaged, Python objects other than tensors, wrong architecture, non-finite, non-float or
    absurdly large weights) raises :class:`CheckpointError` naming the file and the problem. The agent is returned in eval
    mode on ``device`` (``"auto"`` = CUDA when present) with ``dtype``.
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    agent = build_agent_from_state_dict(read_state_dict(path), source=repr(os.fspath(path)))
    return agent.to(device=device, dtype=dtype).eval()
