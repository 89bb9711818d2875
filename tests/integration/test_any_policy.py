"""The saliency core on any policy and observation (spec: perturbation-saliency-any-agent.md): a Nature-CNN agent on
4 stacked 84x84 frames (feed-forward, and with an LSTM core), against the loop reference and a plain autograd loop.

The agents are small seeded networks implementing engine.core.policy.Policy directly, so these tests check the
core, not an adapter; the adapters have their own tests against their libraries."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from engine.core.batching import pad_rows
from engine.core.blur import gaussian_blur
from engine.core.jacobian import action_jacobian, jacobian_saliency
from engine.core.masks import perturb, perturbation_masks
from engine.core.perturbation import perturbation_saliency
from engine.core.policy import ConvTrunk, IncrementalPolicy, Policy, PolicyOutput, reset_rows
from engine.core.reference import saliency_np
from engine.core.saliency import SaliencyConfig, compute_saliency


class NatureAgent(nn.Module):
    """CleanRL's ppo_atari network (Nature CNN, 4x84x84), optionally with an LSTM(512, 128) core."""

    pipeline, frame_stack = "cleanrl_atari", 4

    def __init__(self, recurrent: bool = False, channels: int = 4, num_actions: int = 6):
        super().__init__()
        self.observation_shape, self.num_actions = (channels, 84, 84), num_actions
        self.network = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
        )
        self.lstm = nn.LSTMCell(512, 128) if recurrent else None
        width = 128 if recurrent else 512
        self.actor, self.critic = nn.Linear(width, num_actions), nn.Linear(width, 1)

    @property
    def device(self):
        return self.actor.weight.device

    @property
    def dtype(self):
        return self.actor.weight.dtype

    def initial_state(self, batch: int = 1):
        if self.lstm is None:
            return ()
        return tuple(self.actor.weight.new_zeros(batch, 128) for _ in range(2))

    def reset_state(self, state, done):
        return reset_rows(state, done)

    def forward(self, obs, state, batch_invariant: bool = True):
        n = obs.shape[0]
        if batch_invariant:
            obs, state = pad_rows(obs), tuple(pad_rows(s) for s in state)
        return self.from_trunk(self.network[:6](obs), state, n)

    # the declaration of engine.core.policy.IncrementalPolicy: exact incremental inference
    def conv_trunk(self):
        return ConvTrunk(tuple((self.network[i], self.network[i + 1]) for i in (0, 2, 4)))

    def from_trunk(self, activations, state, n=None):
        hidden = self.network[6:](activations)
        if self.lstm is not None:
            state = self.lstm(hidden, state)
            hidden = state[0]
        return PolicyOutput(self.critic(hidden)[:n, 0], self.actor(hidden)[:n], tuple(s[:n] for s in state))


@pytest.fixture(scope="module", params=["feedforward", "lstm"])
def case(request):
    """(float32 agent, float64 copy, uint8 observations (5, 4, 84, 84), states used on each, actions)."""
    torch.manual_seed(3)
    agent = NatureAgent(recurrent=request.param == "lstm").eval()
    rng = np.random.default_rng(0)
    # smooth random "frames" (blurred noise), the 4 channels of a stack differing slightly
    base = rng.integers(0, 256, (5, 1, 21, 21)).repeat(4, axis=2).repeat(4, axis=3)
    obs = np.clip(base + rng.integers(-20, 21, (5, 4, 84, 84)), 0, 255).astype(np.uint8)
    if agent.lstm is None:
        states = ()
    else:
        states = tuple(torch.randn(5, 128, generator=torch.Generator().manual_seed(i)) * 0.5 for i in range(2))
    actions = torch.tensor([0, 5, 2, 3, 1])
    return agent, copy.deepcopy(agent).double(), obs, states, actions


def test_nature_agent_is_a_policy(case):
    assert isinstance(case[0], Policy)


