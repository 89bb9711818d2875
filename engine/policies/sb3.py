"""Stable-Baselines3 and sb3-contrib networks rebuilt in plain torch, with SB3's module layout and weights, behind the
policy interface (:class:`engine.core.policy.Policy`); :mod:`engine.policies.sb3_zip` reads the zip ``model.save``
writes and builds them:

- PPO / A2C (and TRPO, which shares the policy) with ``CnnPolicy``: NatureCNN (shared, or separate actor and
  critic extractors, as SB3 >= 1.7 saves them with ``share_features_extractor=False``), the ``mlp_extractor``
  layers of any ``net_arch`` (SB3 1.x's shared layers too), ``action_net`` and ``value_net``. Logits are
  ``action_net``'s output (the network's output layer, as for the 2017 agents; their log-softmax is SB3's
  ``policy.get_distribution(obs).distribution.logits``), the value is ``predict_values``.
- RecurrentPPO with ``CnnLstmPolicy``: the NatureCNN, then the actor's LSTM and, by default
  (``enable_critic_lstm=True``), the critic's own LSTM; ``shared_lstm=True`` (the critic reads the actor's LSTM)
  and ``enable_critic_lstm=False`` (the critic is a linear layer on the features) are supported too. The
  recurrent state at the interface is ``(h_pi, c_pi, h_vf, c_vf)`` (critic LSTM) or ``(h_pi, c_pi)``, each of
  shape ``(N, n_lstm_layers * hidden)`` (batch-first; SB3 keeps ``(n_lstm_layers, N, hidden)``); an episode
  start zeroes it, as SB3's ``episode_starts`` does.
- DQN and QRDQN with ``CnnPolicy``: the online network (``q_net`` / ``quantile_net``; the target network is
  ignored). Logits are the Q-values (QRDQN: the mean over quantiles, as its ``predict`` uses), the value is
  ``max_a Q``.

Observations at the interface are in [0, 1] (bytes / 255), which is what SB3's NatureCNN sees after its own
division, so the rebuilt network skips that division and its outputs equal SB3's to float rounding. (An agent
saved with ``normalize_images=False`` saw raw bytes: its first convolution's weights are multiplied by 255.)
The convolutional trunk is exposed for exact incremental inference as in the other adapters (``convs``,
``conv_activations``, ``features``, ``from_features``); separate actor and critic extractors are fused into one
grouped trunk (see :class:`SB3Policy`). The layers after it are declared for delta propagation
(``delta_network``, ``precision="fast"``), LSTMs of any ``n_lstm_layers`` among them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ..core.batching import pad_rows
from ..core.errors import MissingDependencyError, NoDeltaForm
from ..core.policy import Activation, ConvTrunk, DeltaNetwork, PolicyOutput, State, reset_rows

PIPELINE = "sb3_atari"
# NatureCNN (stable_baselines3.common.torch_layers): 8x8/4, 4x4/2, 3x3/1 convolutions with ReLUs, then a
# linear layer with a ReLU. (out channels, kernel, stride) of each convolution.
NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))


def nature_flat_size(height: int, width: int) -> int:
    """NatureCNN's flattened feature count on a (height, width) observation (0 if it is too small)."""
    for _, kernel, stride in NATURE_CONVS:
        height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        if height < 1 or width < 1:
            return 0
    return NATURE_CONVS[-1][0] * height * width


def _mlp(dims: list[int], activation: type[nn.Module] | None, final_activation: bool) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ...`` with an activation after each (after the last only if
    ``final_activation``): SB3's ``MlpExtractor`` (all) and ``create_mlp`` (not the last) layouts."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if final_activation or i < len(dims) - 2:
            assert activation is not None  # the loaders pass one whenever a layer takes it
            layers.append(activation())
    return nn.Sequential(*layers)


Layers = tuple[tuple[nn.Linear, Activation | None], ...]


def _linear_pairs(sequential: nn.Sequential) -> Layers:
    """``_mlp``'s layers as ``((linear, activation or None), ...)``, for :class:`DeltaNetwork`."""
    pairs: list[tuple[nn.Linear, Activation | None]] = []
    for module in sequential:
        if isinstance(module, nn.Linear):
            pairs.append((module, None))
        else:
            pairs[-1] = (pairs[-1][0], module)
    return tuple(pairs)


