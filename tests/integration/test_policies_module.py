"""The module wrapper (engine.policies.module.wrap_policy): a user's own feed-forward or recurrent network becomes a
Policy whose outputs equal the network's own, batch-invariantly; wrong outputs are clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.core.errors import EngineError
from engine.core.policy import Policy, PolicyOutput
from engine.policies.module import ModulePolicy, wrap_policy
from tests.conftest import assert_float32_close, float32_rounding


class MyCNN(nn.Module):
    """The example of docs/own-agent.md: a small CNN on 4 stacked 84x84 frames in [0, 1], returning (logits, value)."""

    def __init__(self, num_actions: int = 6):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(4, 16, 8, stride=4), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 9 * 9, 64), nn.ReLU(),
        )  # fmt: skip
        self.pi, self.v = nn.Linear(64, num_actions), nn.Linear(64, 1)

    def forward(self, obs):
        h = self.body(obs)
        return self.pi(h), self.v(h)


class MyBytesCNN(MyCNN):
    """The same network, written to take the bytes (0..255) and divide by 255 itself."""

    def forward(self, x):
        return super().forward(x / 255.0)


class MyLSTM(nn.Module):
    """A recurrent network on one 84x84 frame, with ``nn.LSTM``'s (layers, N, hidden) state layout."""

    def __init__(self, num_actions: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 8, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 20 * 20, 32))
        self.lstm = nn.LSTM(32, 16)
        self.pi, self.v = nn.Linear(16, num_actions), nn.Linear(16, 1)

    def forward(self, obs, state):
        out, (h, c) = self.lstm(self.body(obs).unsqueeze(0), state)
        return self.pi(out[0]), self.v(out[0]).squeeze(-1), (h, c)


def frames(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, 84, 84), generator=g, dtype=torch.uint8).float() / 255


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return MyCNN().eval()


@pytest.fixture(scope="module")
def lstm():
    torch.manual_seed(1)
    return MyLSTM().eval()


def wrap_lstm(net, **kw):
    zeros = (torch.zeros(1, 1, 16), torch.zeros(1, 1, 16))
    return wrap_policy(net, (1, 84, 84), pipeline="cleanrl_atari", initial_state=zeros, state_batch_dim=1, **kw)


def test_feed_forward_network(cnn):
    policy = wrap_policy(cnn, observation_shape=(4, 84, 84), pipeline="gymnasium_atari")
    assert isinstance(policy, Policy) and isinstance(policy, ModulePolicy)
    assert policy.num_actions == 6 and policy.observation_shape == (4, 84, 84) and policy.frame_stack == 4
    assert policy.device == torch.device("cpu") and policy.dtype == torch.float32
    assert policy.initial_state(5) == () and policy.reset_state((), torch.ones(5, dtype=torch.bool)) == ()
    obs = frames(37, 4)
    with torch.no_grad():
        out = policy(obs, ())
        logits, value = cnn(obs)
    assert out.logits.shape == (37, 6) and out.value.shape == (37,) and out.state == ()
    rounding = float32_rounding(cnn, obs)  # the policy pads the batch: its kernels sum in other orders
    assert_float32_close(out.logits, logits, rounding)
    assert_float32_close(out.value, value.squeeze(-1), rounding)
    with torch.no_grad():  # batch invariance: a row alone equals the same row in a batch, bit for bit
        for row in (0, 36):
            one = policy(obs[row : row + 1], ())
            assert torch.equal(one.logits[0], out.logits[row]) and torch.equal(one.value[0], out.value[row])
    # differentiable, for Jacobian saliency
    x = obs[:2].clone().requires_grad_()
    policy(x, ()).value.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_network_that_divides_by_255_itself(cnn):
    """input_scale=255 hands it the bytes' values; its own /255 gives back the interface's values exactly."""
    bytes_net = MyBytesCNN().eval()
    bytes_net.load_state_dict(cnn.state_dict())
    plain = wrap_policy(cnn, (4, 84, 84), pipeline="cleanrl_atari")
    scaled = wrap_policy(bytes_net, (4, 84, 84), pipeline="cleanrl_atari", input_scale=255)
    obs = frames(9, 4, seed=1)
    with torch.no_grad():
        a, b = plain(obs, ()), scaled(obs, ())
    assert torch.equal(a.logits, b.logits) and torch.equal(a.value, b.value)