@pytest.mark.parametrize("score", ["logit_l2", "action_logprob"])
@pytest.mark.parametrize("interp", ["occlude", "searchlight"])
def test_scores_equal_the_loop_reference_in_float64(case, score, interp):
    _, agent64, obs, states, actions = case
    t = 2
    state = tuple(s[t : t + 1].double() for s in states)
    got = perturbation_saliency(
        agent64, obs[t : t + 1], state, density=12, interp=interp, score=score, actions=actions[t : t + 1]
    )
    ref = saliency_np(agent64, obs[t], state, density=12, interp=interp, score=score, action=int(actions[t]))
    assert got.actor_scores.shape == (1, 7, 7) and got.actor.shape == (1, 84, 84)  # range(0, 84, 12): 7 centers
    for key in ("actor_scores", "critic_scores", "actor", "critic"):
        want = ref[key]
        assert np.abs(want).max() > 1e-8, key
        err = np.abs(getattr(got, key)[0].numpy() - want).max() / np.abs(want).max()
        assert err <= 1e-9, (key, err)


def float32_logit_rounding(agent, agent64, obs: np.ndarray, density: int) -> float:
    """The largest difference between the float32 and float64 logits of the observations and all their perturbed
    copies: the rounding of one float32 forward pass with this CPU's kernels, measured on the inputs the test uses."""
    x = torch.from_numpy(obs).double() / 255
    masks = perturbation_masks(5, density, dtype=torch.float64, size=tuple(x.shape[2:]))
    perturbed = perturb(x[:, None], gaussian_blur(x, 3.0)[:, None], masks[None, :, None], "occlude").flatten(0, 1)
    inputs = torch.cat([x, perturbed])
    with torch.no_grad():
        return float((agent(inputs.float(), ()).logits.double() - agent64(inputs, ()).logits).abs().max())


def test_float32_maps_are_close_to_the_loop_reference(case):
    """The bound comes from the computation, not from one CPU: each logit of a float32 pass is off by at most
    ``delta`` (measured above on these inputs with this machine's kernels), so the difference ``d = L - l`` of two
    passes is off by ``e <= 2 sqrt(K) delta`` in norm and the score ``0.5 |d|^2`` by ``|d| e + e^2 / 2``; the engine
    and the loop reference each round their own passes (twice that), and their kernels sum in other orders than
    the measurement's (twice again)."""
    agent, agent64, obs, states, _ = case
    if states:
        pytest.skip(
            "the seeded LSTM agent barely responds to a perturbation (scores ~1e-8, below float32's "
            "resolution of its logits); the float64 test checks it exactly"
        )
    got = perturbation_saliency(agent, obs[:2], (), density=7)
    e = 2 * np.sqrt(agent.num_actions) * float32_logit_rounding(agent, agent64, obs[:2], density=7)
    for t in range(2):
        ref = saliency_np(agent, obs[t], (), density=7)["actor_scores"]
        bound = 2 * 2 * (np.sqrt(2 * ref) * e + e * e / 2)
        assert bound.max() < 1e-3 * ref.max(), "the bound would not catch a wrong map"
        error = np.abs(got.actor_scores[t].double().numpy() - ref)
        assert (error <= bound).all(), float((error / bound).max())


def test_grid_on_84x84_at_density_5_has_17x17_centers(case):
    agent, _, obs, states, _ = case
    got = perturbation_saliency(agent, obs[:1], tuple(s[:1] for s in states), density=5)
    assert got.actor_scores.shape == (1, 17, 17) and got.centers.tolist() == list(range(0, 84, 5))
    assert float(got.actor_scores.max()) > 0 and float(got.critic_scores.max()) > 0


def test_perturbations_per_pass_and_frames_together_never_change_maps(case):
    agent, _, obs, states, actions = case
    full = perturbation_saliency(agent, obs, states, density=12, score="action_logprob", actions=actions)
    assert float(full.actor_scores.max()) > 0
    for per_eval in (1, 7, 1000):
        part = perturbation_saliency(
            agent, obs, states, density=12, perturbations_per_eval=per_eval, score="action_logprob", actions=actions
        )
        assert torch.equal(part.actor_scores, full.actor_scores) and torch.equal(part.critic_scores, full.critic_scores)
    for t in range(len(obs)):
        alone = perturbation_saliency(
            agent,
            obs[t : t + 1],
            tuple(s[t : t + 1] for s in states),
            density=12,
            score="action_logprob",
            actions=actions[t : t + 1],
        )
        assert torch.equal(alone.actor_scores[0], full.actor_scores[t])


