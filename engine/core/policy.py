"""The policy interface every part of the engine uses: what a policy is (:class:`Policy`), what one forward pass
returns (:class:`PolicyOutput`), what an agent may declare for exact incremental inference (:class:`ConvTrunk`,
:class:`IncrementalPolicy`) and for delta propagation (:class:`DeltaNetwork`, :class:`DeltaPolicy`), and the helpers
that treat a recurrent state as an opaque tuple.

The recurrent state is always a tuple of batch-first tensors: ``(hx, cx)`` for an LSTM core, ``(hx,)`` for a GRU
core, ``()`` for a feed-forward agent, four tensors for an agent with separate actor and critic LSTMs. Other modules
treat it as an opaque tuple (index it, repeat it, move it) and never ask what produced it. The agents themselves
(the 2017 actor-critic and the adapters of other libraries) live in :mod:`engine.policies`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from .settings import PIPELINES as PIPELINES  # the pipelines an agent can declare (Policy.pipeline)

State = tuple[torch.Tensor, ...]


class PolicyOutput(NamedTuple):
    """One forward pass: ``value`` (N,), ``logits`` (N, actions), ``state`` (the next recurrent state).

    ``logits`` is the action-preference vector the actor map scores: a policy's logits, or a value-based agent's
    Q-values; ``value`` is the critic's state value (``max_a Q`` for a Q-network).
    """

    value: torch.Tensor
    logits: torch.Tensor
    state: State


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

    # Read-only properties, so that an agent may hold these as attributes or compute them as properties.
    @property
    def observation_shape(self) -> tuple[int, int, int]: ...

    @property
    def num_actions(self) -> int: ...

    @property
    def pipeline(self) -> str: ...

    @property
    def frame_stack(self) -> int: ...

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


RecurrentCore = nn.GRUCell | nn.LSTMCell | nn.LSTM


class DeltaNetwork(NamedTuple):
    """What follows a :class:`ConvTrunk`, as :class:`DeltaPolicy` declares it, for delta propagation
    (``engine.core.delta``): the network after the trunk, written as linear maps and pointwise functions.

    Evaluated on the trunk's last activations ``a`` (N, C', H', W') and the state before the step:
    ``h = a.flatten(1)``; ``h = activation(linear(h))`` for each ``(linear, activation)`` of ``body`` in order
    (the body's output ``b``). The actor's branch reads ``b`` (its first ``split`` columns where ``split`` is
    set): with a ``core``, ``h`` is the next hidden state of the cell on that input and the state's hidden (and,
    for an LSTM, cell) tensors ``state[0]`` (``state[1]``), which hold a stacked LSTM's layers side by side,
    ``(N, num_layers * hidden)``; then ``actor_layers`` as the body's, and
    ``logits = actor(h)``. The critic's branch reads the actor's branch after its core (before ``actor_layers``),
    unless ``critic_core`` or ``critic_from_body`` makes it read ``b`` (its columns from ``split`` on where
    ``split`` is set): through ``critic_core`` when given (its state tensors follow the core's: ``state[2]``,
    ``state[3]`` after an LSTM core), then ``critic_layers`` and ``value = critic(h)[:, 0]``; or
    ``value = logits.amax(-1)`` when ``critic`` is None (a Q-network: ``actor`` is its Q head).

    Attributes:
        body: ``((linear, activation), ...)``: ``nn.Linear`` layers, each followed by a pointwise function
            (``None`` for none), called on a fresh tensor it may overwrite.
        core: the recurrent cell (``nn.GRUCell``, ``nn.LSTMCell``, or an ``nn.LSTM`` of any ``num_layers``,
            unidirectional and without projection, run for one step), or None for a feed-forward agent.
        actor: the ``nn.Linear`` head giving the action preferences (logits or Q-values).
        critic: the ``nn.Linear`` value head (one output), or None for a Q-network.
        actor_layers, critic_layers: layers as ``body``'s, between a branch's input (after its core) and its head.
        critic_core: the critic's own cell (as ``core``), on the body's output, or None.
        critic_from_body: the critic's branch reads the body's output, not the actor's core's (implied by
            ``critic_core``).
        split: where set, the body's output holds the actor's input in its first ``split`` columns and the
            critic's in the rest (separate actor and critic networks side by side).
    """

    body: tuple[tuple[nn.Linear, Activation | None], ...]
    core: RecurrentCore | None
    actor: nn.Linear
    critic: nn.Linear | None
    actor_layers: tuple[tuple[nn.Linear, Activation | None], ...] = ()
    critic_layers: tuple[tuple[nn.Linear, Activation | None], ...] = ()
    critic_core: RecurrentCore | None = None
    critic_from_body: bool = False
    split: int | None = None


@runtime_checkable
class DeltaPolicy(IncrementalPolicy, Protocol):
    """Optional: an :class:`IncrementalPolicy` that also declares the rest of its network (:class:`DeltaNetwork`)
    gets delta propagation (``engine.core.delta``): the perturbed copies' differences from their observation run
    through the linear layers alone, in a selectable arithmetic, with the nonlinearities evaluated around the
    observation's own activations.

    Contract: ``policy(obs, state)`` equals the :class:`ConvTrunk` on ``obs * input_scale`` followed by the
    :class:`DeltaNetwork` as described there, up to float rounding.
    """

    def delta_network(self) -> DeltaNetwork:
        """The layers after the trunk (the modules themselves, or layers derived from them on their device and
        dtype: called once per saliency call). An agent whose configuration has no such form raises
        :class:`engine.core.errors.NoDeltaForm` saying why: it runs the exact path
        (``engine.core.delta.delta_unsupported``)."""
        ...


def reset_rows(state: State, done: torch.Tensor) -> State:
    """Zero the rows of every state tensor where ``done`` (N,) is true: the episode-start state of every agent
    whose initial state is zeros (all the libraries' recurrent agents)."""
    if not state:
        return state
    done = done.to(device=state[0].device, dtype=torch.bool)
    return tuple(
        torch.where(done.view(-1, *([1] * (s.ndim - 1))), torch.zeros((), dtype=s.dtype, device=s.device), s)
        for s in state
    )


# --- recurrent-state helpers: the only place that knows a state is a tuple --------------------------------


def index_state(state: State, index: int | slice | torch.Tensor) -> State:
    """Select rows of every tensor of a state (an int, slice, or index tensor)."""
    return tuple(s[index] for s in state)


def state_to(state: State, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
    """Move/cast every tensor of a state."""
    return tuple(s.to(device=device, dtype=dtype) for s in state)


def stack_states(states: list[State]) -> State:
    """A list of per-step states (each a tuple of (1, hidden)) -> one state tuple of (T, hidden)."""
    return tuple(torch.cat(parts, dim=0) for parts in zip(*states))
