"""Occlusion sensitivity on the built-in recurrent PPO agent: equal to captum's ``Occlusion`` for the scalar
responses, to a loop reference for the logits' vector response, and independent of how it is batched."""

from __future__ import annotations

import copy

import pytest
import torch

import engine
from engine.core.blur import gaussian_blur
from engine.core.occlusion import occlusion_sensitivity, window_starts
from engine.policies.registry import resolve_checkpoint
from tests.conftest import saliency_rounding

# The built-in agent's forward pass costs about 0.1 s at any small batch on the CPU: few windows keep the file fast.
WINDOW, STRIDE = 16, 8  # 10 x 10 windows on 84x84, the last ones clipped at the far border
COARSE_WINDOW, COARSE_STRIDE = 24, 16  # 5 x 5 windows (starts 0..64), the last ones clipped too
FRAMES = slice(10, 12)


@pytest.fixture(scope="module")
def agent():
    return engine.load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def played(agent):
    return engine.rollout(agent, "PongNoFrameskip-v4", 20, seed=0)


@pytest.fixture(scope="module")
def inputs(played):
    frames = played.observations[FRAMES]
    states = tuple(s[FRAMES].double() for s in played.states)
    return frames, states, played.actions[FRAMES]


def _fill(x: torch.Tensor, baseline: str, value: float) -> torch.Tensor | float:
    """What fills a window of one frame x (1, C, H, W), in the form captum's ``baselines`` takes."""
    if baseline == "blur":
        return gaussian_blur(x, 3.0)
    if baseline == "mean":
        return float(x.mean())
    return value


def _at_state(agent, state):
    """The agent as captum needs it: functions of the observation alone (action probabilities; value), its
    restored recurrent state held fixed."""

    def fixed(obs: torch.Tensor):
        return agent(obs, tuple(s.expand(obs.shape[0], -1) for s in state))

    return (lambda obs: torch.softmax(fixed(obs).logits, dim=-1)), (lambda obs: fixed(obs).value)


def test_window_placement_is_captums():
    assert window_starts(84, 16, 8) == list(range(0, 73, 8))  # ceil(68 / 8) + 1 = 10: the last runs past 84
    assert window_starts(84, 8, 4) == list(range(0, 77, 4))
    assert window_starts(84, COARSE_WINDOW, COARSE_STRIDE) == [0, 16, 32, 48, 64]
    assert window_starts(84, 84, 5) == [0]