def _derived_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` and ``bias`` (derived from an agent's layers, on their device and dtype)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.requires_grad_(False)


class SB3Policy(nn.Module):
    """What every rebuilt SB3 network shares: the interface attributes, the convolutional trunk, padding for
    batch invariance.

    The trunk is NatureCNN's three ReLU convolutions (8x8/4, 4x4/2, 3x3/1, no padding) without SB3's division by
    255 (observations here are already in [0, 1]). When the actor and the critic have separate NatureCNNs
    (``share_features_extractor=False``) the trunk holds both, fused: the first convolution has both sets of
    filters (64 outputs), the other two are grouped (``groups=2``), so channels 0..63 of its output are the
    actor's and 64..127 the critic's; one pass computes both exactly as SB3's two extractors do.

    Attributes (beyond the :class:`~engine.core.policy.Policy` ones): ``algorithm`` (``"PPO"``, ``"A2C"``,
    ``"TRPO"``, ``"DQN"``, ``"QRDQN"``, ``"RecurrentPPO"``), ``value_based`` (logits are Q-values),
    ``state_widths`` (width of each recurrent state tensor), ``sb3_version`` (as written in the zip, or
    ``None``), ``summary`` (one line describing what was loaded).
    """

    pipeline = PIPELINE
    value_based = False
    # each subclass defines it: the network after the trunk, on the flattened features
    from_features: Callable[[torch.Tensor, State, int | None], PolicyOutput]

    def __init__(self, observation_shape: tuple[int, int, int], num_actions: int, towers: int):
        super().__init__()
        self.observation_shape = cast(tuple[int, int, int], tuple(int(v) for v in observation_shape))
        self.num_actions = int(num_actions)
        # SB3's Atari pipeline stacks grayscale frames along C (VecFrameStack, then VecTransposeImage)
        self.frame_stack = self.observation_shape[0]
        self.algorithm, self.summary = "", ""
        self.sb3_version: str | None = None
        self.state_widths: tuple[int, ...] = ()
        previous, layers = self.observation_shape[0], []
        for index, (out, kernel, stride) in enumerate(NATURE_CONVS):
            layers.append(nn.Conv2d(previous, out * towers, kernel, stride=stride, groups=1 if index == 0 else towers))
            previous = out * towers
        self.trunk = nn.ModuleList(layers)
        self.towers = towers
        self.flat = nature_flat_size(*self.observation_shape[1:])

    @property
    def device(self) -> torch.device:
        return cast(nn.Conv2d, self.trunk[0]).weight.device

    @property
    def dtype(self) -> torch.dtype:
        return cast(nn.Conv2d, self.trunk[0]).weight.dtype

    def initial_state(self, batch: int = 1) -> State:
        """Zeros, as SB3 starts an episode (``()`` for a feed-forward agent)."""
        p = cast(nn.Conv2d, self.trunk[0]).weight
        return tuple(p.new_zeros(batch, width) for width in self.state_widths)

    def reset_state(self, state: State, done: torch.Tensor) -> State:
        """Zero the rows where ``done``: SB3's ``episode_starts`` handling (``(1 - episode_start) * state``)."""
        return reset_rows(state, done)

    # --- the convolutional trunk, for exact incremental inference (see engine.core.incremental) -----------------
    # The input scale sits outside the convolutions: obs = bytes / 255 enters the first convolution directly.

    @property
    def convs(self) -> tuple[nn.Conv2d, ...]:
        """The trunk's convolutions (8x8 stride 4, 4x4 stride 2, 3x3 stride 1, no padding; grouped when the actor
        and critic extractors are separate), each followed by ReLU."""
        return cast(tuple[nn.Conv2d, ...], tuple(self.trunk))

    def conv_activations(self, x: torch.Tensor, start: int = 0, stop: int = 3) -> torch.Tensor:
        """Apply ``ReLU(conv)`` layers ``start..stop-1`` (0-based) of the trunk."""
        for conv in self.trunk[start:stop]:
            x = torch.relu(conv(x))
        return x

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) observations in [0, 1] -> (N, flat * towers) flattened convolutional features (the
        actor's first, then the critic's when they are separate)."""
        return self.conv_activations(obs).flatten(1)

    def conv_trunk(self) -> ConvTrunk:
        """The declaration of :class:`engine.core.policy.IncrementalPolicy`: the three ReLU convolutions (grouped
        when the actor and critic extractors are separate)."""
        return ConvTrunk(tuple((conv, torch.relu) for conv in self.convs))

    def from_trunk(self, activations: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        """The rest of the network on the last convolution's activations."""
        return self.from_features(activations.flatten(1), state, n)

    def forward(self, obs: torch.Tensor, state: State = (), batch_invariant: bool = True) -> PolicyOutput:
        """One step on ``obs`` (N, C, H, W) in [0, 1] with the recurrent ``state`` before it (``()`` for a
        feed-forward agent).

        With ``batch_invariant`` (the default) rows are padded as in ``engine.core.batching``, so a row's outputs
        are bit-for-bit the same whatever else is in the batch.
        """
        if obs.ndim != 4 or tuple(obs.shape[1:]) != self.observation_shape:
            raise ValueError(
                f"expected observations of shape (N, {', '.join(map(str, self.observation_shape))}), got {tuple(obs.shape)}"
            )
        if len(state) != len(self.state_widths):
            raise ValueError(f"expected a state of {len(self.state_widths)} tensors, got {len(state)}")
        n = obs.shape[0]
        if batch_invariant:
            obs, state = pad_rows(obs), tuple(pad_rows(s) for s in state)
        return self.from_features(self.features(obs), tuple(state), n)

    def extra_repr(self) -> str:
        return (
            f"algorithm={self.algorithm!r}, observation_shape={self.observation_shape}, num_actions={self.num_actions}"
        )


class SB3ActorCritic(SB3Policy):
    """PPO / A2C / TRPO ``ActorCriticCnnPolicy`` and RecurrentPPO ``RecurrentActorCriticCnnPolicy``.

    ``lstm``: ``None`` (feed-forward), or ``(hidden, layers, critic)`` with ``critic`` one of ``"lstm"`` (its own
    LSTM, sb3-contrib's default), ``"shared"`` (``shared_lstm=True``) or ``"linear"``
    (``enable_critic_lstm=False``). The recurrent state is ``(h_pi, c_pi[, h_vf, c_vf])``, each
    (N, layers * hidden): SB3's (layers, N, hidden) tensors with the batch first and the layers side by side.
    """

    def __init__(
        self,
        observation_shape,
        num_actions,
        *,
        features: int,
        separate_vf: bool,
        shared: list[int],
        pi: list[int],
        vf: list[int],
        activation: type[nn.Module] | None,
        lstm: tuple[int, int, str] | None = None,
    ):
        super().__init__(observation_shape, num_actions, towers=2 if separate_vf else 1)
        self.pi_linear = nn.Linear(self.flat, features)
        self.vf_linear = nn.Linear(self.flat, features) if separate_vf else None
        self.lstm_mode = None if lstm is None else lstm[2]
        latent = features
        if lstm is not None:
            hidden, layers, critic = lstm
            self.lstm_hidden, self.lstm_layers = hidden, layers
            self.lstm_actor = nn.LSTM(features, hidden, num_layers=layers)
            self.lstm_critic = nn.LSTM(features, hidden, num_layers=layers) if critic == "lstm" else None
            self.critic = nn.Linear(features, hidden) if critic == "linear" else None
            self.state_widths = (layers * hidden,) * (4 if critic == "lstm" else 2)
            latent = hidden
        self.shared_net = _mlp([latent, *shared], activation, True)
        top = shared[-1] if shared else latent
        self.policy_net = _mlp([top, *pi], activation, True)
        self.value_net_mlp = _mlp([top, *vf], activation, True)
        self.action_net = nn.Linear(pi[-1] if pi else top, num_actions)
        self.value_net = nn.Linear(vf[-1] if vf else top, 1)

    def _lstm(self, lstm: nn.LSTM, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One step of an ``nn.LSTM`` as sb3-contrib runs it (sequence length 1), with batch-first flat states."""
        n, layers, hidden = h.shape[0], self.lstm_layers, self.lstm_hidden
        inside = [s.reshape(n, layers, hidden).transpose(0, 1).contiguous() for s in (h, c)]
        out, (h2, c2) = lstm(features.unsqueeze(0), (inside[0], inside[1]))
        return out[0], h2.transpose(0, 1).reshape(n, -1), c2.transpose(0, 1).reshape(n, -1)

    # --- sb3-contrib's RNNStates <-> the engine's state tuple -------------------------------------------------------

    def state_from_rnn_states(self, rnn_states: Any) -> State:
        """sb3-contrib's ``RNNStates`` (``pi=(h, c)``, ``vf=(h, c)``, each (layers, n_envs, hidden), as
        ``RecurrentPPO.predict`` returns and takes them) -> this agent's state tuple ``(h_pi, c_pi[, h_vf, c_vf])``,
        each (n_envs, layers * hidden): what :func:`engine.perturbation_saliency` and ``engine.rollout`` use."""
        if self.lstm_mode is None:
            raise ValueError(f"this {self.algorithm} agent is feed-forward: its state is (), it has no RNNStates")
        parts = (*rnn_states.pi, *rnn_states.vf) if self.lstm_mode == "lstm" else tuple(rnn_states.pi)
        want = (self.lstm_layers, self.lstm_hidden)
        flat = []
        for t in parts:
            t = torch.as_tensor(t)
            if t.dim() != 3 or (t.shape[0], t.shape[2]) != want:
                raise ValueError(
                    f"RNNStates tensors must be (layers={want[0]}, n_envs, hidden={want[1]}) for this agent, got "
                    f"{tuple(t.shape)}"
                )
            flat.append(t.transpose(0, 1).reshape(t.shape[1], -1).to(device=self.device, dtype=self.dtype))
        return tuple(flat)

    def rnn_states_from_state(self, state: State) -> Any:
        """The inverse of :meth:`state_from_rnn_states`: sb3-contrib's ``RNNStates`` (``vf`` is ``pi`` where the
        critic has no LSTM of its own, as sb3-contrib holds them; needs sb3-contrib)."""
        if self.lstm_mode is None:
            raise ValueError(f"this {self.algorithm} agent is feed-forward: its state is (), it has no RNNStates")
        try:
            from sb3_contrib.common.recurrent.type_aliases import RNNStates
        except ImportError as exc:
            raise MissingDependencyError(
                f"RNNStates come from sb3-contrib, which is not installed ({exc}): pip install 'atari-saliency-engine[sb3]'"
            ) from None
        if len(state) != len(self.state_widths):
            raise ValueError(f"this agent's state holds {len(self.state_widths)} tensors, got {len(state)}")
        layers, hidden = self.lstm_layers, self.lstm_hidden
        inside = tuple(s.reshape(s.shape[0], layers, hidden).transpose(0, 1).contiguous() for s in state)
        pi = inside[:2]
        return RNNStates(pi=pi, vf=inside[2:] if self.lstm_mode == "lstm" else pi)

    def delta_network(self) -> DeltaNetwork:
        """For delta propagation (:class:`engine.core.policy.DeltaPolicy`): NatureCNN's linear layer, the LSTM(s),
        the ``mlp_extractor`` layers and the heads, in every critic mode (its own LSTM, the actor's, or a linear
        layer on the features). Separate actor and critic extractors become one block-diagonal linear layer whose
        output holds both feature vectors side by side (``split``; its product costs twice theirs). An LSTM of
        several layers (``n_lstm_layers`` > 1) is the ``nn.LSTM`` itself: its state tensors already hold the layers
        side by side, as delta propagation reads them."""
        shared = _linear_pairs(self.shared_net)
        split = None
        if self.vf_linear is None:
            body: Layers = ((self.pi_linear, torch.relu),)
            if self.lstm_mode is None:  # the shared layers on the one feature vector (SB3 1.x, feed-forward)
                body, shared = body + shared, ()
        else:  # relu([W_pi 0; 0 W_vf] [f_pi; f_vf] + [b_pi; b_vf]) = [pi_features; vf_features]
            fused = _derived_linear(
                torch.block_diag(self.pi_linear.weight, self.vf_linear.weight),
                torch.cat([self.pi_linear.bias, self.vf_linear.bias]),
            )
            body, split = ((fused, torch.relu),), self.pi_linear.out_features
            if self.lstm_mode == "shared":  # the loader refuses it: the critic would read the actor's features
                raise NoDeltaForm("separate extractors with a shared LSTM")
        critic_layers = shared + _linear_pairs(self.value_net_mlp)
        if self.lstm_mode == "linear":
            assert self.critic is not None  # built for this mode
            critic_layers = ((self.critic, None),) + critic_layers
        return DeltaNetwork(
            body=body,
            core=None if self.lstm_mode is None else self.lstm_actor,
            actor=self.action_net,
            critic=self.value_net,
            actor_layers=shared + _linear_pairs(self.policy_net),
            critic_layers=critic_layers,
            critic_core=self.lstm_critic if self.lstm_mode == "lstm" else None,
            critic_from_body=self.lstm_mode == "linear" or split is not None,
            split=split,
        )

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        pi_features = torch.relu(self.pi_linear(features[:, : self.flat]))
        vf_features = pi_features if self.vf_linear is None else torch.relu(self.vf_linear(features[:, self.flat :]))
        next_state: State = ()
        if self.lstm_mode is None:
            latent_pi, latent_vf = pi_features, vf_features
        else:
            latent_pi, h, c = self._lstm(self.lstm_actor, pi_features, state[0], state[1])
            next_state = (h, c)
            if self.lstm_mode == "lstm":
                assert self.lstm_critic is not None  # built for this mode
                latent_vf, h, c = self._lstm(self.lstm_critic, vf_features, state[2], state[3])
                next_state += (h, c)
            elif self.lstm_mode == "shared":
                latent_vf = latent_pi
            else:
                assert self.critic is not None  # built for the remaining mode, "linear"
                latent_vf = self.critic(vf_features)
        if len(self.shared_net):  # SB3 1.x's shared MLP layers (feed-forward policies only)
            latent_pi, latent_vf = self.shared_net(latent_pi), self.shared_net(latent_vf)
        logits = self.action_net(self.policy_net(latent_pi))
        value = self.value_net(self.value_net_mlp(latent_vf)).squeeze(-1)
        return PolicyOutput(value[:n], logits[:n], tuple(s[:n] for s in next_state))


class SB3QNetwork(SB3Policy):
    """DQN's ``QNetwork`` and QRDQN's ``QuantileNetwork``: NatureCNN, then ``create_mlp`` layers. Logits are the
    Q-values (QRDQN: the mean of the quantiles, as its ``predict`` takes it), the value their maximum."""

    value_based = True

    def __init__(
        self,
        observation_shape,
        num_actions,
        *,
        features: int,
        hidden: list[int],
        activation: type[nn.Module] | None,
        quantiles: int | None = None,
    ):
        super().__init__(observation_shape, num_actions, towers=1)
        self.linear = nn.Linear(self.flat, features)
        self.quantiles = quantiles
        self.q_net = _mlp([features, *hidden, num_actions * (quantiles or 1)], activation, False)

    def delta_network(self) -> DeltaNetwork:
        """For delta propagation (:class:`engine.core.policy.DeltaPolicy`): NatureCNN's linear layer, the hidden
        layers and the Q head; QRDQN's mean over quantiles is linear, so its head is one derived layer (the
        quantile layer's weights and biases averaged over the quantiles)."""
        layers = _linear_pairs(self.q_net)
        head = layers[-1][0]
        if self.quantiles is not None:
            k, a = self.quantiles, self.num_actions
            head = _derived_linear(
                head.weight.view(k, a, -1).mean(dim=0), cast(torch.Tensor, head.bias).view(k, a).mean(dim=0)
            )
        return DeltaNetwork(body=((self.linear, torch.relu), *layers[:-1]), core=None, actor=head, critic=None)

    def from_features(self, features: torch.Tensor, state: State, n: int | None = None) -> PolicyOutput:
        q = self.q_net(torch.relu(self.linear(features)))
        if self.quantiles is not None:
            q = q.view(-1, self.quantiles, self.num_actions).mean(dim=1)
        q = q[:n]
        return PolicyOutput(q.amax(dim=-1), q, ())