def test_q_values_logits_only_and_named_outputs(cnn):
    obs = frames(5, 4, seed=2)
    with torch.no_grad():
        q = cnn(obs)[0]
        qnet = wrap_policy(lambda x: cnn(x)[0], (4, 84, 84), pipeline="sb3_atari", outputs="q_values")
        out = qnet(obs, ())
        torch.testing.assert_close(out.logits, q)
        assert torch.equal(out.value, out.logits.amax(1))
        actor_only = wrap_policy(lambda x: cnn(x)[0], (4, 84, 84), pipeline="sb3_atari", outputs="logits")
        assert not actor_only(obs, ()).value.any()
        named = wrap_policy(lambda x: {"logits": cnn(x)[0], "value": cnn(x)[1]}, (4, 84, 84), pipeline="sb3_atari")
        mapped = wrap_policy(cnn, (4, 84, 84), pipeline="sb3_atari", outputs=lambda out: (out[0], out[1][:, 0]))
        policy_output = wrap_policy(
            lambda x: PolicyOutput(cnn(x)[1].squeeze(1), cnn(x)[0], ()), (4, 84, 84), pipeline="sb3_atari"
        )
        for policy in (named, mapped, policy_output):
            torch.testing.assert_close(policy(obs, ()).logits, q)


def test_jacobian_of_a_logits_only_policy_has_a_zero_critic(cnn):
    """A policy without a critic (outputs="logits": value 0, reached by no input) has zero critic maps, and the
    actor's of the same logits with a critic, by either backend."""
    from engine.core.jacobian import jacobian_saliency

    obs, net = frames(2, 4, seed=4), copy.deepcopy(cnn).double()
    actor_only = wrap_policy(lambda x: net(x)[0], (4, 84, 84), pipeline="sb3_atari", outputs="logits", dtype="float64")
    with_critic = wrap_policy(net, (4, 84, 84), pipeline="sb3_atari", outputs=lambda out: (out[0], out[1][:, 0]))
    reference = jacobian_saliency(with_critic, obs, ())
    assert float(reference.critic.abs().max()) > 0
    for backend in ("autograd", "func"):
        maps = jacobian_saliency(actor_only, obs, (), backend=backend)
        assert not maps.critic.any() and not maps.critic_grad.any(), backend
        assert torch.allclose(maps.actor_grad, reference.actor_grad, rtol=1e-10, atol=1e-14), backend


def test_recurrent_network_sequence_with_reset(lstm):
    """Step by step with episodes ending mid-sequence: equal to running the network by hand, state zeroed at the
    episode starts; states are batch-first at the interface, (1, N, 16) inside."""
    policy = wrap_lstm(lstm)
    assert policy.num_actions == 4 and policy.frame_stack == 1
    envs, steps = 5, 5
    state = policy.initial_state(envs)
    assert [tuple(s.shape) for s in state] == [(envs, 1, 16), (envs, 1, 16)] and not state[0].any()
    g = torch.Generator().manual_seed(3)
    state = tuple(torch.randn(envs, 1, 16, generator=g) for _ in range(2))  # non-zero, every row different
    hand = tuple(s.transpose(0, 1).contiguous() for s in state)
    done = torch.zeros(steps, envs, dtype=torch.bool)
    done[2, 1] = done[3, 0] = True
    with torch.no_grad():
        for t in range(steps):
            obs = frames(envs, 1, seed=10 + t)
            state = policy.reset_state(state, done[t])
            out = policy(obs, state)
            state = out.state
            keep = (~done[t]).float().view(1, -1, 1)
            kept = (hand[0] * keep, hand[1] * keep)
            rounding = float32_rounding(lstm, obs, kept)
            logits, value, hand = lstm(obs, kept)
            assert_float32_close(out.logits, logits, rounding)
            assert_float32_close(out.value, value, rounding)
            assert_float32_close(state[0], hand[0].transpose(0, 1), rounding)
        # batch invariance with a state
        obs = frames(37, 1, seed=20)
        big = tuple(torch.randn(37, 1, 16, generator=g) for _ in range(2))
        batch = policy(obs, big)
        one = policy(obs[7:8], tuple(s[7:8] for s in big))
    assert torch.equal(one.logits[0], batch.logits[7]) and torch.equal(one.state[1][0], batch.state[1][7])