def test_uint8_and_scaled_observations_give_the_same_maps(case):
    agent, _, obs, states, _ = case
    a = perturbation_saliency(agent, obs[:2], tuple(s[:2] for s in states), density=20)
    b = perturbation_saliency(agent, torch.from_numpy(obs[:2]).float() / 255, tuple(s[:2] for s in states), density=20)
    assert torch.equal(a.actor, b.actor)


def test_one_mask_on_every_channel(case):
    """A perturbation that only touched some channels would leave the agent's response to the others out:
    an agent that reads only the last frame of the stack must still get a non-zero map from it."""
    agent, _, obs, states, _ = case
    last_only = copy.deepcopy(agent)
    with torch.no_grad():
        last_only.network[0].weight[:, :3] = 0
    maps = perturbation_saliency(last_only, obs[:1], tuple(s[:1] for s in states), density=12)
    assert float(maps.actor_scores.max()) > 0
    first_only = copy.deepcopy(agent)
    with torch.no_grad():
        first_only.network[0].weight[:, 1:] = 0
    assert not torch.equal(
        perturbation_saliency(first_only, obs[:1], tuple(s[:1] for s in states), density=12).actor_scores,
        maps.actor_scores,
    )


def test_jacobians_equal_a_plain_autograd_loop(case):
    _, agent64, obs, states, _ = case
    states64 = tuple(s.double() for s in states)
    got = jacobian_saliency(agent64, obs, states64)
    x = torch.from_numpy(obs).double() / 255
    for t in range(len(obs)):
        leaf = x[t : t + 1].clone().requires_grad_(True)
        out = agent64(leaf, tuple(s[t : t + 1] for s in states64), batch_invariant=False)
        (grad,) = torch.autograd.grad(out.value.sum(), leaf)
        assert torch.allclose(got.critic_grad[t], grad[0], rtol=0, atol=1e-12 * float(grad.abs().max()))
    assert got.actor.shape == (5, 84, 84) and got.actor_grad.shape == (5, 4, 84, 84)
    assert torch.equal(got.critic, got.critic_grad.square().sum(1))
    func = jacobian_saliency(agent64, obs, states64, backend="func")
    assert torch.allclose(func.actor_grad, got.actor_grad, rtol=1e-10, atol=1e-14)
    assert action_jacobian(agent64, obs[:2], tuple(s[:2] for s in states64)).shape == (2, 6, 4, 84, 84)


def test_compute_saliency_with_the_action_logprob_score(case):
    agent, _, obs, states, actions = case
    maps = compute_saliency(
        agent,
        obs,
        states,
        SaliencyConfig(method="both", density=20, score="action_logprob", frames_per_batch=2),
        actions=actions,
    )
    alone = perturbation_saliency(agent, obs, states, density=20, score="action_logprob", actions=actions)
    assert torch.equal(maps["actor_scores"], alone.actor_scores) and maps["jacobian_actor"].shape == (5, 84, 84)


def test_clear_errors_for_this_kind_of_agent(case):
    agent, _, obs, states, _ = case
    with pytest.raises(ValueError, match="compat='paper' reproduces the 2017 upsampling of 80x80 maps"):
        perturbation_saliency(agent, obs[:1], tuple(s[:1] for s in states), compat="paper")
    with pytest.raises(ValueError, match="score='action_logprob' needs the action taken on each frame"):
        perturbation_saliency(agent, obs[:1], tuple(s[:1] for s in states), score="action_logprob")
    with pytest.raises(ValueError, match=r"actions must lie in 0..5"):
        perturbation_saliency(agent, obs[:1], tuple(s[:1] for s in states), score="action_logprob", actions=[9])
    with pytest.raises(ValueError, match=r"raw ALE frames \(1, 210, 160, 3\) were given"):
        perturbation_saliency(agent, np.zeros((1, 210, 160, 3), np.uint8), tuple(s[:1] for s in states))
    with pytest.raises(ValueError, match=r"observations must have shape \(N, 4, 84, 84\)"):
        perturbation_saliency(agent, obs[:1, :3], tuple(s[:1] for s in states))
    with pytest.raises(ValueError, match=r"density must be in 1..84"):
        perturbation_saliency(agent, obs[:1], tuple(s[:1] for s in states), density=85)
    if not states:
        with pytest.raises(ValueError, match=r"a feed-forward agent takes the empty state \(\), got 1"):
            perturbation_saliency(agent, obs[:1], (torch.zeros(1, 128),))


