"""RISE (Petsiuk et al. 2018) on the real baby-a3c Pong agents: the paper's masks (skimage's bilinear upsampling and
random crops, as xaitk-saliency's ``RISEGrid``), equal to a loop reference and to xaitk-saliency's RISE scoring on
the same masks, seeded per frame, independent of how it is batched; recurrent agents at each frame's state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.core import rise
from engine.core.preprocessing import preprocess_frames
from engine.core.rise import build_masks, grid_cells, mask_draws, rise_masks, rise_saliency
from tests.integration.conftest import TopLeftPixel

FRAME = 45  # a frame of the seeded rollout with the ball in play and a non-zero state
MASKS, P, CELL = 40, 0.5, 8  # few masks: the loop reference stays short


@pytest.fixture(scope="module")
def agent64(pong_agent):
    return copy.deepcopy(pong_agent).double()


@pytest.fixture(scope="module")
def inputs(pong_rollout):
    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2] for s in pong_rollout.states)
    return frames, states, pong_rollout.actions[FRAME : FRAME + 2]


@pytest.mark.parametrize("size, cell", [((80, 80), 8), ((84, 60), 7), ((20, 30), 20), ((9, 9), 1)])
def test_masks_are_the_papers(size, cell):
    """Each mask is skimage's bilinear resize of its grid to ((s+1) * cell) pixels per axis, cropped at its offset:
    the original code's and xaitk-saliency's RISEGrid's masks for the same grid and offsets."""
    from skimage.transform import resize

    grids, offsets = mask_draws(12, 0.4, cell, size, seed=3, frame_index=5)
    sh, sw = grid_cells(size, cell)
    assert grids.shape == (12, sh, sw) and offsets.shape == (12, 2) and int(offsets.max()) < cell
    masks = rise_masks(12, 0.4, cell, size, seed=3, frame_index=5)
    assert torch.equal(masks, build_masks(grids, offsets, cell, size, torch.float64))
    for grid, (y, x), mask in zip(grids.double().numpy(), offsets.tolist(), masks):
        up = resize(grid, ((sh + 1) * cell, (sw + 1) * cell), order=1, mode="reflect", anti_aliasing=False)
        np.testing.assert_allclose(mask.numpy(), up[y : y + size[0], x : x + size[1]], rtol=0, atol=1e-12)
    # the draws are the frame's own: another frame index or seed draws other masks
    assert not torch.equal(masks, rise_masks(12, 0.4, cell, size, seed=3, frame_index=6))
    assert not torch.equal(masks, rise_masks(12, 0.4, cell, size, seed=4, frame_index=5))


def test_equals_a_loop_reference(agent64, pong_rollout):
    x = preprocess_frames(pong_rollout.frames[FRAME : FRAME + 1], dtype=torch.float64)
    state = tuple(s[FRAME : FRAME + 1].double() for s in pong_rollout.states)
    action = int(pong_rollout.actions[FRAME])
    baseline = 0.25
    got = rise_saliency(agent64, x, state, MASKS, P, CELL, seed=7, actions=[action], baseline=baseline)
    masks = rise_masks(MASKS, P, CELL, (80, 80), seed=7, frame_index=0)
    actor, critic = torch.zeros(80, 80, dtype=torch.float64), torch.zeros(80, 80, dtype=torch.float64)
    with torch.no_grad():
        for mask in masks:  # one masked copy at a time, the paper's formula
            out = agent64(mask * x + (1 - mask) * baseline, state)
            actor += float(torch.softmax(out.logits[0], 0)[action]) * mask
            critic += float(out.value[0]) * mask
    actor, critic = actor / (MASKS * P), critic / (MASKS * P)
    assert actor.std() > 0 and critic.abs().max() > 0
    torch.testing.assert_close(got.actor[0], actor, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.critic[0], critic, rtol=1e-9, atol=1e-12)
    value = rise_saliency(agent64, x, state, MASKS, P, CELL, seed=7, response="value", baseline=baseline)
    assert torch.equal(value.actor, value.critic) and torch.equal(value.critic, got.critic)