def test_recurrent_callable_with_callable_state_and_reset(lstm):
    """A plain function, a callable initial state and a custom reset (to a learned start state, say)."""
    start = torch.full((1, 16), 0.25)

    def step(obs, state):
        logits, value, (h, c) = lstm(obs, (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        return logits, value, (h[0], c[0])

    def reset(state, done):
        return tuple(torch.where(done[:, None], start, s) for s in state)

    policy = wrap_policy(
        step, (1, 84, 84), pipeline="cleanrl_atari",
        initial_state=lambda n: (start.repeat(n, 1), start.repeat(n, 1)), reset=reset,
    )  # fmt: skip
    state = policy.initial_state(3)
    assert [tuple(s.shape) for s in state] == [(3, 16), (3, 16)] and bool((state[0] == 0.25).all())
    with torch.no_grad():
        state = policy(frames(3, 1), state).state
    state = policy.reset_state(state, torch.tensor([False, True, False]))
    assert bool((state[0][1] == 0.25).all()) and not bool((state[0][0] == 0.25).all())


def _bad_logits(x):
    return torch.zeros(x.shape[0], 7), torch.zeros(x.shape[0])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(fn=_bad_logits, num_actions=6), r"logits of shape \(2, 7\), expected \(2, 6\)"),
        (dict(fn=lambda x: (torch.zeros(x.shape[0], 6), torch.zeros(x.shape[0], 2))), r"value of shape \(2, 2\)"),
        (dict(fn=lambda x: torch.zeros(x.shape[0], 6)), r"returned 1 item\(s\) \[\(2, 6\)\], expected 2"),
        (dict(fn=lambda x: torch.zeros(6), outputs="q_values"), r"Q-values of shape \(6,\), expected \(2, A\)"),
        (dict(fn=lambda x: "left"), "returned a str"),
        (dict(fn=lambda x: {"logits": torch.zeros(2, 6)}), r"without \['value'\]"),
        (dict(fn=lambda x: (torch.zeros(2, 6, dtype=torch.long), torch.zeros(2))), "dtype torch.int64"),
        (dict(fn=3), "must be a torch.nn.Module or a callable"),
        (dict(fn=_bad_logits, pipeline="atari"), "unknown pipeline 'atari'"),
        (dict(fn=_bad_logits, outputs="policy"), "unknown outputs 'policy'"),
        (dict(fn=_bad_logits, reset=lambda s, d: s), "reset was given without initial_state"),
        (dict(fn=_bad_logits, observation_shape=(84, 84)), r"observation_shape must be \(C, H, W\)"),
    ],
)
def test_wrong_outputs_and_arguments_are_clear_errors(kwargs, expected):
    kwargs = {"observation_shape": (4, 84, 84), "pipeline": "gymnasium_atari", **kwargs}
    with pytest.raises(EngineError, match=expected):
        wrap_policy(kwargs.pop("fn"), **kwargs)


