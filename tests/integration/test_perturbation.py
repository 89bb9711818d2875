"""The batched engine against the loop reference, on real frames with a real agent."""

import copy

import numpy as np
import pytest
import torch

from engine.core.perturbation import perturbation_saliency, upsample_exact
from engine.core.preprocessing import preprocess_frames
from engine.core.reference import saliency_np, upsample_exact_np
from engine.policies.greydanus2017 import ActorCritic
from tests.conftest import assert_float32_close, saliency_rounding

FRAME = 45  # a frame of the seeded rollout with the ball in play and a non-zero state


def _rel_err(got: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.abs(got.double().numpy() - expected).max() / np.abs(expected).max())


def _agent_and_states(name, pong_agent, pong_lstm_agent, pong_rollout, lstm_states):
    if name == "gru":
        return pong_agent, pong_rollout.states
    return pong_lstm_agent, lstm_states


CASES = [  # (core, interp, radius, density): radii 3/5/8, densities dividing 80 and not (7, 9, 12)
    ("gru", "occlude", 5, 5),
    ("gru", "searchlight", 5, 5),
    ("gru", "occlude", 3, 7),
    ("gru", "searchlight", 8, 12),
    ("lstm", "occlude", 5, 5),
    ("lstm", "searchlight", 3, 9),
]


@pytest.mark.parametrize("core,interp,radius,density", CASES)
def test_scores_equal_loop_reference_float32(
    core, interp, radius, density, pong_agent, pong_lstm_agent, pong_rollout, lstm_states
):
    agent, states = _agent_and_states(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states)
    frames = pong_rollout.frames[FRAME : FRAME + 2]
    state = tuple(s[FRAME : FRAME + 2] for s in states)
    got = perturbation_saliency(agent, frames, state, radius=radius, density=density, interp=interp)
    ref = saliency_np(agent, frames[0].numpy(), tuple(s[:1] for s in state), radius, density, interp)
    assert got.actor_scores.shape == (2, *ref["actor_scores"].shape)
    assert ref["actor_scores"].max() > 1e-3 and ref["critic_scores"].max() > 0  # a frame where scores matter
    # the engine and the loop round their float32 passes in their own orders: bounded by the engine's own rounding
    # against the same computation in float64, measured here (not a tolerance tuned on one CPU)
    keys = ("actor_scores", "critic_scores", "actor", "critic")
    options = dict(radius=radius, density=density, interp=interp)
    rounding = saliency_rounding(perturbation_saliency, agent, frames, state, keys, **options)
    for key in keys:
        assert_float32_close(getattr(got, key)[0], torch.from_numpy(np.asarray(ref[key])), rounding[key])


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_scores_equal_loop_reference_float64(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states):
    agent, states = _agent_and_states(core, pong_agent, pong_lstm_agent, pong_rollout, lstm_states)
    agent = copy.deepcopy(agent).double()
    state = tuple(s[FRAME : FRAME + 1].double() for s in states)
    x = preprocess_frames(pong_rollout.frames[FRAME : FRAME + 1], dtype=torch.float64)  # both get the same input
    got = perturbation_saliency(agent, x, state, density=10)
    assert got.actor.dtype == torch.float64
    ref = saliency_np(agent, x[0, 0].numpy(), state, 5, 10)
    for key in ("actor_scores", "critic_scores", "actor", "critic"):
        assert _rel_err(getattr(got, key)[0], ref[key]) <= 1e-9, key


