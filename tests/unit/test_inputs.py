"""Bad saliency inputs are refused with a message that names the problem, before any scoring starts."""

import numpy as np
import pytest
import torch

from engine.core.jacobian import jacobian_saliency
from engine.core.perturbation import perturbation_saliency
from engine.core.saliency import SaliencyConfig, compute_saliency
from engine.policies.greydanus2017 import ActorCritic


@pytest.fixture(scope="module")
def agent():
    torch.manual_seed(0)
    return ActorCritic(num_actions=6, core="lstm").eval()


def inputs(n: int, agent):
    x = torch.rand(n, 1, 80, 80, generator=torch.Generator().manual_seed(1))
    return x, agent.initial_state(n)


@pytest.mark.parametrize("method", [perturbation_saliency, jacobian_saliency])
def test_nan_frames_are_refused(agent, method):
    x, state = inputs(2, agent)
    x[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"preprocessed frames hold 1 NaN or infinite value"):
        method(agent, x, state)


@pytest.mark.parametrize("method", [perturbation_saliency, jacobian_saliency])
def test_nan_states_are_refused(agent, method):
    x, (h, c) = inputs(2, agent)
    c = c.clone()
    c[0, :3] = float("inf")
    with pytest.raises(ValueError, match=r"state tensor 1 hold 3 NaN or infinite value"):
        method(agent, x, (h, c))


def test_unscaled_observations_are_refused(agent):
    x, state = inputs(2, agent)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*got values in \[0\.\d+, 2\d\d"):
        perturbation_saliency(agent, x * 255, state)


def test_scaled_raw_frames_are_refused(agent):
    frames = np.random.default_rng(0).random((2, 210, 160, 3)).astype(np.float32)  # raw frames already /255
    with pytest.raises(ValueError, match=r"preprocessed frames must have shape \(N, 1, 80, 80\).*raw uint8"):
        perturbation_saliency(agent, frames, agent.initial_state(2))


def test_integer_states_are_refused(agent):
    x, _ = inputs(1, agent)
    with pytest.raises(ValueError, match="state tensor 0 must be floating point"):
        perturbation_saliency(agent, x, (torch.zeros(1, 256, dtype=torch.long), torch.zeros(1, 256)))


@pytest.mark.parametrize("frames,rows", [(3, 10), (10, 3)])
def test_compute_saliency_refuses_frames_and_states_that_do_not_pair(agent, frames, rows):
    x = torch.rand(frames, 1, 80, 80)
    with pytest.raises(ValueError, match=rf"state/frame count mismatch: {frames} frames but state rows \[{rows}\]"):
        compute_saliency(agent, x, agent.initial_state(rows), SaliencyConfig(density=20, frames_per_batch=2))


def test_compute_saliency_pairs_each_frame_with_its_state(agent):
    x, _ = inputs(3, agent)
    state = tuple(torch.randn(3, 256, generator=torch.Generator().manual_seed(2)) * 0.5 for _ in range(2))
    together = compute_saliency(agent, x, state, SaliencyConfig(density=20, frames_per_batch=2))
    for t in range(3):
        alone = perturbation_saliency(agent, x[t : t + 1], tuple(s[t : t + 1] for s in state), density=20)
        assert torch.equal(together["actor_scores"][t], alone.actor_scores[0].cpu())
        assert float(alone.actor_scores.max()) > 0


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_states_without_values_are_refused(agent, kind):
    x, state = inputs(1, agent)
    bad = tuple(s.to("meta") if kind == "meta" else s.to_sparse() for s in state)
    with pytest.raises(ValueError, match=r"state tensor 0 (is on the meta device|must be a dense tensor)"):
        perturbation_saliency(agent, x, bad, density=20)


def test_sparse_observations_are_refused(agent):
    x, state = inputs(1, agent)
    with pytest.raises(ValueError, match="observations must be a dense tensor"):
        perturbation_saliency(agent, x.to_sparse(), state, density=20)


@pytest.mark.parametrize("library", ["torch", "numpy"])
def test_a_broadcast_view_claiming_more_frames_than_memory_holds_is_refused_unallocated(agent, library):
    """A stride-0 view of one frame claiming 10^8 frames: its float copy would need 2.4 TiB; refused from the
    shape alone, before a byte of it is allocated."""
    one = np.zeros((1, 1, 80, 80), np.uint8)
    frames = (
        np.broadcast_to(one, (10**8, 1, 80, 80))
        if library == "numpy"
        else torch.from_numpy(one).expand(10**8, 1, 80, 80)
    )
    states = tuple(torch.zeros(1, 256).expand(10**8, 256) for _ in agent.initial_state(1))
    with pytest.raises(ValueError, match=r"10{8} observations would take .* GiB .* more than the .* GiB of cpu memory"):
        perturbation_saliency(agent, frames, states, density=20)


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((1, 1, 80, 80), dtype=object), "a numpy array of dtype object"),
        (np.zeros((1, 1, 80, 80), dtype="U1"), "a numpy array of dtype <U1"),
        (np.ma.masked_array(np.zeros((1, 1, 80, 80), np.uint8), mask=True), r"masked array .*frames.filled\(value\)"),
    ],
    ids=["objects", "strings", "masked"],
)
@pytest.mark.parametrize("method", [perturbation_saliency, jacobian_saliency])
def test_observations_that_are_not_numbers_are_refused(agent, method, frames, match):
    """Objects and strings are refused by name (not torch's own TypeError); a masked array, whose mask the engine
    would ignore, is refused with how to fill it."""
    with pytest.raises(TypeError, match=match):
        method(agent, frames, agent.initial_state(1))