# --- exact incremental inference on the Nature CNN (8x8/4, 4x4/2, 3x3/1 on 4x84x84) ----------------------------


@pytest.mark.parametrize("radius,density", [(3, 5), (5, 5), (2.5, 7)])
@pytest.mark.parametrize("interp", ["occlude", "searchlight"])
def test_incremental_equals_the_plain_pass(case, interp, radius, density):
    agent, agent64, obs, states, _ = case
    assert isinstance(agent, IncrementalPolicy)
    for model, tolerance in ((agent, 1e-6), (agent64, 1e-12)):
        state = tuple(s[:2].to(model.dtype) for s in states)
        options = dict(radius=radius, density=density, interp=interp)
        plain = perturbation_saliency(model, obs[:2], state, incremental=False, **options)
        windows = perturbation_saliency(model, obs[:2], state, incremental=True, **options)
        for key in ("actor_scores", "critic_scores"):
            want, got = getattr(plain, key), getattr(windows, key)
            assert float(want.abs().max()) > 0, key
            err = float((got - want).abs().max() / want.abs().max())
            assert err <= tolerance, (model.dtype, key, err)


def test_incremental_chunking_is_bit_identical(case):
    agent, _, obs, states, _ = case
    state = tuple(s[:2] for s in states)
    full = perturbation_saliency(
        agent, obs[:2], state, radius=3, density=7, incremental=True, perturbations_per_eval=10**6
    )
    for chunk in (1, 7):
        part = perturbation_saliency(
            agent, obs[:2], state, radius=3, density=7, incremental=True, perturbations_per_eval=chunk
        )
        assert torch.equal(part.actor_scores, full.actor_scores) and torch.equal(part.critic_scores, full.critic_scores)


@pytest.mark.parametrize("radius,density", [(3, 5), (5, 5), (2.5, 7)])
def test_incremental_windows_hold_every_changed_activation(case, radius, density):
    from engine.core.incremental import _structures, conv_trunk_of, trunk_geometry, window_plan
    from engine.core.masks import perturbation_masks
    from tests.integration.test_incremental import assert_changes_lie_in_windows

    agent, _, obs, _, _ = case
    if agent.lstm is not None:
        pytest.skip("the trunk is the same as the feed-forward agent's")
    masks = perturbation_masks(radius, density, size=(84, 84))
    geometry = trunk_geometry(agent, conv_trunk_of(agent))
    x = torch.from_numpy(obs[:1]).float() / 255
    chosen = window_plan(geometry, masks)
    assert chosen.mask_patches.shape[0] == masks.shape[0]
    for structure in _structures(3):  # the chosen windows and every other choice of windowed layers
        assert_changes_lie_in_windows(agent, window_plan(geometry, masks, structure), x, masks, "occlude")


def test_compute_saliency_takes_the_state_forms_and_settings_perturbation_saliency_takes(
    case, pong_agent, pong_rollout
):
    """states=None for a feed-forward agent, one tensor for a one-tensor state, and incremental named by a plain
    string: the maps of the canonical forms."""
    agent, _, obs, states, _ = case
    settings = SaliencyConfig(method="perturbation", density=20, incremental="false")
    want = perturbation_saliency(agent, obs, states, density=20, incremental=False)
    got = compute_saliency(agent, obs, None if not states else states, settings)
    assert torch.equal(got["actor_scores"], want.actor_scores)
    frames, (hx,) = pong_rollout.frames[40:42], tuple(s[40:42] for s in pong_rollout.states)
    one = compute_saliency(pong_agent, frames, hx, SaliencyConfig(method="perturbation", density=20))
    assert torch.equal(one["critic"], perturbation_saliency(pong_agent, frames, (hx,), density=20).critic)