@pytest.mark.parametrize("density", [5, 7])
def test_paper_maps_agree_with_reference_up_to_byte_rounding(density, pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[FRAME : FRAME + 1], tuple(s[FRAME : FRAME + 1] for s in pong_rollout.states)
    got = perturbation_saliency(pong_agent, frames, states, density=density, compat="paper")
    ref = saliency_np(pong_agent, frames[0].numpy(), states, 5, density, compat="paper")
    for key in ("actor", "critic"):
        diff = np.abs(got.__dict__[key][0].double().numpy() - ref[key])
        pmax = ref[key].max()
        assert diff.max() <= pmax / 255 * 1.01, key  # at most one byte level, where rounding of a .5 flips
        assert (diff <= 1e-5 * pmax).mean() >= 0.99, key
    if density == 5:  # the original's zero row/column past the last node (75): the bottom and right edges are dark
        actor = got.actor[0]
        assert float(actor.max()) > 0.1 and float(actor[75, 75]) > 0.005  # the corner node carries its score ...
        assert float(got.actor_scores[0, -1, -1]) > 0.01 * float(got.actor_scores[0].max())
        assert torch.all(actor[78:] == 0) and torch.all(actor[:, 78:] == 0)  # ... and fades to exactly 0 after it
        exact = perturbation_saliency(pong_agent, frames, states, density=density).actor[0]
        assert float(exact[78:].min()) > 0 and float(exact[78:, 70:].mean()) > 0.005  # the exact map does not


def test_exact_upsampling_hits_nodes_and_matches_scipy():
    scores = torch.rand(2, 12, 12, dtype=torch.float64)
    maps = upsample_exact(scores, 7)
    nodes = torch.arange(0, 80, 7)
    assert torch.allclose(maps[:, nodes][:, :, nodes], scores, rtol=0, atol=1e-14)
    np.testing.assert_allclose(maps[1].numpy(), upsample_exact_np(scores[1].numpy(), 7), rtol=0, atol=1e-13)


def test_chunk_size_never_changes_results(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[40:43], tuple(s[40:43] for s in pong_rollout.states)
    everything = perturbation_saliency(pong_agent, frames, states, density=8, perturbations_per_eval=10**9)
    assert (
        float(everything.actor_scores.amax((1, 2)).min()) > 0 and float(everything.critic_scores.amax((1, 2)).min()) > 0
    )
    for options in (dict(perturbations_per_eval=1), dict(perturbations_per_eval=7), dict(memory_budget_mb=5)):
        chunked = perturbation_saliency(pong_agent, frames, states, density=8, **options)
        for key in ("actor", "critic", "actor_scores", "critic_scores"):
            assert torch.equal(getattr(chunked, key), getattr(everything, key)), (options, key)


def test_many_frames_equal_one_at_a_time(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[30:36], tuple(s[30:36] for s in pong_rollout.states)
    together = perturbation_saliency(pong_agent, frames, states, density=10)
    assert float(together.actor.amax((1, 2)).min()) > 0  # every frame has a map to compare
    for i in range(6):
        alone = perturbation_saliency(pong_agent, frames[i : i + 1], tuple(s[i : i + 1] for s in states), density=10)
        assert torch.equal(alone.actor[0], together.actor[i]) and torch.equal(alone.critic[0], together.critic[i])


def _methods():
    from types import SimpleNamespace

    from engine.core.jacobian import jacobian_saliency, logprob_gradient
    from engine.core.lime import lime_saliency
    from engine.core.occlusion import occlusion_sensitivity
    from engine.core.rise import rise_saliency

    def gradient(agent, frames, states):
        grad = logprob_gradient(agent, frames, states, torch.tensor([0, 1]))
        return SimpleNamespace(actor=grad, critic=grad)

    return {
        "perturbation": lambda *a: perturbation_saliency(*a, density=10, incremental=False),
        "perturbation_incremental": lambda *a: perturbation_saliency(*a, density=10, incremental=True),
        "occlusion": lambda *a: occlusion_sensitivity(*a, window=16, stride=16, response="value"),
        "rise": lambda *a: rise_saliency(*a, num_masks=32, response="value"),
        "lime": lambda *a: lime_saliency(*a, num_samples=32, response="value"),
        "jacobian": jacobian_saliency,
        "logprob_gradient": gradient,
    }


@pytest.mark.parametrize("method", list(_methods()))
def test_a_process_wide_bfloat16_setting_leaves_the_maps_exact(method, pong_agent, pong_rollout):
    """``torch.set_float32_matmul_precision("medium")`` and oneDNN's bfloat16 convolutions, set by the user's
    process, would round the agent's products to bfloat16 on a CPU that has them (4e-3 of the map's max on an AMX
    Xeon): each method's call gives the maps of the default settings bit for bit, and leaves the settings as it
    found them."""
    run = _methods()[method]
    frames, states = pong_rollout.frames[40:42], tuple(s[40:42] for s in pong_rollout.states)
    want = run(pong_agent, frames, states)
    saved = torch.get_float32_matmul_precision(), torch.backends.mkldnn.conv.fp32_precision
    try:
        torch.set_float32_matmul_precision("medium")
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        got = run(pong_agent, frames, states)
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.backends.mkldnn.conv.fp32_precision == "bf16"
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.mkldnn.conv.fp32_precision = saved[1]
    for key in ("actor", "critic"):
        assert float(getattr(want, key).abs().max()) > 0, key
        assert torch.equal(getattr(got, key), getattr(want, key)), key


def test_accepts_preprocessed_frames_and_numpy(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[40:42], tuple(s[40:42] for s in pong_rollout.states)
    a = perturbation_saliency(pong_agent, frames.numpy(), states, density=10)
    b = perturbation_saliency(pong_agent, preprocess_frames(frames), states, density=10)
    assert torch.equal(a.actor, b.actor)
    assert a.settings == dict(radius=5, density=10, interp="occlude", blur_sigma=3, compat="exact", score="logit_l2")
    assert a.centers.tolist() == list(range(0, 80, 10))


@pytest.fixture(scope="module")
def random_agents():
    """A seeded random GRU and LSTM agent with Pong's 6 actions."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ActorCritic(6, "gru").eval(), ActorCritic(6, "lstm").eval()


@pytest.fixture(scope="module")
def random_frames():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 210, 160, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(density=0), "density must be in 1..80"),
        (dict(density=81), "density must be in 1..80"),
        (dict(density=2.5), "density must be an integer"),
        (dict(radius=0), "radius must be a number in"),
        (dict(radius=-3), "radius must be a number in"),
        (dict(radius=200), "radius must be a number in"),
        (dict(interp="blur"), "interp must be one of"),
        (dict(compat="2017"), "compat must be one of"),
        (dict(blur_sigma=0), "blur_sigma"),
        (dict(perturbations_per_eval=0), "perturbations_per_eval must be a positive integer"),
        (dict(memory_budget_mb=0), "memory_budget_mb must be a finite number of megabytes > 0"),
        (dict(memory_budget_mb=float("inf")), r"memory_budget_mb must be a finite number .*got inf"),
        # 0 == False, np.False_ == False: they passed as a request for windows
        (dict(incremental=0), "incremental must be True, False or 'auto', got 0"),
        (dict(incremental="false"), "incremental must be True, False or 'auto', got 'false'"),
        (dict(incremental=None), "incremental must be True, False or 'auto', got None"),
        (dict(incremental=np.array([True, False])), "incremental must be True, False or 'auto', got array"),
        (dict(perturbations_per_eval=np.True_), "perturbations_per_eval must be a positive integer"),
        (dict(density=np.float64(2.5)), "density must be an integer"),
    ],
)
def test_bad_settings_fail_clearly(kwargs, match, random_agents, random_frames):
    gru, _ = random_agents
    with pytest.raises(ValueError, match=match):
        perturbation_saliency(gru, random_frames[:1], (torch.randn(1, 256),), **kwargs)


def test_numpy_numbers_are_the_numbers_they_hold(random_agents, random_frames, monkeypatch):
    """A sweep over np.arange gives numpy scalars: they were refused as "not an integer"; numpy's bools are
    bools (np.False_ ran windows)."""
    from engine.core import perturbation
    from engine.core.saliency import compute_saliency
    from engine.core.settings import SaliencyConfig

    gru, _ = random_agents
    frames, states = random_frames[:2], (torch.randn(2, 256),)
    plain = perturbation_saliency(gru, frames, states, radius=5, density=10, perturbations_per_eval=64)
    numpy = perturbation_saliency(
        gru,
        frames,
        states,
        radius=np.float32(5),
        density=np.int64(10),
        perturbations_per_eval=np.int64(64),
        memory_budget_mb=np.float64(512),
        blur_sigma=np.int32(3),
    )
    assert torch.equal(plain.actor, numpy.actor) and torch.equal(plain.critic_scores, numpy.critic_scores)
    config = SaliencyConfig(radius=np.float32(5), density=np.int64(10), frames_per_batch=np.int64(1))
    assert torch.equal(compute_saliency(gru, frames, states, config)["actor"], plain.actor)
    plans = []
    monkeypatch.setattr(perturbation, "incremental_plan", lambda *a, **k: plans.append(a[2]) or None)
    perturbation_saliency(gru, frames, states, radius=5, density=10, incremental=np.False_)
    compute_saliency(gru, frames, states, SaliencyConfig(radius=5, density=10, incremental=np.False_))
    assert plans == [False, False] and all(type(p) is bool for p in plans)


def test_compute_saliency_checks_the_pass_settings_whichever_methods_run(random_agents, random_frames):
    """The app refuses these whatever the method; compute_saliency let them through where no method used them."""
    from engine.core.saliency import compute_saliency
    from engine.core.settings import SaliencyConfig

    gru, _ = random_agents
    frames, states = random_frames[:1], (torch.randn(1, 256),)
    for settings, match in (
        (dict(perturbations_per_eval=0), "perturbations_per_eval must be a positive integer"),
        (dict(memory_budget_mb=0), "memory_budget_mb must be a finite number of megabytes > 0"),
        (dict(incremental=0), "incremental must be True, False or 'auto', got 0"),
    ):
        with pytest.raises(ValueError, match=match):
            compute_saliency(gru, frames, states, SaliencyConfig(method="jacobian", **settings))


def test_bad_inputs_fail_clearly(random_agents, random_frames):
    pong_agent, pong_lstm_agent = random_agents  # argument checks need no trained agent and no real game
    frames, states = random_frames, (torch.randn(3, 256),)
    with pytest.raises(ValueError, match=r"state/frame count mismatch: 3 frames but state tensor 0 has 2 rows"):
        perturbation_saliency(pong_agent, frames, tuple(s[:2] for s in states))
    with pytest.raises(ValueError, match=r"\(N, 210, 160, 3\)"):
        perturbation_saliency(pong_agent, frames[:, :200], states)
    with pytest.raises(ValueError, match="uint8"):
        perturbation_saliency(pong_agent, frames.to(torch.int32), states)
    with pytest.raises(
        ValueError, match=r"this agent.s state has 2 tensor\(s\) of shapes \(N, 256\), \(N, 256\), got 1"
    ):
        perturbation_saliency(pong_lstm_agent, frames, states)
    with pytest.raises(ValueError, match=r"shape \(N, 256\)"):
        perturbation_saliency(pong_agent, frames, (states[0][:, :100],))
    with pytest.raises(ValueError, match="no frames"):
        perturbation_saliency(pong_agent, frames[:0], tuple(s[:0] for s in states))