@pytest.mark.parametrize("baseline", ["constant", "mean", "blur"])
def test_scalar_responses_equal_captums_occlusion(agent, inputs, baseline):
    from captum.attr import Occlusion

    frames, states, actions = inputs
    value = 0.5
    prob = occlusion_sensitivity(agent, frames, states, WINDOW, STRIDE, baseline, value, "action_prob", actions)
    val = occlusion_sensitivity(agent, frames, states, WINDOW, STRIDE, baseline, value, "value")
    assert torch.equal(prob.critic, val.critic) and torch.equal(val.actor, val.critic)
    for k in range(frames.shape[0]):
        x = frames[k : k + 1].double() / 255
        state = tuple(s[k : k + 1] for s in states)

        probs, values = _at_state(agent, state)
        kwargs = dict(
            sliding_window_shapes=(1, WINDOW, WINDOW),
            strides=(1, STRIDE, STRIDE),
            baselines=_fill(x, baseline, value),
            perturbations_per_eval=100,
        )
        with torch.no_grad():
            want_prob = Occlusion(probs).attribute(x, target=int(actions[k]), **kwargs)[0, 0]
            want_value = Occlusion(values).attribute(x, **kwargs)[0, 0]
        assert want_prob.abs().max() > 0 and want_value.abs().max() > 0
        # captum sums in the output's dtype (float64) but divides by the window counts in float32: equal to float32
        # rounding
        for got, want in ((prob.actor[k], want_prob), (val.critic[k], want_value)):
            torch.testing.assert_close(got, want.double(), rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def test_logits_response_equals_a_loop_reference(agent, inputs):
    frames, states, _ = inputs
    window, stride = COARSE_WINDOW, COARSE_STRIDE
    result = occlusion_sensitivity(agent, frames, states, window, stride, "blur", 0.0, "logits")
    for k in (1,):  # a forward pass per window: one frame keeps it short
        x = frames[k : k + 1].double() / 255
        state = tuple(s[k : k + 1] for s in states)
        blurred = gaussian_blur(x, 3.0)
        total, count = torch.zeros(84, 84, dtype=torch.float64), torch.zeros(84, 84, dtype=torch.float64)
        with torch.no_grad():
            base = agent(x, state).logits[0]
            for r in range(0, 84 - window + stride, stride):
                for c in range(0, 84 - window + stride, stride):
                    occluded = x.clone()
                    occluded[..., r : r + window, c : c + window] = blurred[..., r : r + window, c : c + window]
                    score = 0.5 * float(((base - agent(occluded, state).logits[0]) ** 2).sum())
                    total[r : r + window, c : c + window] += score
                    count[r : r + window, c : c + window] += 1
        assert count.min() >= 1 and result.actor[k].max() > 0
        torch.testing.assert_close(result.actor[k], total / count, rtol=1e-9, atol=1e-14)


def test_batching_never_changes_a_bit(agent, inputs):
    frames, states, actions = inputs
    n, m = frames.shape[0], 25

    def run(f, s, a, per_eval):
        return occlusion_sensitivity(
            agent, f, s, COARSE_WINDOW, COARSE_STRIDE, "mean", 0.0, "action_prob", a, perturbations_per_eval=per_eval
        )

    reference = run(frames, states, actions, n * m)
    for per_eval in (1, 7):
        again = run(frames, states, actions, per_eval)
        assert torch.equal(again.actor, reference.actor) and torch.equal(again.critic, reference.critic)
    for k in range(n):
        alone = run(frames[k : k + 1], tuple(s[k : k + 1] for s in states), actions[k : k + 1], 7)
        assert torch.equal(alone.actor[0], reference.actor[k]) and torch.equal(alone.critic[0], reference.critic[k])


def test_incremental_windows_equal_plain_passes(agent, inputs):
    """The trunk run on each window's receptive field only, the rest shared with the observation's activations:
    the maps and window scores of whole-observation passes to float64 rounding (a window's convolution may sum in
    another order than the whole map's, as a CPU's kernels choose), for each baseline; in passes of any size, bit
    for bit. The rounding bound comes from the computation: the float32 program's rounding, measured against
    float64 here, scaled by the two formats' machine epsilons."""
    frames, states, actions = inputs
    keys = ("actor_scores", "critic_scores")
    single = copy.deepcopy(agent).float()
    for baseline in ("blur", "mean", "constant"):
        options = dict(window=WINDOW, stride=STRIDE, baseline=baseline, value=0.25, actions=actions)
        plain, windows = (
            occlusion_sensitivity(agent, frames, states, incremental=incremental, **options)
            for incremental in (False, True)
        )
        rounding32 = saliency_rounding(
            occlusion_sensitivity, single, frames, tuple(s.float() for s in states), keys, incremental=False, **options
        )
        for key in keys:
            a, b = getattr(plain, key), getattr(windows, key)
            float64_rounding = rounding32[key] * torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
            assert 0 < rounding32[key] < 1e-4 * float(a.abs().max()), (baseline, key)  # a bound that catches errors
            assert float((b - a).abs().max()) <= 4 * float64_rounding, (baseline, key)
    small = occlusion_sensitivity(
        agent, frames, states, WINDOW, STRIDE, actions=actions, incremental=True, perturbations_per_eval=7
    )
    whole = occlusion_sensitivity(agent, frames, states, WINDOW, STRIDE, actions=actions, incremental=True)
    assert torch.equal(small.actor, whole.actor) and torch.equal(small.critic, whole.critic)


def test_the_restored_state_matters(agent, inputs):
    frames, states, actions = inputs
    right = occlusion_sensitivity(agent, frames, states, WINDOW, STRIDE, response="action_prob", actions=actions)
    zeros = tuple(torch.zeros_like(s) for s in states)
    wrong = occlusion_sensitivity(agent, frames, zeros, WINDOW, STRIDE, response="action_prob", actions=actions)
    assert all(float(s.abs().max()) > 0 for s in states)
    for k in range(frames.shape[0]):
        assert not torch.allclose(right.actor[k], wrong.actor[k], rtol=1e-3, atol=1e-6)
        assert not torch.allclose(right.critic[k], wrong.critic[k], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=0), "window must be a positive integer"),
        (dict(window=85), "larger than the 84x84 observation"),
        (dict(window=2.5), "window must be a positive integer"),
        (dict(stride=0), "stride must be a positive integer"),
        (dict(window=4, stride=5), "stride 5 is larger than window 4"),
        (dict(baseline="noise"), "baseline must be one of"),
        (dict(response="q"), "response must be one of"),
        (dict(value=float("nan"), response="value"), r"value must be in 0..1, the observations' scale"),
        (dict(value=255, response="value"), r"value must be in 0..1, the observations' scale \(0 black, 1 white\)"),
        (dict(response="action_prob"), "needs the action taken"),
        (dict(response="action_prob", actions=[0, 1, 2]), "actions must be 2 integer action indices"),
        (dict(response="action_prob", actions=[0, 6]), "actions must lie in 0..5"),
        # any of these ran windows: incremental was not checked
        (dict(incremental="false"), "incremental must be True, False or 'auto', got 'false'"),
        (dict(incremental=0), "incremental must be True, False or 'auto', got 0"),
        (dict(incremental=None), "incremental must be True, False or 'auto', got None"),
    ],
)
def test_bad_input_is_refused(agent, inputs, kwargs, message):
    frames, states, _ = inputs
    with pytest.raises(ValueError, match=message):
        occlusion_sensitivity(agent, frames, states, **{"response": "value", **kwargs})