def test_recurrent_errors(lstm):
    with pytest.raises(EngineError, match=r"returned 2 item\(s\).*expected 3 .*recurrent"):
        wrap_lstm(lambda obs, state: lstm(obs, state)[:2])
    with pytest.raises(EngineError, match=r"next state of shapes \[\(1, 1, 16\), \(1, 1, 16\)\], expected 2 tensor"):
        wrap_lstm(lambda obs, state: (*lstm(obs, state)[:2], tuple(s[:, :1] for s in lstm(obs, state)[2])))
    with pytest.raises(EngineError, match=r"initial_state tensors of shapes \[\(1, 3, 16\)\]"):
        wrap_policy(
            lstm, (1, 84, 84), pipeline="cleanrl_atari", initial_state=(torch.zeros(1, 3, 16),), state_batch_dim=1
        )
    policy = wrap_lstm(lstm)
    with pytest.raises(EngineError, match=r"observations of shape \(2, 4, 84, 84\), expected \(N, \*\(1, 84, 84\)\)"):
        policy(torch.zeros(2, 4, 84, 84), policy.initial_state(2))


def test_networks_with_non_finite_outputs_are_refused():
    """NaN weights, or a network that overflows on a white frame only: refused with the loaders' message."""
    torch.manual_seed(0)
    broken = MyCNN()
    with torch.no_grad():
        broken.pi.weight[2, 5] = float("nan")
    with pytest.raises(
        EngineError,
        match=r"outputs on a test observation \(a black and a white frame\) are not "
        r"finite: NaN or inf in the logits.*parameters pi.weight hold NaN or inf",
    ):
        wrap_policy(broken, observation_shape=(4, 84, 84), pipeline="gymnasium_atari")

    def log_of_darkness(obs):
        darkness = 1 - obs.mean(dim=(1, 2, 3))
        return torch.stack([darkness.log(), darkness], dim=1), darkness

    with pytest.raises(EngineError, match=r"are not finite: NaN or inf in the logits \(the network computes them\)"):
        wrap_policy(log_of_darkness, observation_shape=(1, 8, 8), pipeline="gymnasium_atari")


def test_module_on_another_dtype_is_not_moved_silently(cnn):
    with pytest.raises(EngineError, match=r"move it first"):
        wrap_policy(cnn, (4, 84, 84), pipeline="gymnasium_atari", dtype="float64")
    net64 = MyCNN().double().eval()
    assert wrap_policy(net64, (4, 84, 84), pipeline="gymnasium_atari").dtype == torch.float64


def test_wrapped_networks_run_through_the_engines_saliency(cnn, lstm):
    from engine.core.jacobian import jacobian_saliency
    from engine.core.perturbation import perturbation_saliency

    for policy, channels in ((wrap_policy(cnn, (4, 84, 84), pipeline="gymnasium_atari"), 4), (wrap_lstm(lstm), 1)):
        obs = frames(2, channels, seed=30)
        state = policy.initial_state(2)
        assert perturbation_saliency(policy, obs, state, density=10).actor.shape == (2, 84, 84)
        assert jacobian_saliency(policy, obs, state).critic.shape == (2, 84, 84)


class DropoutCNN(MyCNN):
    """MyCNN with dropout before its heads: random outputs in training mode."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, obs):
        h = self.drop(self.body(obs))
        return self.pi(h), self.v(h)


class BatchNormCNN(MyCNN):
    """MyCNN with batch norm on its features: each row normalised by the batch's statistics in training mode."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(64)

    def forward(self, obs):
        h = self.norm(self.body(obs))
        return self.pi(h), self.v(h)


def test_a_network_put_back_in_training_mode_is_refused_on_every_call():
    """wrap_policy puts a module in eval mode once; net.train() after it made every map random without a word."""
    torch.manual_seed(0)
    net = DropoutCNN()
    policy = wrap_policy(net, (4, 84, 84), pipeline="cleanrl_atari")
    policy(frames(2, 4))
    net.train()
    with pytest.raises(EngineError, match=r"in training mode \(net.train\(\) after wrap_policy\).*call net.eval\(\)"):
        policy(frames(2, 4))
    net.drop.eval(), net.body.eval(), net.pi.eval(), net.v.eval()
    with pytest.raises(EngineError, match="in training mode"):  # the top module's flag still set
        policy(frames(2, 4))
    net.eval()
    policy(frames(2, 4))


