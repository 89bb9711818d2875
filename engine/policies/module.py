"""Any ``torch.nn.Module`` or callable behind the policy interface, in a few lines.

Feed-forward network returning ``(logits, value)``, trained on 4 stacked 84x84 frames of gymnasium's
``AtariPreprocessing``::

    from engine.policies.module import wrap_policy

    net = MyCNN()
    net.load_state_dict(torch.load("my_cnn.pt", weights_only=True))
    policy = wrap_policy(net, observation_shape=(4, 84, 84), pipeline="gymnasium_atari")

``net(obs)`` gets float observations ``(N, C, H, W)`` in [0, 1] (the bytes / 255). A network that divides the
bytes by 255 itself is wrapped with ``input_scale=255`` (it then gets the bytes' values as floats, and its own
division brings them back to [0, 1]: exactly for every byte ``b`` in float32 and float64, ``(b / 255) * 255 / 255
== b / 255``, and to float rounding for perturbed values). A Q-network: ``outputs="q_values"``. A recurrent network: give its episode-start state and it is
called as ``net(obs, state)`` and must return the next state last::

    policy = wrap_policy(
        net, observation_shape=(1, 84, 84), pipeline="cleanrl_atari",
        initial_state=(torch.zeros(1, 128), torch.zeros(1, 128)),  # one row of (h, c); repeated per batch row
    )

State tensors are batch-first at the interface; ``state_batch_dim=1`` wraps a network whose state is laid out as
``nn.LSTM``'s ``(layers, N, hidden)``. Anything else the network returns is mapped with ``outputs=callable``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from ..core.batching import pad_rows
from ..core.device import resolve_device, resolve_dtype
from ..core.errors import EngineError
from ..core.policy import PIPELINES, Policy, PolicyOutput, State
from .checkpoint import check_finite_outputs

OUTPUTS = ("actor_critic", "q_values", "logits")
_OUTPUTS_DOC = (
    "'actor_critic': (logits (N, A), value (N,) or (N, 1)); 'q_values': Q (N, A), value max_a Q; 'logits': "
    "logits (N, A) only, value 0 (critic maps are then zero); recurrent networks return the next state last, "
    "e.g. (logits, value, state); or a PolicyOutput, or a mapping with 'logits', 'value' (and 'state'); or pass "
    "outputs=callable mapping the network's return value to (logits, value[, state])"
)


class ModulePolicy:
    """A network or callable made a :class:`engine.core.policy.Policy`; build it with :func:`wrap_policy`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        observation_shape: tuple[int, int, int],
        num_actions: int | None,
        *,
        pipeline: str,
        frame_stack: int,
        outputs: str | Callable[[Any], Sequence[Any]],
        initial_state: Callable[[int], Sequence[torch.Tensor]] | Sequence[torch.Tensor] | None,
        reset: Callable[[Sequence[torch.Tensor], torch.Tensor], Sequence[torch.Tensor]] | None,
        state_batch_dim: int,
        input_scale: float,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.fn = fn
        self.observation_shape = observation_shape
        self.num_actions = num_actions
        self.pipeline = pipeline
        self.frame_stack = frame_stack
        self.outputs = outputs
        self.recurrent = initial_state is not None
        self._initial_state = initial_state
        self._reset = reset
        self.state_batch_dim = state_batch_dim
        self.input_scale = input_scale
        self._device, self._dtype = device, dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    # --- state layout: batch-first at the interface, the network's own layout inside -----------------------------

    def _to_interface(self, state: Sequence[torch.Tensor]) -> State:
        if self.state_batch_dim == 0:
            return tuple(state)
        return tuple(s.movedim(self.state_batch_dim, 0).contiguous() for s in state)

    def _to_network(self, state: State) -> tuple[torch.Tensor, ...]:
        if self.state_batch_dim == 0:
            return tuple(state)
        return tuple(s.movedim(0, self.state_batch_dim).contiguous() for s in state)

    def initial_state(self, batch: int = 1) -> State:
        """The episode-start state for ``batch`` rows (``()`` for a feed-forward network)."""
        if not self.recurrent:
            return ()
        if callable(self._initial_state):
            state = _as_state(self._initial_state(batch), "initial_state(batch)")
            state = self._to_interface(state)
            bad = [tuple(s.shape) for s in state if s.ndim == 0 or s.shape[0] != batch]
            if bad:
                raise EngineError(
                    f"initial_state({batch}) returned tensors of shapes {bad}: each needs {batch} rows along "
                    f"dim {self.state_batch_dim} (state_batch_dim)"
                )
            return tuple(s.to(device=self.device, dtype=self.dtype) for s in state)
        assert self._initial_state is not None  # recurrent
        template = self._to_interface(self._initial_state)
        return tuple(s.to(device=self.device, dtype=self.dtype).expand(batch, *s.shape[1:]).clone() for s in template)

    def reset_state(self, state: State, done: torch.Tensor) -> State:
        """``state`` with the rows where ``done`` (N,) is true set to the episode-start state (or ``reset``'s)."""
        if not state:
            return state
        done = done.to(device=state[0].device, dtype=torch.bool).reshape(-1)
        if self._reset is not None:
            out = _as_state(self._reset(self._to_network(state), done), "reset(state, done)")
            return self._to_interface(out)
        start = self.initial_state(state[0].shape[0])
        return tuple(
            torch.where(done.view(-1, *([1] * (s.ndim - 1))), s0.to(s.dtype), s) for s, s0 in zip(state, start)
        )

    # --- one step ------------------------------------------------------------------------------------------------

    def __call__(self, obs: torch.Tensor, state: State = (), batch_invariant: bool = True) -> PolicyOutput:
        """obs: (N, C, H, W) in [0, 1]; state: the state before the observations (batch-first tensors).

        With ``batch_invariant`` (the default) rows are padded as in ``engine.core.batching`` before the network
        sees them, so a row's outputs do not depend on the rest of the batch (for a network that treats rows
        independently, as any network in eval mode does).
        """
        n = obs.shape[0]
        if isinstance(self.fn, nn.Module) and any(m.training for m in self.fn.modules()):
            raise EngineError(
                "the wrapped network is in training mode (net.train() after wrap_policy): dropout or batch "
                "statistics would make its maps random and its rows depend on each other; call net.eval() first"
            )
        if tuple(obs.shape[1:]) != self.observation_shape:
            raise EngineError(
                f"observations of shape {tuple(obs.shape)}, expected (N, *{self.observation_shape}) for this policy"
            )
        if batch_invariant:
            obs, state = pad_rows(obs), tuple(pad_rows(s) for s in state)
        x = obs * self.input_scale if self.input_scale != 1 else obs
        raw = self.fn(x, self._to_network(state)) if self.recurrent else self.fn(x)
        logits, value, next_state = self._parse(raw, obs.shape[0], len(state))
        return PolicyOutput(value[:n], logits[:n], tuple(s[:n] for s in next_state))

    def _parse(self, raw: Any, rows: int, state_len: int) -> tuple[torch.Tensor, torch.Tensor, State]:
        """The network's return value -> (logits (rows, A), value (rows,), next state), checked."""
        what = "the network" if not callable(self.outputs) else "outputs(...)"
        if callable(self.outputs):
            raw = self.outputs(raw)
        kind = "actor_critic" if callable(self.outputs) else self.outputs
        if isinstance(raw, PolicyOutput):
            parts = [raw.logits, raw.value] + ([tuple(raw.state)] if self.recurrent else [])
            kind = "actor_critic"
        elif isinstance(raw, Mapping):
            missing = [k for k in ("logits", "value") + (("state",) if self.recurrent else ()) if k not in raw]
            if missing:
                raise EngineError(f"{what} returned a mapping without {missing}; expected {_OUTPUTS_DOC}")
            parts = [raw["logits"], raw["value"]] + ([raw["state"]] if self.recurrent else [])
            kind = "actor_critic"
        elif isinstance(raw, torch.Tensor):
            parts = [raw]
        elif isinstance(raw, (tuple, list)):
            parts = list(raw)
        else:
            raise EngineError(f"{what} returned a {type(raw).__name__}; expected {_OUTPUTS_DOC}")
        heads = 2 if kind == "actor_critic" else 1
        expected = heads + (1 if self.recurrent else 0)
        if len(parts) != expected:
            shapes = [tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__ for p in parts]
            raise EngineError(
                f"{what} returned {len(parts)} item(s) {shapes}, expected {expected} for outputs={kind!r}"
                f"{' of a recurrent policy (next state last)' if self.recurrent else ''}: {_OUTPUTS_DOC}"
            )
        logits = parts[0]
        if self.num_actions is None and isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[1] >= 1:
            self.num_actions = int(logits.shape[1])  # inferred by wrap_policy's first call
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (rows, self.num_actions):
            found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            name = "Q-values" if kind == "q_values" else "logits"
            acts = self.num_actions if self.num_actions is not None else "A"
            raise EngineError(
                f"{what} returned {name} of shape {found}, expected ({rows}, {acts}) for {rows} "
                f"observations and {acts} actions"
            )
        if kind == "actor_critic":
            value = parts[1]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) not in ((rows,), (rows, 1)):
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise EngineError(f"{what} returned a value of shape {found}, expected ({rows},) or ({rows}, 1)")
            value = value.reshape(rows)
        elif kind == "q_values":
            value = logits.amax(dim=-1)
        else:
            value = logits.new_zeros(rows)
        next_state: State = ()
        if self.recurrent:
            next_state = self._to_interface(_as_state(parts[-1], f"the next state {what} returned"))
            if len(next_state) != state_len or any(s.ndim == 0 or s.shape[0] != rows for s in next_state):
                raise EngineError(
                    f"{what} returned a next state of shapes {[tuple(s.shape) for s in self._to_network(next_state)]}"
                    f", expected {state_len} tensor(s) with {rows} rows along dim {self.state_batch_dim} "
                    "(state_batch_dim), like the state it was given"
                )
        for name, t in (("logits", logits), ("value", value), *(("state", s) for s in next_state)):
            if not t.dtype.is_floating_point:
                raise EngineError(f"{what} returned {name} of dtype {t.dtype}; expected floating point")
        return logits, value, next_state

    def __repr__(self) -> str:
        return (
            f"ModulePolicy({getattr(self.fn, '__name__', type(self.fn).__name__)}, observation_shape="
            f"{self.observation_shape}, num_actions={self.num_actions}, outputs={self.outputs!r}, "
            f"recurrent={self.recurrent}, pipeline={self.pipeline!r}, input_scale={self.input_scale})"
        )


