"""Exact incremental inference: windows on conv1..conv3 give the plain batched pass's scores."""

import pytest
import torch

from engine.core.incremental import window_plan, window_side, worthwhile
from engine.core.masks import perturbation_masks
from engine.core.perturbation import perturbation_saliency


@pytest.mark.parametrize(
    "core,interp,radius,density",
    [("gru", "occlude", 5, 5), ("gru", "searchlight", 3, 7), ("lstm", "occlude", 2, 9), ("lstm", "searchlight", 5, 10), ("gru", "occlude", 8, 16)],
)
def test_incremental_equals_plain_pass(core, interp, radius, density, pong_agent, pong_lstm_agent, pong_rollout, lstm_states):
    agent, states = (pong_agent, pong_rollout.states) if core == "gru" else (pong_lstm_agent, lstm_states)
    frames, state = pong_rollout.frames[40:43], tuple(s[40:43] for s in states)
    options = dict(radius=radius, density=density, interp=interp)
    plain = perturbation_saliency(agent, frames, state, incremental=False, **options)
    windows = perturbation_saliency(agent, frames, state, incremental=True, **options)
    for key in ("actor_scores", "critic_scores"):
        a, b = getattr(plain, key), getattr(windows, key)
        # float rounding only (a patch's convolution may round differently); in practice bit-identical here
        assert torch.allclose(a, b, rtol=0, atol=1e-6 * float(a.abs().max())), key
        assert float(a.max()) > 0


def test_incremental_chunking_is_bit_identical(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[40:42], tuple(s[40:42] for s in pong_rollout.states)
    full = perturbation_saliency(pong_agent, frames, states, density=10, incremental=True, perturbations_per_eval=10**6)
    for chunk in (1, 7):
        part = perturbation_saliency(pong_agent, frames, states, density=10, incremental=True, perturbations_per_eval=chunk)
        assert torch.equal(part.actor_scores, full.actor_scores) and torch.equal(part.critic_scores, full.critic_scores)


@pytest.mark.parametrize("radius,density", [(1, 5), (2.5, 4), (3, 5), (4, 9), (5, 5), (5, 7), (6, 3)])
def test_windows_cover_every_mask(radius, density):
    masks = perturbation_masks(radius, density)
    plan = window_plan(float(radius), density, masks)
    # every non-zero of every mask lies in its input patch (the plan checks this too) ...
    assert torch.equal((plan.mask_patches != 0).sum((1, 2)), (masks != 0).sum((1, 2)))
    assert plan.side == window_side(radius, density)
    # ... and the windows of each layer hold every position the mask changes there: layer 2 (inside conv3's
    # input region, which lies in the map) and layer 3
    side = 2 * plan.side3 + 1
    support = masks != 0
    for m in range(masks.shape[0]):
        o3 = {0: int(plan.region_rows[m]), 1: int(plan.region_cols[m])}
        assert 0 <= min(o3.values()) and max(o3.values()) + plan.side3 <= 10
        window2 = {0: plan.window2_index[m] // side, 1: plan.window2_index[m] % side}  # in the region
        window3 = {0: plan.layer3_index[m] // 10, 1: plan.layer3_index[m] % 10}
        for axis in (0, 1):
            hit = support[m].any(dim=1 - axis).nonzero()[:, 0]
            lo, hi = int(hit.min()), int(hit.max())  # the input rows (axis 0) or columns this mask changes
            changed = []
            for size in (40, 20, 10):
                lo, hi = lo // 2, min((hi + 1) // 2, size - 1)
                changed.append((lo, hi))
            rows2 = 2 * o3[axis] - 1 + window2[axis]  # layer-2 rows of the window (-1 = padding)
            assert int(window2[axis].min()) >= 0 and int(window2[axis].max()) < side and int(rows2.min()) >= 0
            assert int(rows2.min()) <= changed[1][0] and changed[1][1] <= int(rows2.max()), (m, axis)
            assert int(window3[axis].min()) == o3[axis] and o3[axis] <= changed[2][0], (m, axis)
            assert changed[2][1] <= int(window3[axis].max()), (m, axis)


def test_auto_uses_windows_only_where_they_pay():
    assert worthwhile(3, 5) and worthwhile(5, 5)
    assert not worthwhile(8, 5) and not worthwhile(20, 5)
    with pytest.raises(ValueError, match="incremental must be"):
        perturbation_saliency(None, None, None, incremental="yes")