@pytest.mark.parametrize(
    "network,problem",
    [
        (DropoutCNN, "gives other outputs when called again on the same observations"),
        (BatchNormCNN, "gives an observation other outputs alone than beside another one"),
    ],
)
def test_a_callable_around_a_network_in_training_mode_is_refused(network, problem):
    """A lambda around a module hides the module from wrap_policy, which cannot put it in eval mode: its random or
    batch-dependent outputs are found by calling it again, and alone."""
    torch.manual_seed(0)
    net = network().train()
    with pytest.raises(EngineError, match=rf"wrap_policy\(<lambda>\): the network {problem}.*call .eval\(\)"):
        wrap_policy(lambda obs: net(obs), (4, 84, 84), pipeline="cleanrl_atari")
    net.eval()
    wrap_policy(lambda obs: net(obs), (4, 84, 84), pipeline="cleanrl_atari")


def test_a_forward_autograd_cannot_follow_is_refused_by_the_jacobian(cnn):
    """A forward under torch.no_grad() (or one that detaches its input) gave Jacobian maps of exactly 0."""
    from engine.core.jacobian import jacobian_saliency

    def frozen(obs):
        with torch.no_grad():
            return cnn(obs)

    policy = wrap_policy(frozen, (4, 84, 84), pipeline="cleanrl_atari")
    for backend in ("autograd", "func"):
        with pytest.raises(EngineError, match="do not depend on its input through autograd"):
            jacobian_saliency(policy, frames(2, 4), (), backend=backend)
    assert (
        float(jacobian_saliency(wrap_policy(cnn, (4, 84, 84), pipeline="cleanrl_atari"), frames(2, 4), ()).actor.max())
        > 0
    )


class NaNOnGreys(MyCNN):
    """Finite on a black and a white frame, NaN where one pixel is grey: what the load-time check cannot see."""

    def forward(self, obs):
        logits, value = super().forward(obs)
        grey = ((obs[:, 0, 40, 40] > 0.01) & (obs[:, 0, 40, 40] < 0.99))[:, None]
        return torch.where(grey, float("nan"), logits), value


def test_maps_of_outputs_that_turn_nan_on_some_copies_are_refused():
    """NaN outputs on some perturbed copies spread NaN over the maps (perturbation, occlusion, RISE) or read as no
    effect (SARFA), without a word; each method now names the frames."""
    from engine.core.occlusion import occlusion_sensitivity
    from engine.core.perturbation import perturbation_saliency
    from engine.core.rise import rise_saliency
    from engine.core.sarfa import sarfa_saliency

    torch.manual_seed(0)
    policy = wrap_policy(NaNOnGreys(), (4, 84, 84), pipeline="cleanrl_atari")
    obs = torch.zeros(3, 4, 84, 84)
    obs[1] = 1.0  # black, white: the blur and occlusion copies stay finite (RISE's soft masks grey the white frame)
    obs[2, :, 30:50, 30:50] = 0.5
    actions = torch.zeros(3, dtype=torch.long)
    calls = {
        "perturbation": lambda: perturbation_saliency(policy, obs, (), density=20),
        "occlusion": lambda: occlusion_sensitivity(policy, obs, (), window=21, stride=21, actions=actions),
        "RISE": lambda: rise_saliency(policy, obs, (), num_masks=8, actions=actions),
        "SARFA": lambda: sarfa_saliency(policy, obs, (), density=20),
    }
    for method, call in calls.items():
        with pytest.raises(
            ValueError, match=rf"^{method}: the agent.s outputs were NaN or inf .* of frame\(s\) (1, )?2 \("
        ):
            call()
    perturbation_saliency(policy, obs[:2], (), density=20)  # finite everywhere: no refusal