def test_equals_xaitks_rise_on_the_same_masks(agent64, pong_rollout):
    """xaitk-saliency occludes the observation with our masks (its ``occlude_image_batch``), we run the agent on its
    images, and its ``RISEScoring`` makes the map: ours divided by its largest absolute value (xaitk's
    normalisation; ours is the paper's ``/ (N p)``)."""
    from xaitk_saliency.impls.gen_classifier_conf_sal.rise_scoring import RISEScoring
    from xaitk_saliency.utils.masking import occlude_image_batch

    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2].double() for s in pong_rollout.states)
    actions = pong_rollout.actions[FRAME : FRAME + 2]
    baseline = 0.5
    got = rise_saliency(agent64, frames, states, MASKS, P, CELL, seed=1, actions=actions, baseline=baseline)
    x = preprocess_frames(frames, dtype=torch.float64)
    for k in range(2):
        image = x[k].permute(1, 2, 0).numpy()  # (H, W, C), xaitk's layout
        masks = rise_masks(MASKS, P, CELL, (80, 80), seed=1, frame_index=k).numpy()
        occluded = occlude_image_batch(image, masks, fill=[baseline])  # (M, H, W, C)
        batch = torch.as_tensor(np.concatenate([image[None], occluded])).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            out = agent64(batch, tuple(s[k : k + 1].expand(batch.shape[0], -1) for s in states))
        probs, values = torch.softmax(out.logits, -1).numpy(), out.value.numpy()[:, None]
        want_actor = RISEScoring().generate(probs[0], probs[1:], masks)[int(actions[k])]
        want_critic = RISEScoring().generate(values[0], values[1:], masks)[0]
        for ours, want in ((got.actor[k], want_actor), (got.critic[k], want_critic)):
            assert np.abs(want).max() > 0
            torch.testing.assert_close(ours / ours.abs().max(), torch.as_tensor(want), rtol=1e-9, atol=1e-12)


def test_batching_never_changes_a_bit(pong_agent, inputs):
    frames, states, actions = inputs
    n = frames.shape[0]

    def run(f, s, a, per_eval, indices=None):
        return rise_saliency(
            pong_agent, f, s, MASKS, P, CELL, actions=a, frame_indices=indices, perturbations_per_eval=per_eval
        )

    reference = run(frames, states, actions, n * MASKS)
    for per_eval in (1, 7):
        again = run(frames, states, actions, per_eval)
        assert torch.equal(again.actor, reference.actor) and torch.equal(again.critic, reference.critic)
    for k in range(n):  # one at a time, with the frame's index: its masks, its maps
        alone = run(frames[k : k + 1], tuple(s[k : k + 1] for s in states), actions[k : k + 1], 7, [k])
        assert torch.equal(alone.actor[0], reference.actor[k]) and torch.equal(alone.critic[0], reference.critic[k])
    # the second frame alone at the default index 0 gets the first frame's masks, so other maps
    shifted = run(frames[1:], tuple(s[1:] for s in states), actions[1:], 7)
    assert not torch.equal(shifted.actor[0], reference.actor[1])


def test_the_restored_state_matters(pong_lstm_agent, pong_rollout, lstm_states):
    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2] for s in lstm_states)
    actions = pong_rollout.actions[FRAME : FRAME + 2]
    right = rise_saliency(pong_lstm_agent, frames, states, MASKS, P, CELL, actions=actions)
    zeros = tuple(torch.zeros_like(s) for s in states)
    wrong = rise_saliency(pong_lstm_agent, frames, zeros, MASKS, P, CELL, actions=actions)
    assert all(float(s.abs().max()) > 0 for s in states)
    for k in range(2):
        assert not torch.allclose(right.actor[k], wrong.actor[k], rtol=1e-3, atol=1e-6)
        assert not torch.allclose(right.critic[k], wrong.critic[k], rtol=1e-3, atol=1e-6)


