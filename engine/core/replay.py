"""Replaying observations through a recurrent agent to recover the state it used on each of them: the one replay
that the metrics, the scoring of stores and the jobs share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, cast, overload

import numpy as np
import torch

from .batching import pad_rows
from .errors import EngineError
from .inputs import Observations, StatesLike, prepare_observations, prepare_states
from .policy import Policy, PolicyOutput, State

Dones = np.ndarray | torch.Tensor | Sequence[bool] | None


class _FeaturePolicy(Protocol):
    """The split that the engine's own agents and its adapters expose: convolutions, then the recurrent part."""

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput: ...


@overload
def replay_states(
    agent: Policy,
    observations: Observations,
    dones: Dones = ...,
    state: StatesLike = ...,
    with_next: Literal[False] = ...,
) -> State: ...


@overload
def replay_states(
    agent: Policy, observations: Observations, dones: Dones = ..., state: StatesLike = ..., *, with_next: Literal[True]
) -> tuple[State, State]: ...


@overload
def replay_states(
    agent: Policy, observations: Observations, dones: Dones = ..., state: StatesLike = ..., with_next: bool = ...
) -> State | tuple[State, State]: ...


def replay_states(
    agent: Policy, observations: Observations, dones: Dones = None, state: StatesLike = None, with_next: bool = False
) -> State | tuple[State, State]:
    """The recurrent state ``agent`` uses on each of ``observations`` when it sees them in order.

    Starts from ``state`` (default: the episode-start state) and resets after each ``dones[t]``. Returns a tuple
    of (N, ...) tensors (``()`` for a feed-forward agent); with ``with_next``, also the state after the last one
    (to continue with the next chunk). ``observations`` are in any form :func:`engine.core.inputs.prepare_observations`
    accepts (the recorded uint8 bytes, or floats in [0, 1]).

    Bit-identical to playing (batch-invariant kernels), so replaying the recording agent reproduces its recorded
    states. Recurrence is sequential, so this steps frame by frame; agents that expose ``features`` /
    ``from_features`` (the engine's own and its adapters) run their convolutions batched and only the recurrent
    part step by step.
    """
    x = prepare_observations(agent, observations)
    n = x.shape[0]
    current = agent.initial_state(1) if state is None else prepare_states(agent, state, 1)
    if not current:
        return ((), ()) if with_next else ()
    ends = torch.zeros(n, dtype=torch.bool) if dones is None else torch.as_tensor(dones).to(torch.bool).flatten()
    if ends.shape[0] != n:
        raise EngineError(f"dones must be (N,) = ({n},), one per observation, got {tuple(ends.shape)}")
    ends = ends.to(x.device)
    used: list[State] = []
    with torch.inference_mode():
        split = hasattr(agent, "features") and hasattr(agent, "from_features")
        staged = cast(_FeaturePolicy, agent)
        features = staged.features(pad_rows(x))[:n] if split else None
        for t in range(n):
            used.append(current)
            if split:
                assert features is not None  # computed above whenever split
                out = staged.from_features(pad_rows(features[t : t + 1]), tuple(pad_rows(s) for s in current), 1)
            else:
                out = agent(x[t : t + 1], current)
            current = agent.reset_state(out.state, ends[t : t + 1])
    stacked = tuple(torch.cat(parts) for parts in zip(*used))
    return (stacked, current) if with_next else stacked
