"""Exact incremental inference: windows on conv1..conv3 give the plain batched pass's scores."""

import pytest
import torch

from engine.incremental import window_plan, window_side, worthwhile
from engine.masks import perturbation_masks
from engine.perturbation import perturbation_saliency


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
    full = perturbation_saliency(pong_agent, frames, states, density=10, incremental=True, chunk_size=10**6)
    for chunk in (1, 7):
        part = perturbation_saliency(pong_agent, frames, states, density=10, incremental=True, chunk_size=chunk)
        assert torch.equal(part.actor_scores, full.actor_scores) and torch.equal(part.critic_scores, full.critic_scores)


@pytest.mark.parametrize("radius,density", [(1, 5), (3, 5), (5, 5), (5, 7), (6, 3)])
def test_windows_cover_every_mask(radius, density):
    masks = perturbation_masks(radius, density)
    plan = window_plan(float(radius), density, masks)
    # every non-zero of every mask lies in its input patch (the plan checks this too) ...
    assert torch.equal((plan.mask_patches != 0).sum((1, 2)), (masks != 0).sum((1, 2)))
    # ... every layer-2 window lies inside the 20x20 map (stored in the 21x21 map padded at the top/left) ...
    rows2, cols2 = plan.layer2_index // 21, plan.layer2_index % 21
    assert int(rows2.min()) >= 1 and int(cols2.min()) >= 1 and int(plan.layer2_index.max()) < 441
    assert plan.side == window_side(radius, density)
    # ... and each layer-3 window holds every layer-3 position its mask changes, and reads what conv3 reads
    support = masks != 0
    for m in range(masks.shape[0]):
        for axis, window in ((1, plan.layer3_index[m] // 10), (0, plan.layer3_index[m] % 10)):
            hit = support[m].any(dim=axis).nonzero()[:, 0]
            lo, hi = int(hit.min()), int(hit.max())  # the input rows this mask changes
            for size in (40, 20, 10):
                lo, hi = lo // 2, min((hi + 1) // 2, size - 1)
            assert int(window.min()) <= lo and hi <= int(window.max()), (m, axis)
        assert torch.equal(plan.region_rows[m], 2 * (plan.layer3_index[m][0] // 10) + torch.arange(2 * plan.side3 + 1))
        assert torch.equal(plan.region_cols[m], 2 * (plan.layer3_index[m][0] % 10) + torch.arange(2 * plan.side3 + 1))


def test_auto_uses_windows_only_where_they_pay():
    assert worthwhile(3, 5) and worthwhile(5, 5)
    assert not worthwhile(8, 5) and not worthwhile(20, 5)
    with pytest.raises(ValueError, match="incremental must be"):
        perturbation_saliency(None, None, None, incremental="yes")