def test_a_tiny_policy_by_hand():
    agent = TopLeftPixel()
    frames = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    frames[0, 0, 0, 0] = 255
    # p = 1: every mask is all ones, the copy is the observation: the map is f(x) = 1 everywhere
    kept = rise_saliency(agent, frames, (), num_masks=5, p=1.0, cell=4, response="value")
    torch.testing.assert_close(kept.critic, torch.ones(1, 16, 16, dtype=torch.float64), rtol=1e-12, atol=0)
    # p = 0.5: f(M_i x) = M_i(0, 0), so the map is sum_i M_i(0, 0) M_i / (N p)
    result = rise_saliency(agent, frames, (), num_masks=30, p=0.5, cell=4, response="value", baseline=0.0)
    masks = rise_masks(30, 0.5, 4, (16, 16))
    want = (masks[:, :1, :1] * masks).sum(0) / 15
    torch.testing.assert_close(result.critic[0], want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(p=0.0), r"p \(the probability that a cell is kept\) must be in \(0, 1\]"),
        (dict(p=1.5), r"p \(the probability that a cell is kept\) must be in \(0, 1\]"),
        (dict(num_masks=0), "num_masks must be a positive integer"),
        (dict(num_masks=2.5), "num_masks must be a positive integer"),
        (dict(cell=0), "cell must be an integer side"),
        (dict(cell=17), "cell must be an integer side"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(baseline=float("nan")), r"baseline must be in 0..1, the observations' scale"),
        (dict(baseline=255), r"baseline must be in 0..1, the observations' scale \(0 black, 1 white\), got 255"),
        (dict(baseline=-0.1), r"baseline must be in 0..1"),
        (dict(response="q"), "response must be one of"),
        (dict(response="action_prob", actions=None), "needs the action taken"),
        (dict(response="action_prob", actions=[0, 1]), "actions must be 1 integer action indices"),
        (dict(frame_indices=[0, 1]), "frame_indices must be 1 integer frame indices"),
        (dict(frame_indices=[-1]), "frame_indices must be non-negative"),
        (dict(frame_indices=[2**64]), r"frame_indices must be 1 integer frame indices in 0..2\*\*63-1"),
        (dict(num_masks=np.True_), "num_masks must be a positive integer"),
        (dict(perturbations_per_eval=0), "perturbations_per_eval must be a positive integer"),
        # the budget also sizes the map sums, with the passes' size given
        (dict(perturbations_per_eval=4, memory_budget_mb=float("nan")), "memory_budget_mb must be a finite number"),
        (dict(perturbations_per_eval=4, memory_budget_mb=0), "memory_budget_mb must be a finite number"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    frames = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        rise_saliency(TopLeftPixel(), frames, (), **{"num_masks": 4, "cell": 4, "response": "value", **kwargs})


class HalfTopLeftPixel(TopLeftPixel):
    dtype = torch.bfloat16


def _map_from_responses(responses: torch.Tensor, cell: int, p: float, frame_index: int) -> torch.Tensor:
    """The RISE map of one frame's responses to its masks, summed in float64 (the reference sum)."""
    grids, offsets = mask_draws(responses.shape[0], p, cell, (16, 16), 0, frame_index)
    masks = build_masks(grids, offsets, cell, (16, 16), torch.float64)
    return (responses.double()[:, None, None] * masks).sum(0) / (responses.shape[0] * p)


def test_a_half_precision_agents_map_is_summed_in_float32():
    """bfloat16 sums of 256 weighted masks lose about 1% of the map; the map is summed in float32 instead."""
    frames = torch.full((1, 1, 16, 16), 200, dtype=torch.uint8)
    result = rise_saliency(HalfTopLeftPixel(), frames, (), num_masks=256, cell=4, response="value")
    assert result.critic.dtype == torch.float32
    want = _map_from_responses(result.critic_responses[0], 4, 0.5, 0)
    assert float((result.critic[0].double() - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_the_maps_are_summed_a_few_frames_at_a_time_within_the_memory_budget(monkeypatch):
    """Summing the masks of many frames at once held N x 64 masks; the sums now take as many frames as the budget
    holds, with the same maps bit for bit."""
    frames = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    options = dict(num_masks=130, cell=4, response="value", perturbations_per_eval=1000)
    whole = rise_saliency(TopLeftPixel(), frames, (), **options)
    built: list[int] = []
    real = rise.build_masks
    monkeypatch.setattr(rise, "build_masks", lambda grids, *a: built.append(grids.shape[0]) or real(grids, *a))
    per_frame_block = rise.SUM_COPIES * rise.MASK_BLOCK * 16 * 16 * 8  # what a frame's block of float64 masks holds
    small = rise_saliency(TopLeftPixel(), frames, (), memory_budget_mb=2.5 * per_frame_block / 2**20, **options)
    assert max(built[1:]) <= 2 * rise.MASK_BLOCK  # the passes' masks (one call), then blocks of 2 frames
    assert torch.equal(small.critic, whole.critic) and torch.equal(small.actor, whole.actor)
    for k in range(6):
        want = _map_from_responses(whole.critic_responses[k], 4, 0.5, k)
        assert torch.allclose(whole.critic[k], want, rtol=1e-12, atol=1e-14)


def test_masks_that_cannot_fit_the_memory_budget_are_refused_before_they_are_drawn(monkeypatch):
    """10^9 masks of a frame used to end in the allocator's error after minutes of drawing; a frame's draws are now
    weighed against the memory budget first."""
    frames = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    monkeypatch.setattr(rise, "mask_draws", lambda *a: pytest.fail("drew masks"))
    with pytest.raises(ValueError, match=r"num_masks=1,000,000,000 needs about .* MB per frame for the masks"):
        rise_saliency(TopLeftPixel(), frames, (), num_masks=10**9, cell=4, response="value")
    with pytest.raises(ValueError, match="more than the memory budget of 1 MB: lower it, or raise memory_budget_mb"):
        rise_saliency(TopLeftPixel(), frames, (), num_masks=20_000, cell=4, response="value", memory_budget_mb=1)
    # a small budget and count: both sizes were "0 MB"
    with pytest.raises(ValueError, match=r"num_masks=64 needs about 0\.\d+ MB .* memory budget of 0\.001 MB"):
        rise_saliency(TopLeftPixel(), frames, (), num_masks=64, cell=4, response="value", memory_budget_mb=0.001)


def test_frames_whose_masks_do_not_fit_at_once_are_scored_in_groups_with_the_same_maps(monkeypatch):
    """A budget that holds one frame's draws but not a call's (the defaults with a small memory_budget_mb) scores
    the frames a group at a time: each frame's masks depend on its index alone, so the maps are the same."""
    frames = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    options = dict(num_masks=3000, cell=4, response="value", frame_indices=[7, 3, 0, 11, 2])
    whole = rise_saliency(TopLeftPixel(), frames, (), **options)
    drawn: list[int] = []
    real = rise.mask_draws
    monkeypatch.setattr(rise, "mask_draws", lambda *a: drawn.append(a[-1]) or real(*a))
    from engine.core.settings import draws_bytes

    one_frame = draws_bytes("rise", 3000, 1, (16, 16), 4, 8) / 2**20
    grouped = rise_saliency(TopLeftPixel(), frames, (), memory_budget_mb=2.5 * one_frame, **options)
    assert drawn == [7, 3, 0, 11, 2]  # in groups of 2, 2, 1: each frame's draws once
    for name in ("actor", "critic", "actor_responses", "critic_responses"):
        assert torch.equal(getattr(grouped, name), getattr(whole, name)), name


def test_the_methods_take_numpy_numbers_and_compute_saliency_checks_its_whole_call_first():
    """A sweep over np.arange gives numpy scalars: RISE, LIME and occlusion refused them ("num_masks must be a
    positive integer, got np.int64(8)"). compute_saliency dropped actions beyond its frames without a word, refused
    too few only at the batch that ran out, and ran the 2017 passes before RISE found no actions."""
    from engine.core.lime import lime_saliency
    from engine.core.occlusion import occlusion_sensitivity
    from engine.core.saliency import compute_saliency
    from engine.core.settings import RiseSettings, SaliencyConfig

    agent, frames = TopLeftPixel(), torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    taken = torch.tensor([0, 1, 0])
    rise_options = dict(num_masks=8, p=0.5, cell=4, seed=3, baseline=0.5, actions=taken)
    as_numpy = {
        k: np.int64(v) if isinstance(v, int) else np.float32(v) for k, v in rise_options.items() if k != "actions"
    }
    want = rise_saliency(agent, frames, (), **rise_options)
    got = rise_saliency(agent, frames, (), **as_numpy, actions=taken)
    assert torch.equal(want.actor, got.actor) and torch.equal(want.critic, got.critic)
    want = lime_saliency(agent, frames, (), num_samples=20, cell=8, alpha=1.0, actions=taken)
    got = lime_saliency(
        agent, frames, (), num_samples=np.int64(20), cell=np.int64(8), alpha=np.float32(1), actions=taken
    )
    assert torch.equal(want.actor, got.actor)
    want = occlusion_sensitivity(agent, frames, (), window=4, stride=4, value=0.5, actions=taken)
    got = occlusion_sensitivity(
        agent, frames, (), window=np.int64(4), stride=np.int64(4), value=np.float32(0.5), actions=taken
    )
    assert torch.equal(want.actor, got.actor)

    from engine.core.sarfa import sarfa_saliency

    disc = dict(radius=2.0, density=4, perturbation="disc")
    want = sarfa_saliency(agent, frames, (), **disc)
    got = sarfa_saliency(agent, frames, (), radius=np.float32(2), density=np.int64(4), perturbation="disc")
    assert torch.equal(want.actor, got.actor)

    config = SaliencyConfig(
        method=["perturbation", "rise"], density=8, radius=2, rise=RiseSettings(num_masks=8, cell=4)
    )
    one_batch = SaliencyConfig(**{**config.__dict__, "frames_per_batch": 2})
    for settings, actions, message in (
        (config, torch.tensor([0, 1, 0, 1]), r"actions must be 3 integer action indices .*got torch.int64 \(4,\)"),
        (one_batch, torch.tensor([0, 1]), r"actions must be 3 integer action indices .*got torch.int64 \(2,\)"),
        (config, None, "rise.response='action_prob' need the action taken on each frame: pass actions="),
    ):
        with pytest.raises(ValueError, match=message):
            compute_saliency(agent, frames, (), settings, actions=actions)
    with pytest.raises(TypeError, match=r"rise must be an engine\.core\.settings\.RiseSettings .*got dict"):
        compute_saliency(agent, frames, (), SaliencyConfig(method="rise", rise={"num_masks": 8}), actions=taken)
    with pytest.raises(ValueError, match="jacobian_backend must be one of autograd, func, got 'jax'"):
        compute_saliency(agent, frames, (), SaliencyConfig(method="jacobian", jacobian_backend="jax"))
