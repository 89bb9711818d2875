"""Faithfulness metrics (engine.metrics.faithfulness): each against a plain loop implementation on real frames, and on
constructed cases with a known answer."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from torch import nn

from engine.core.errors import EngineError
from engine.core.jacobian import jacobian_saliency
from engine.core.perturbation import perturbation_saliency, upsample_exact
from engine.core.replay import replay_states
from engine.env.rollout import rollout
from engine.metrics.faithfulness import (
    auc,
    cascade_stages,
    deletion_insertion,
    object_agreement,
    random_maps,
    randomize_modules,
    rank_stability,
    sanity_check,
    spearman,
    ssim,
    temporal_stability,
    upsample_maps,
)
from engine.metrics.regions import (
    PONG_OBJECTS,
    cells_near,
    game_object_cells,
    game_object_pixels,
    near_cells,
    object_pixels,
)
from engine.policies.greydanus2017 import load_agent
from engine.policies.module import wrap_policy
from engine.policies.registry import resolve_checkpoint

FRAMES = slice(40, 46)  # frames with the ball in play


@pytest.fixture(scope="module")
def builtin_played():
    agent = load_agent(resolve_checkpoint("builtin/pong", [], allow_download=False), device="cpu")
    return agent, rollout(agent, "Pong-v4", 48, seed=0, progress=False)


def loop_deletion_insertion(agent, x, states, maps, actions, steps, sigma=3.0):
    """The plain reference: per frame and step, one observation built with numpy, one forward pass."""
    n, c, h, w = x.shape
    p = h * w
    out = {key: np.zeros((n, steps + 1)) for key in ("dp", "dk", "dv", "ip", "ik", "iv")}
    for i in range(n):
        obs = x[i].numpy()
        blur = np.stack([scipy.ndimage.gaussian_filter(ch, sigma) for ch in obs])
        order = np.argsort(-maps[i].numpy().ravel(), kind="stable")
        state = tuple(s[i : i + 1] for s in states)
        with torch.inference_mode():
            base = torch.log_softmax(agent(torch.from_numpy(obs)[None], state).logits, -1)[0].double().numpy()
        for k in range(steps + 1):
            top = order[: k * p // steps]
            for kind, first, second in (("d", obs, blur), ("i", blur, obs)):
                inp = first.reshape(c, p).copy()
                inp[:, top] = second.reshape(c, p)[:, top]
                with torch.inference_mode():
                    o = agent(torch.from_numpy(inp.reshape(c, h, w))[None].to(x.dtype), state)
                logp = torch.log_softmax(o.logits, -1)[0].double().numpy()
                out[kind + "p"][i, k] = np.exp(logp[actions[i]])
                out[kind + "k"][i, k] = np.sum(np.exp(base) * (base - logp))
                out[kind + "v"][i, k] = float(o.value[0])
    return out


def check_against_loop(agent, played, frames=FRAMES, steps=8):
    agent = agent.double()
    try:
        x = played.observations[frames].double() / 255
        states = tuple(s[frames].double() for s in played.states)
        actions = played.actions[frames]
        maps = perturbation_saliency(agent, x, states).actor
        got = deletion_insertion(agent, x, states, maps, actions, steps=steps)
        want = loop_deletion_insertion(agent, x, states, maps, actions.tolist(), steps)
        for curves, kind in ((got.deletion, "d"), (got.insertion, "i")):
            np.testing.assert_allclose(curves.prob.numpy(), want[kind + "p"], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(curves.kl.numpy(), want[kind + "k"], rtol=1e-7, atol=1e-12)
            np.testing.assert_allclose(curves.value.numpy(), want[kind + "v"], rtol=1e-9, atol=1e-12)
        assert got.deletion.prob[:, 0].equal(got.insertion.prob[:, -1])  # the observation itself
        assert (got.deletion.kl[:, 0] == 0).all()
        assert torch.allclose(got.deletion.fractions, torch.arange(steps + 1).double() / steps)
    finally:
        agent.float()


def test_deletion_insertion_equals_the_loop_on_real_frames(pong_agent, pong_rollout):
    check_against_loop(pong_agent, pong_rollout)


def test_deletion_insertion_equals_the_loop_for_the_builtin_lstm_agent(builtin_played):
    agent, played = builtin_played
    check_against_loop(agent, played, slice(42, 45), steps=5)


def test_chunking_and_grids_do_not_change_the_curves(pong_agent, pong_rollout):
    x, states, actions = (
        pong_rollout.observations[FRAMES],
        tuple(s[FRAMES] for s in pong_rollout.states),
        pong_rollout.actions[FRAMES],
    )
    result = perturbation_saliency(pong_agent, x, states, density=5)
    whole = deletion_insertion(pong_agent, x, states, result.actor, actions, steps=16)
    for per_eval in (1, 7, 1000):
        chunked = deletion_insertion(pong_agent, x, states, result.actor, actions, steps=16, inputs_per_eval=per_eval)
        for kind in ("deletion", "insertion"):
            for key in ("prob", "kl", "value"):
                assert getattr(getattr(chunked, kind), key).equal(getattr(getattr(whole, kind), key)), (
                    per_eval,
                    kind,
                    key,
                )
    one = deletion_insertion(
        pong_agent, x[2:3], tuple(s[2:3] for s in states), result.actor[2:3], actions[2:3], steps=16
    )
    assert one.deletion.prob[0].equal(whole.deletion.prob[2])  # a frame's curves do not depend on the others
    # a score grid is upsampled as the engine does: the same order as the map
    grid = deletion_insertion(pong_agent, x, states, result.actor_scores, actions, steps=16)
    assert grid.deletion.prob.equal(whole.deletion.prob)
    assert upsample_maps(result.actor_scores, (80, 80)).equal(upsample_exact(result.actor_scores, 5))


def test_a_process_wide_bfloat16_setting_leaves_the_curves_exact(pong_agent, pong_rollout):
    """The curves are differences of nearly equal outputs: under the process's torch.set_float32_matmul_precision
    ("medium") and oneDNN's bfloat16 convolutions they equal the default settings' bit for bit."""
    x, states, actions = (
        pong_rollout.observations[FRAMES],
        tuple(s[FRAMES] for s in pong_rollout.states),
        pong_rollout.actions[FRAMES],
    )
    maps = perturbation_saliency(pong_agent, x, states, density=10).actor
    want = deletion_insertion(pong_agent, x, states, maps, actions, steps=8)
    saved = torch.get_float32_matmul_precision(), torch.backends.mkldnn.conv.fp32_precision
    try:
        torch.set_float32_matmul_precision("medium")
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        got = deletion_insertion(pong_agent, x, states, maps, actions, steps=8)
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.mkldnn.conv.fp32_precision = saved[1]
    for kind in ("deletion", "insertion"):
        for key in ("prob", "kl", "value"):
            assert getattr(getattr(got, kind), key).equal(getattr(getattr(want, kind), key)), (kind, key)


def test_a_map_on_ignored_pixels_scores_worse_than_the_agents_own(pong_agent, pong_rollout):
    x, states, actions = (
        pong_rollout.observations[FRAMES],
        tuple(s[FRAMES] for s in pong_rollout.states),
        pong_rollout.actions[FRAMES],
    )
    own = perturbation_saliency(pong_agent, x, states).actor
    ignored = own.amax(dim=(1, 2), keepdim=True) - own  # all mass where the agent does not react
    good = deletion_insertion(pong_agent, x, states, own, actions).aucs()
    bad = deletion_insertion(pong_agent, x, states, ignored, actions).aucs()
    rand = deletion_insertion(pong_agent, x, states, random_maps(x.shape[0], (80, 80), seed=1), actions).aucs()
    # deleting the salient pixels first moves the policy away sooner; inserting them first brings it back sooner
    assert good["deletion_kl"].mean() > rand["deletion_kl"].mean() > bad["deletion_kl"].mean()
    assert good["insertion_kl"].mean() < bad["insertion_kl"].mean()
    assert (good["deletion_kl"] > bad["deletion_kl"]).all()


def test_auc_is_the_trapezoid():
    curves = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]])
    assert auc(curves).tolist() == [0.5, 0.75]
    with pytest.raises(EngineError, match="at least 2 points"):
        auc(torch.ones(3, 1))


def test_bad_inputs_are_refused(pong_agent, pong_rollout):
    x, states = pong_rollout.observations[FRAMES], tuple(s[FRAMES] for s in pong_rollout.states)
    maps = torch.rand(6, 80, 80)
    with pytest.raises(EngineError, match="steps must be a positive integer"):
        deletion_insertion(pong_agent, x, states, maps, steps=0)
    with pytest.raises(EngineError, match="baseline must be one of"):
        deletion_insertion(pong_agent, x, states, maps, baseline="gray")
    with pytest.raises(EngineError, match="one map per observation"):
        deletion_insertion(pong_agent, x, states, maps[:5])
    with pytest.raises(EngineError, match="exactly one density"):
        deletion_insertion(pong_agent, x, states, torch.rand(6, 3, 3))
    with pytest.raises(EngineError, match="NaN"):
        deletion_insertion(pong_agent, x, states, torch.full((6, 80, 80), float("nan")))
    with pytest.raises(EngineError, match="actions must lie in"):
        deletion_insertion(pong_agent, x, states, maps, actions=torch.full((6,), 9))


def test_spearman_equals_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 6, 7), generator=g).double()  # many ties
    b = a + torch.rand(4, 6, 7, generator=g, dtype=torch.float64) * 3
    got = spearman(a, b)
    want = [scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(4)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert spearman(a, -a).tolist() == pytest.approx([-1.0] * 4)
    assert torch.isnan(spearman(torch.ones(1, 3, 3), a[:1, :3, :3])).all()  # a constant map has no ranking
    assert rank_stability(a, b).equal(got)


def test_ssim_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 40, generator=g, dtype=torch.float64)
    assert ssim(a, a * 7 + 2).tolist() == pytest.approx([1.0] * 3)  # scaled to [0, 1] first
    assert (ssim(a, torch.rand(3, 40, 40, generator=g, dtype=torch.float64)) < 0.1).all()
    assert (ssim(a, 1 - a) < 0).all()


def test_temporal_stability_skips_episode_ends():
    maps = torch.rand(4, 10, 10, generator=torch.Generator().manual_seed(0))
    rho = temporal_stability(maps, dones=[False, True, False, False])
    assert torch.isnan(rho[1]) and rho[0] == pytest.approx(float(spearman(maps[:1], maps[1:2])[0]))
    assert temporal_stability(maps.repeat(1, 1, 1)[[0, 0, 0]]).tolist() == pytest.approx([1.0, 1.0])


def test_object_agreement_values():
    maps = torch.zeros(3, 8, 8)
    maps[0, 0, 0], maps[0, 7, 7] = 3.0, 1.0  # 3/4 of the mass on the ball, peak on it
    maps[1, 4, 4] = 1.0  # peak off every object
    ball = torch.zeros(3, 8, 8, dtype=torch.bool)
    ball[0, 0, :2] = ball[1, 0, 0] = True  # frame 2: no ball on screen
    paddle = torch.zeros(3, 8, 8, dtype=torch.bool)
    paddle[:, 7, 7] = True
    result = object_agreement(maps, {"ball": ball, "paddle": paddle})
    assert result.share["ball"][:2].tolist() == [0.75, 0.0] and torch.isnan(result.share["ball"][2])
    assert result.area["ball"][:2].tolist() == [2 / 64, 1 / 64]
    assert result.share["objects"][0] == 1.0 and result.pointing[:2].tolist() == [1.0, 0.0]
    assert torch.isnan(result.pointing[2])  # the map is all zero
    summary = result.summary()
    assert summary["ball_share"] == pytest.approx(0.375) and summary["pointing"] == 0.5
    assert summary["ball_ratio"] == pytest.approx(0.375 / (1.5 / 64))
    with pytest.raises(EngineError, match="bool tensor of the maps' shape"):
        object_agreement(maps, {"ball": ball[:2]})


def test_object_agreement_of_signed_maps():
    """Occlusion, RISE and LIME maps are signed: their peak points whatever the map's sum, a share is of the
    positive mass (never above 1), and a constant map has no peak."""
    ball = torch.zeros(3, 4, 4, dtype=torch.bool)
    ball[:, 0, 0] = True
    maps = torch.full((3, 4, 4), -0.2)
    maps[:, 0, 0] = 1.0  # frame 0: the peak on the ball, the sum negative
    maps[1, 3, 3] = 3.0  # frame 1: the peak elsewhere; positive mass 1 + 3
    maps[2] = 0.5  # frame 2: constant
    result = object_agreement(maps, {"ball": ball})
    assert result.pointing[:2].tolist() == [1.0, 0.0] and torch.isnan(result.pointing[2])
    assert result.share["ball"].tolist() == pytest.approx([1.0, 0.25, 1 / 16])


def test_object_cells_on_real_frames_match_the_regions_module(pong_rollout):
    frames = pong_rollout.frames[40:50]
    for name, color in PONG_OBJECTS.items():
        old = near_cells(object_pixels(frames, color), 6)
        new = game_object_cells(frames, "pong", (80, 80), distance=6)[name]
        assert new.equal(old), name
    # the standard pipelines' maps cover the whole frame: 84x84 cells of 2.5 x 1.9 frame pixels
    ball = game_object_pixels(frames, "pong")["ball"]
    cells = cells_near(ball, (84, 84), rows=None)
    for t in range(10):
        ys, xs = ball[t].nonzero(as_tuple=True)
        if len(ys):
            assert cells[t, int(ys[0]) * 84 // 210, int(xs[0]) * 84 // 160]
    agreement = object_agreement(torch.ones(10, 80, 80), game_object_cells(frames, "pong", (80, 80)))
    for name in PONG_OBJECTS:  # a uniform map gives every object exactly its area
        assert agreement.summary()[f"{name}_ratio"] == pytest.approx(1.0)


def test_replay_reproduces_the_recorded_states(pong_agent, pong_rollout):
    replayed = replay_states(pong_agent, pong_rollout.observations, pong_rollout.dones)
    for got, want in zip(replayed, pong_rollout.states):
        assert got.equal(want)


def test_cascade_stages_go_from_the_heads_down(pong_agent):
    assert cascade_stages(pong_agent) == [
        ("critic_linear", "actor_linear"),
        ("gru",),
        ("conv4",),
        ("conv3",),
        ("conv2",),
        ("conv1",),
    ]


def test_randomisation_is_seeded_and_leaves_the_agent_alone(pong_agent):
    import copy

    before = {k: v.clone() for k, v in pong_agent.state_dict().items()}
    a, b = copy.deepcopy(pong_agent), copy.deepcopy(pong_agent).double()
    randomize_modules(a, ["conv2", "actor_linear"], seed=3)
    randomize_modules(b, ["conv2", "actor_linear"], seed=3)
    assert torch.equal(
        a.conv2.weight, b.conv2.weight.float()
    )  # drawn on the CPU in float32, whatever the agent's dtype
    assert not torch.equal(a.conv2.weight, pong_agent.conv2.weight) and torch.equal(
        a.conv3.weight, pong_agent.conv3.weight
    )
    assert all(torch.equal(v, before[k]) for k, v in pong_agent.state_dict().items())


def image_maps(policy, observations, states):
    """A 'method' that never asks the network: where the observation differs from its blur."""
    from engine.core.blur import gaussian_blur

    return {"actor": (observations - gaussian_blur(observations, 3)).abs().sum(1)}


def test_a_method_blind_to_the_network_fails_the_sanity_check(pong_agent, pong_rollout):
    result = sanity_check(pong_agent, pong_rollout.observations[:44], image_maps, frames=[40, 43])
    assert result.flagged("actor") and result.spearman["actor"].eq(1).all() and len(result.stages) == 6


def test_jacobian_maps_pass_the_sanity_check(pong_agent, pong_rollout):
    def jacobian(policy, obs, states):
        j = jacobian_saliency(policy, obs, states)
        return {"actor": j.actor, "critic": j.critic}

    obs, dones = pong_rollout.observations[:44], pong_rollout.dones[:44]
    result = sanity_check(
        pong_agent, obs, jacobian, dones=dones, frames=[40, 43], states=tuple(s[:44] for s in pong_rollout.states)
    )
    summary = result.summary()
    assert not result.flagged("actor") and not result.flagged("critic")
    assert summary["actor_spearman_all"] < 0.5 and summary["actor_spearman_all"] < summary["actor_spearman_output"]
    # the trained agent itself (no stage randomised) reproduces its maps: the comparison is sound
    same = sanity_check(pong_agent, obs, jacobian, dones=dones, frames=[40, 43], stages=[()])
    assert same.spearman["actor"].eq(1).all() and same.ssim["actor"].sub(1).abs().max() < 1e-5


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 4, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 16), nn.ReLU()
        )
        self.pi, self.v = nn.Linear(16, 3), nn.Linear(16, 1)

    def forward(self, obs):
        h = self.body(obs)
        return self.pi(h), self.v(h)


def test_sanity_check_of_a_wrapped_network():
    torch.manual_seed(0)
    net = TinyCNN()
    policy = wrap_policy(net, observation_shape=(2, 24, 24), pipeline="gymnasium_atari")
    assert cascade_stages(policy) == [("pi", "v"), ("body.3",), ("body.0",)]
    obs = torch.rand(5, 2, 24, 24, generator=torch.Generator().manual_seed(1))

    def jacobian(p, o, s):
        return {"actor": jacobian_saliency(p, o, s).actor}

    result = sanity_check(policy, obs, jacobian)
    rho = result.spearman["actor"]
    assert rho.shape == (3, 5) and result.ssim["actor"].shape == (3, 5) and (rho < 0.99).all()
    assert result.flagged("actor") == bool(rho[0].mean() >= 0.5 and rho[-1].mean() >= 0.5)
    assert torch.equal(policy.fn.pi.weight, net.pi.weight)  # the wrapped network is untouched
    with pytest.raises(EngineError, match="must be a torch nn.Module"):
        sanity_check(
            wrap_policy(lambda o: net(o), observation_shape=(2, 24, 24), num_actions=3, pipeline="gymnasium_atari"),
            obs,
            jacobian,
        )


@pytest.mark.parametrize("form", ["none", "bare tensor"])
def test_every_nth_frames_curves_take_the_state_forms_deletion_insertion_takes(form):
    """metrics' curve_every sliced states as a tuple of tensors: None (a feed-forward agent) or a bare state tensor,
    which deletion_insertion takes, crashed with curve_every > 1."""
    from engine.metrics.faithfulness import MetricsSummary

    torch.manual_seed(0)
    recurrent = form == "bare tensor"
    net = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 4))

    def fn(obs, state=None):
        out = net(obs)
        return (out[:, :3], out[:, 3], state) if recurrent else (out[:, :3], out[:, 3])

    agent = wrap_policy(
        fn, (1, 16, 16), pipeline="gymnasium_atari", initial_state=torch.zeros(1, 2) if recurrent else None
    )
    obs = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    maps = {"actor": torch.rand(5, 16, 16, generator=torch.Generator().manual_seed(2))}
    states = None if form == "none" else torch.zeros(5, 2)
    every, picked = (
        MetricsSummary(("actor",), 4, objects=False, stability=False, curve_every=2),
        MetricsSummary(("actor",), 4, objects=False, stability=False),
    )
    every.update(agent, obs, states, maps, torch.zeros(5, dtype=torch.long), first=1)  # frames 2 and 4 of the rollout
    rows = [1, 3]
    picked.update(
        agent,
        obs[rows],
        None if states is None else states[rows],
        {"actor": maps["actor"][rows]},
        torch.zeros(2, dtype=torch.long),
    )
    assert every.result()["actor"] == picked.result()["actor"]