class _HandWritten:
    """A Policy written by hand (no wrap_policy), whose forward returns what ``give`` makes of (logits, value)."""

    observation_shape, num_actions, pipeline, frame_stack = (1, 84, 84), 4, "gymnasium_atari", 1
    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, give):
        self.give = give

    def __call__(self, obs, state):
        x = obs[:, 0, :5, :5].mean(dim=(1, 2))
        return self.give(torch.stack([x, -x, 2 * x, 3 * x], dim=1), x)

    def initial_state(self, batch=1):
        return ()

    def reset_state(self, state, done):
        return state


@pytest.mark.parametrize(
    "give,error,message",
    [
        (lambda logits, value: PolicyOutput(logits, value, ()), ValueError, r"these two look swapped"),
        (lambda logits, value: (value, logits, ()), TypeError, r"returned a tuple: a Policy returns .*PolicyOutput"),
        (lambda logits, value: PolicyOutput(value, logits[:, :3], ()), ValueError, r"\(num_actions is 4\)"),
        (lambda logits, value: PolicyOutput(value[:, None], logits, ()), ValueError, r"a value of shape \(\d+, 1\)"),
    ],
    ids=["swapped", "tuple", "too few logits", "value (N, 1)"],
)
def test_a_hand_written_policy_that_breaks_the_protocol_is_named_by_every_method(give, error, message):
    """The Jacobian swapped the actor and critic maps of a PolicyOutput built (logits, value, state) without a word,
    the 2017 method failed deep inside with an IndexError, and a tuple gave an AttributeError."""
    from engine.core.jacobian import jacobian_saliency
    from engine.core.perturbation import perturbation_saliency
    from engine.core.rise import rise_saliency
    from engine.env.rollout import rollout

    agent = _HandWritten(give)
    obs = torch.rand(2, 1, 84, 84)
    for call in (
        lambda: jacobian_saliency(agent, obs, ()),
        lambda: perturbation_saliency(agent, obs, (), density=20),
        lambda: rise_saliency(agent, obs, (), num_masks=4, cell=21, response="value"),
        lambda: rollout(agent, "BreakoutNoFrameskip-v4", 2),
    ):
        with pytest.raises(error, match=message):
            call()


def test_the_networks_own_error_on_the_test_call_names_the_arguments_that_shape_it(lstm):
    """Forgetting state_batch_dim=1 for nn.LSTM, or giving (H, W, C), surfaced PyTorch's error alone."""
    zeros = (torch.zeros(1, 1, 16), torch.zeros(1, 1, 16))
    with pytest.raises(
        EngineError,
        match=r"wrap_policy\(MyLSTM\): the test call fn\(obs of shape \(2, 1, 84, 84\), state of shapes "
        r"\[\(2, 1, 16\), \(2, 1, 16\)\]\) failed: RuntimeError: .*; check observation_shape \(C, H, W\), "
        r"initial_state and state_batch_dim against what the network takes",
    ):
        wrap_policy(lstm, (1, 84, 84), pipeline="cleanrl_atari", initial_state=zeros)  # state_batch_dim=1 forgotten
    with pytest.raises(
        EngineError, match=r"fn\(obs of shape \(2, 84, 84, 4\)\) failed: RuntimeError: .*check observation_shape"
    ):
        wrap_policy(MyCNN().eval(), (84, 84, 4), pipeline="cleanrl_atari")


def test_states_given_one_per_frame_are_named():
    """A list of per-frame (h, c) tuples ended in torch's 'only one element tensors can be converted'."""
    from engine.core.inputs import prepare_states

    class Recurrent:
        observation_shape, num_actions, pipeline, frame_stack = (1, 84, 84), 4, "gymnasium_atari", 1
        device, dtype = torch.device("cpu"), torch.float32

        def initial_state(self, batch=1):
            return torch.zeros(batch, 16), torch.zeros(batch, 16)

    per_frame = [(torch.zeros(1, 16), torch.zeros(1, 16)) for _ in range(2)]
    with pytest.raises(ValueError, match=r"states holds tuples: .*not one state per frame; .*stack_states"):
        prepare_states(Recurrent(), per_frame, 2)