def _as_state(state: Any, what: str) -> tuple[torch.Tensor, ...]:
    if isinstance(state, torch.Tensor):
        return (state,)
    if isinstance(state, (tuple, list)) and all(isinstance(s, torch.Tensor) for s in state):
        return tuple(state)
    raise EngineError(f"{what} is a {type(state).__name__}; a recurrent state is a tuple of tensors")


def wrap_policy(
    fn: Callable[..., Any],
    observation_shape: Sequence[int],
    num_actions: int | None = None,
    *,
    pipeline: str,
    outputs: str | Callable[[Any], Sequence[Any]] = "actor_critic",
    initial_state: Callable[[int], Sequence[torch.Tensor]] | Sequence[torch.Tensor] | torch.Tensor | None = None,
    reset: Callable[[Sequence[torch.Tensor], torch.Tensor], Sequence[torch.Tensor]] | None = None,
    state_batch_dim: int = 0,
    frame_stack: int | None = None,
    input_scale: float = 1.0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> ModulePolicy:
    """Wrap a ``torch.nn.Module`` or any callable as a policy the whole engine can explain.

    Args:
        fn: called as ``fn(obs)`` (feed-forward) or ``fn(obs, state)`` (when ``initial_state`` is given), with
            ``obs`` float ``(N, *observation_shape)`` in [0, 1] (times ``input_scale``). It must treat rows
            independently (a module is put in eval mode) and be differentiable for Jacobian saliency.
        observation_shape: ``(C, H, W)`` of one observation, e.g. ``(4, 84, 84)`` for 4 stacked frames.
        num_actions: size of the action-preference vector; by default inferred from the first call.
        pipeline: the environment pipeline the network was trained with, one of
            ``engine.core.policy.PIPELINES`` (``"gymnasium_atari"``, ``"sb3_atari"``, ``"cleanrl_atari"``,
            ``"greydanus2017"``): rollouts make the same observation bytes.
        outputs: what ``fn`` returns: ``"actor_critic"`` (``(logits, value)``), ``"q_values"`` (Q; the value is
            ``max_a Q``), ``"logits"`` (no critic: value 0), each followed by the next state for a recurrent
            network; or a callable mapping ``fn``'s return value to ``(logits, value[, state])``.
        initial_state: the episode-start state, which makes the policy recurrent: a tuple of tensors with one
            row (repeated per batch row), or a callable ``batch -> tuple of tensors``.
        reset: ``reset(state, done) -> state``, rows where ``done`` (N,) is true back to an episode start; by
            default those rows become the ``initial_state`` rows.
        state_batch_dim: the batch dimension of ``fn``'s state tensors (and of ``initial_state`` and ``reset``'s
            tensors): 0 (batch-first, the interface's layout) or 1 (``nn.LSTM``/``nn.GRU``'s ``(layers, N, H)``).
        frame_stack: frames stacked along C by the pipeline (default: C, grayscale frames).
        input_scale: ``fn`` gets ``obs * input_scale``: 1 for a network that takes [0, 1], 255 for one that
            divides the bytes by 255 itself.
        device, dtype: where and in what it computes; default: those of a module's first parameter (else the
            CPU, float32). A module is not moved: move it first (``net.to(device, dtype)``).

    Returns:
        A :class:`ModulePolicy`. One call on a black and a white observation has checked ``fn``'s outputs: their
        shapes, the state, and that they are finite, as every loader checks its agents' (a wrong shape, NaN or inf
        is an :class:`engine.core.errors.EngineError`); every later call checks the shapes again.
    """
    if not callable(fn):
        raise EngineError(f"fn must be a torch.nn.Module or a callable, got a {type(fn).__name__}")
    shape = tuple(int(s) for s in observation_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise EngineError(f"observation_shape must be (C, H, W) with positive sizes, got {tuple(observation_shape)}")
    if pipeline not in PIPELINES:
        raise EngineError(f"unknown pipeline {pipeline!r}: use one of {PIPELINES}")
    if not callable(outputs) and outputs not in OUTPUTS:
        raise EngineError(f"unknown outputs {outputs!r}: use one of {OUTPUTS} or a callable")
    if state_batch_dim not in (0, 1):
        raise EngineError(f"state_batch_dim must be 0 (batch-first) or 1 ((layers, N, hidden)), got {state_batch_dim}")
    if not (isinstance(input_scale, (int, float)) and input_scale > 0):
        raise EngineError(f"input_scale must be a positive number (1 or 255), got {input_scale!r}")
    if num_actions is not None and not (isinstance(num_actions, int) and num_actions >= 1):
        raise EngineError(f"num_actions must be a positive int (or None: inferred), got {num_actions!r}")
    if frame_stack is None:
        frame_stack = shape[0]
    if not (isinstance(frame_stack, int) and frame_stack >= 1 and shape[0] % frame_stack == 0):
        raise EngineError(f"frame_stack must be a positive divisor of C = {shape[0]}, got {frame_stack!r}")
    if reset is not None and initial_state is None:
        raise EngineError("reset was given without initial_state: a feed-forward policy has no state to reset")
    if isinstance(initial_state, torch.Tensor):
        initial_state = (initial_state,)
    if initial_state is not None and not callable(initial_state):
        initial_state = _as_state(initial_state, "initial_state")
        bad = [tuple(s.shape) for s in initial_state if s.ndim <= state_batch_dim or s.shape[state_batch_dim] != 1]
        if bad:
            raise EngineError(
                f"initial_state tensors of shapes {bad}: give one row (size 1 along dim {state_batch_dim}, "
                "state_batch_dim), repeated for each batch row, or a callable batch -> tuple of tensors"
            )
    param = next(iter(fn.parameters()), None) if isinstance(fn, nn.Module) else None
    if device is not None:
        resolved_device = resolve_device(device)
    else:
        resolved_device = param.device if param is not None else torch.device("cpu")
    if dtype is not None:
        resolved_dtype = resolve_dtype(dtype)
    else:
        resolved_dtype = param.dtype if param is not None else torch.float32
    if param is not None and (param.device != resolved_device or param.dtype != resolved_dtype):
        raise EngineError(
            f"the module's parameters are {param.dtype} on {param.device}, but device={resolved_device} and "
            f"dtype={resolved_dtype} were asked for: move it first (net.to({str(resolved_device)!r}, "
            f"{resolved_dtype}))"
        )
    if isinstance(fn, nn.Module):
        fn.eval()  # dropout or batch statistics would make maps random and rows depend on each other
    policy = ModulePolicy(
        fn,
        shape,
        num_actions,
        pipeline=pipeline,
        frame_stack=frame_stack,
        outputs=outputs,
        initial_state=initial_state,
        reset=reset,
        state_batch_dim=state_batch_dim,
        input_scale=float(input_scale),
        device=resolved_device,
        dtype=resolved_dtype,
    )
    # one call on a black and a white observation checks the outputs (and infers num_actions) now, not deep
    # inside a run: shapes, and finite values (a NaN weight would make every map NaN)
    name = getattr(fn, "__name__", type(fn).__name__)
    # a Policy but for num_actions, which this first call infers when it was not given
    try:
        out = check_finite_outputs(cast(Policy, policy), f"wrap_policy({name})", error=EngineError)
    except EngineError:
        raise
    except Exception as exc:  # the network's own error: say which call failed and which arguments shape it
        state = ""
        if policy.recurrent:
            try:
                state = f", state of shapes {[tuple(t.shape) for t in policy._to_network(policy.initial_state(2))]}"
            except Exception:  # the initial state itself failed
                state = ", its initial state"
        raise EngineError(
            f"wrap_policy({name}): the test call fn(obs of shape (2, {', '.join(map(str, shape))}){state}) failed: "
            f"{type(exc).__name__}: {exc}; check observation_shape (C, H, W)"
            + (", initial_state and state_batch_dim" if policy.recurrent else "")
            + " against what the network takes"
        ) from exc
    check_deterministic(policy, out, f"wrap_policy({name})")
    if policy.recurrent:
        with torch.no_grad():
            policy.reset_state(out.state, torch.tensor([True, False]))
    return policy


def check_deterministic(policy: ModulePolicy, out: PolicyOutput, source: str) -> None:
    """Refuse a network whose outputs on the test observations (a black and a white frame, ``out``) change when it
    is called again, or when the white frame is passed alone: a module in training mode inside a callable (dropout
    draws anew, batch norm normalises by the batch) would make every map random."""
    frames = torch.zeros(2, *policy.observation_shape, device=policy.device, dtype=policy.dtype)
    frames[1] = 1.0
    with torch.no_grad():
        again = policy(frames, policy.initial_state(2), batch_invariant=False)
        alone = policy(frames[1:], policy.initial_state(1))  # padded, as the engine calls it
    scale = max(float(out.logits.abs().max()), float(out.value.abs().max()), 1.0)
    if not (torch.equal(again.logits, out.logits) and torch.equal(again.value, out.value)):
        problem = "gives other outputs when called again on the same observations"
    elif max(float((alone.logits - out.logits[1:]).abs().max()), float((alone.value - out.value[1:]).abs().max())) > (
        max(1e-3, 8 * torch.finfo(policy.dtype).eps) * scale  # kernels chosen by batch size round otherwise
    ):
        problem = "gives an observation other outputs alone than beside another one"
    else:
        return
    raise EngineError(
        f"{source}: the network {problem}; a module in training mode (dropout, batch norm) inside it would do "
        "that, and would make its maps random: call .eval() on it, or make its rows independent"
    )


__all__ = ["OUTPUTS", "ModulePolicy", "wrap_policy"]
