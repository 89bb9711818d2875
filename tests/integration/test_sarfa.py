"""SARFA (Puri et al. 2020) on the real baby-a3c Pong agents: its formula by hand, equal to a loop reference for the
Gaussian blur and the black disc, computed from the 2017 method's own forward passes (no pass of its own), and
independent of how it is batched; recurrent agents scored at each frame's restored state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from engine.core.blur import gaussian_blur
from engine.core.masks import perturbation_masks
from engine.core.perturbation import perturbation_saliency, upsample_exact
from engine.core.policy import PolicyOutput
from engine.core.preprocessing import preprocess_frames
from engine.core.sarfa import disc_masks, sarfa_saliency, sarfa_scores
from tests.conftest import assert_float32_close, saliency_rounding

FRAME = 45  # a frame of the seeded rollout with the ball in play and a non-zero state
DENSITY = 10  # 8 x 8 perturbations on 80x80: the loop references stay short


def _sarfa_plain(base: torch.Tensor, logits: torch.Tensor) -> float:
    """SARFA's score of one perturbed copy, written out from the paper (base, logits: (A,) preferences)."""
    a = int(base.argmax())
    p, q = torch.softmax(base, 0).tolist(), torch.softmax(logits, 0).tolist()
    d_p = p[a] - q[a]
    if d_p <= 0:
        return 0.0
    others = [k for k in range(len(p)) if k != a]
    p_rem = [p[k] / sum(p[j] for j in others) for k in others]
    q_rem = [q[k] / sum(q[j] for j in others) for k in others]
    kl = sum(pk * math.log(pk / qk) for pk, qk in zip(p_rem, q_rem))
    k = 1 / (1 + kl)
    return 2 * k * d_p / (k + d_p)


@pytest.fixture(scope="module")
def agent64(pong_agent):
    return copy.deepcopy(pong_agent).double()


@pytest.fixture(scope="module")
def inputs(pong_rollout):
    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2] for s in pong_rollout.states)
    return frames, states


def test_the_formula_by_hand():
    """KL(P_rem(s) || P_rem(s')) as the authors' code computes it; the other direction gives another score here."""
    # pi(s) = (.5, .3, .2): the explained action is 0; pi(s') = (.2, .6, .2): dP = .3, P_rem (.6, .4) -> (.75, .25)
    base = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64).log()
    perturbed = torch.tensor([[0.2, 0.6, 0.2]], dtype=torch.float64).log()
    kl = 0.6 * math.log(0.6 / 0.75) + 0.4 * math.log(0.4 / 0.25)
    k = 1 / (1 + kl)
    want = 2 * k * 0.3 / (k + 0.3)
    assert math.isclose(float(sarfa_scores(base, perturbed)[0]), want, rel_tol=1e-12)
    # the action's probability rose or stayed: 0; the others merely reshuffled (dP = 0): 0
    rose = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64).log()
    shuffled = torch.tensor([[0.5, 0.2, 0.3]], dtype=torch.float64).log()
    assert sarfa_scores(base.expand(3, 3), torch.cat([rose, base, shuffled])).tolist() == [0.0, 0.0, 0.0]
    # the other actions untouched (K = 1): S = 2 dP / (1 + dP); two actions: P_rem is one action, K = 1
    same_rest = torch.tensor([[0.25, 0.45, 0.30]], dtype=torch.float64).log()
    assert math.isclose(float(sarfa_scores(base, same_rest)[0]), 2 * 0.25 / 1.25, rel_tol=1e-12)
    two = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    d_p = float(torch.softmax(two, 1)[0, 0] - 0.5)
    assert math.isclose(float(sarfa_scores(two, torch.zeros(1, 2, dtype=torch.float64))[0]), 2 * d_p / (1 + d_p))


class _TopLeftPixel:
    """A policy that reads the top-left pixel x of a 20x20 observation: logits (x, 0, -x)."""

    observation_shape, num_actions, pipeline, frame_stack = (1, 20, 20), 3, "gymnasium_atari", 1
    device, dtype = torch.device("cpu"), torch.float64

    def __call__(self, obs, state):
        x = obs[:, 0, 0, 0]
        return PolicyOutput(x, torch.stack([x, torch.zeros_like(x), -x], dim=1), ())

    def initial_state(self, batch=1):
        return ()

    def reset_state(self, state, done):
        return state


def test_a_tiny_policy_by_hand():
    # white pixel at (0, 0), black elsewhere: action 0 is explained; only the disc at center (0, 0) reaches the
    # pixel and blacks it out: logits (1, 0, -1) -> (0, 0, 0)
    frames = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    frames[0, 0, 0, 0] = 255
    result = sarfa_saliency(_TopLeftPixel(), frames, (), radius=2, density=10, perturbation="disc")
    base, after = torch.tensor([1.0, 0.0, -1.0]), torch.zeros(3)
    want = torch.zeros(2, 2, dtype=torch.float64)
    want[0, 0] = _sarfa_plain(base.double(), after.double())
    assert want[0, 0] > 0
    torch.testing.assert_close(result.actor_scores[0], want, rtol=1e-12, atol=0)
    assert int(result.actor[0].argmax()) == 0 and result.centers.tolist() == [0, 10]


def test_blur_equals_a_loop_reference(agent64, pong_rollout):
    interp = "occlude"  # searchlight shares the 2017 method's perturbation and passes (tests/integration/test_perturbation.py)
    x = preprocess_frames(pong_rollout.frames[FRAME : FRAME + 1], dtype=torch.float64)
    state = tuple(s[FRAME : FRAME + 1].double() for s in pong_rollout.states)
    result = sarfa_saliency(agent64, x, state, radius=5, density=DENSITY, interp=interp)
    masks = perturbation_masks(5, DENSITY, "cpu", torch.float64, (80, 80))
    blurred = gaussian_blur(x, 3.0)
    want = torch.zeros(masks.shape[0], dtype=torch.float64)
    with torch.no_grad():
        base = agent64(x, state).logits[0]
        for i, mask in enumerate(masks):  # one perturbed copy at a time, the spec's formulas
            perturbed = x * (1 - mask) + blurred * mask
            want[i] = _sarfa_plain(base, agent64(perturbed, state).logits[0])
    assert want.max() > 1e-3 and (want == 0).any()  # a frame where some perturbations matter, some do not
    torch.testing.assert_close(result.actor_scores[0].flatten(), want, rtol=1e-9, atol=1e-12)
    assert torch.equal(result.actor, upsample_exact(result.actor_scores, DENSITY, (80, 80)))


def test_disc_equals_a_loop_reference(agent64, pong_rollout):
    radius, density = 3, DENSITY
    x = preprocess_frames(pong_rollout.frames[FRAME : FRAME + 1], dtype=torch.float64)
    state = tuple(s[FRAME : FRAME + 1].double() for s in pong_rollout.states)
    result = sarfa_saliency(agent64, x, state, radius=radius, density=density, perturbation="disc")
    yy, xx = torch.meshgrid(torch.arange(80), torch.arange(80), indexing="ij")
    want = []
    with torch.no_grad():
        base = agent64(x, state).logits[0]
        for i in range(0, 80, density):
            for j in range(0, 80, density):
                perturbed = x.clone()
                perturbed[..., (yy - i) ** 2 + (xx - j) ** 2 <= radius**2] = 0.0  # a black disc on all channels
                want.append(_sarfa_plain(base, agent64(perturbed, state).logits[0]))
    want_t = torch.tensor(want, dtype=torch.float64)
    assert want_t.max() > 1e-3
    torch.testing.assert_close(result.actor_scores[0].flatten(), want_t, rtol=1e-9, atol=1e-12)
    # the disc masks: radius 3 holds 29 pixels away from the border
    assert int(disc_masks(radius, density, (80, 80), torch.device("cpu"), torch.float64)[9].sum()) == 29


class _Counting:
    """Counts an agent's forward passes, plain (``forward``) and incremental (``from_trunk``), and keeps each one's
    logits."""

    def __init__(self, agent, monkeypatch):
        self.calls: list[torch.Tensor] = []
        forward, from_trunk = agent.forward, agent.from_trunk

        def counted_forward(*args, **kwargs):
            out = forward(*args, **kwargs)
            self.calls.append(out.logits.clone())
            return out

        def counted_from_trunk(*args, **kwargs):
            out = from_trunk(*args, **kwargs)
            self.calls.append(out.logits.clone())
            return out

        monkeypatch.setattr(agent, "forward", counted_forward)
        monkeypatch.setattr(agent, "from_trunk", counted_from_trunk)


@pytest.mark.parametrize("incremental", [True, False])
def test_blur_reuses_the_2017_passes(pong_agent, inputs, monkeypatch, incremental):
    frames, states = inputs
    counter = _Counting(pong_agent, monkeypatch)
    kwargs = dict(radius=5, density=DENSITY, incremental=incremental, perturbations_per_eval=50)
    perturbation_saliency(pong_agent, frames, states, **kwargs)
    passes_2017 = list(counter.calls)
    counter.calls.clear()
    result = sarfa_saliency(pong_agent, frames, states, **kwargs)
    assert len(counter.calls) == len(passes_2017) == 1 + math.ceil(2 * 64 / 50)  # the unperturbed pass, then copies
    # SARFA's scores are the 2017 passes' logits put through SARFA's formula
    base, copies = passes_2017[0], torch.cat(passes_2017[1:])
    frame = torch.arange(copies.shape[0]) // 64
    assert torch.equal(result.actor_scores.flatten(), sarfa_scores(base[frame], copies))
    assert result.actor_scores.max() > 1e-3


def test_incremental_equals_plain_passes(pong_agent, inputs):
    frames, states = inputs
    for perturbation, radius, density in (("blur", 5, DENSITY), ("disc", 2, 8)):
        plain = sarfa_saliency(
            pong_agent, frames, states, radius, density, perturbation=perturbation, incremental=False
        )
        windows = sarfa_saliency(
            pong_agent, frames, states, radius, density, perturbation=perturbation, incremental=True
        )
        options = dict(perturbation=perturbation, incremental=False)
        exact = saliency_rounding(
            lambda p, f, s, r=radius, d=density, **o: sarfa_saliency(p, f, s, r, d, **o),
            pong_agent,
            frames,
            states,
            ("actor_scores",),
            **options,
        )
        assert_float32_close(windows.actor_scores, plain.actor_scores, exact["actor_scores"])


@pytest.mark.parametrize("perturbation", ["blur", "disc"])
def test_batching_never_changes_a_bit(pong_agent, inputs, perturbation):
    frames, states = inputs
    density = DENSITY if perturbation == "blur" else 8
    n, m = frames.shape[0], 64 if perturbation == "blur" else 100

    def run(f, s, per_eval):
        return sarfa_saliency(
            pong_agent, f, s, density=density, perturbation=perturbation, perturbations_per_eval=per_eval
        )

    reference = run(frames, states, n * m)
    for per_eval in (1, 7):
        again = run(frames, states, per_eval)
        assert torch.equal(again.actor_scores, reference.actor_scores) and torch.equal(again.actor, reference.actor)
    for k in range(n):
        alone = run(frames[k : k + 1], tuple(s[k : k + 1] for s in states), 7)
        assert torch.equal(alone.actor[0], reference.actor[k])


def test_the_restored_state_matters(pong_lstm_agent, pong_rollout, lstm_states):
    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2] for s in lstm_states)
    right = sarfa_saliency(pong_lstm_agent, frames, states, density=DENSITY)
    wrong = sarfa_saliency(pong_lstm_agent, frames, tuple(torch.zeros_like(s) for s in states), density=DENSITY)
    assert all(float(s.abs().max()) > 0 for s in states)
    for k in range(2):
        assert right.actor_scores[k].max() > 0
        assert not torch.allclose(right.actor_scores[k], wrong.actor_scores[k], rtol=1e-3, atol=1e-6)
        # each frame scored alone at its own state gives its maps
        alone = sarfa_saliency(pong_lstm_agent, frames[k : k + 1], tuple(s[k : k + 1] for s in states), density=DENSITY)
        assert torch.equal(alone.actor[0], right.actor[k])


class _OneAction(_TopLeftPixel):
    num_actions = 1

    def __call__(self, obs, state):
        x = obs[:, 0, 0, 0]
        return PolicyOutput(x, x[:, None], ())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(perturbation="noise"), "perturbation must be one of"),
        (dict(radius=0), "radius must be a number"),
        (dict(radius=100.0, perturbation="disc"), r"radius must be .* \(the black disc's radius in pixels; Huber"),
        (dict(radius=100.0), r"radius must be .* \(the mask blur sigma; the paper uses 5\)"),
        (dict(density=0), "density must be in"),
        (dict(density=2.5), "density must be an integer"),
        (dict(interp="inside"), "interp must be one of"),
        (dict(blur_sigma=-1), "blur_sigma must be a number"),
        (dict(incremental="maybe"), "incremental must be True, False or 'auto'"),
        (dict(incremental=0), "incremental must be True, False or 'auto', got 0"),
        (dict(incremental=True), "incremental inference needs a policy that declares its conv trunk"),
        (dict(perturbations_per_eval=0), "perturbations_per_eval must be a positive integer"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    frames = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        sarfa_saliency(_TopLeftPixel(), frames, (), **kwargs)


def test_one_action_is_refused():
    with pytest.raises(ValueError, match="SARFA compares an action with the others"):
        sarfa_saliency(_OneAction(), torch.zeros(1, 1, 20, 20, dtype=torch.uint8), (), density=10)


def test_beside_the_2017_method_sarfa_adds_no_pass(pong_agent, inputs, monkeypatch):
    """``saliency.method=[perturbation,sarfa]`` with SARFA's blur at the 2017 settings: SARFA's grid and map are
    read off the 2017 method's passes (no pass more than the 2017 method alone makes), equal to SARFA alone."""
    from engine.core.saliency import compute_saliency
    from engine.core.settings import SaliencyConfig

    frames, states = inputs
    settings = dict(density=DENSITY, perturbations_per_eval=50)
    alone = sarfa_saliency(pong_agent, frames, states, radius=5, density=DENSITY, perturbations_per_eval=50)
    counter = _Counting(pong_agent, monkeypatch)
    only_2017 = compute_saliency(pong_agent, frames, states, SaliencyConfig(method="perturbation", **settings))
    passes_2017 = len(counter.calls)
    counter.calls.clear()
    both = compute_saliency(pong_agent, frames, states, SaliencyConfig(method=["perturbation", "sarfa"], **settings))
    assert len(counter.calls) == passes_2017
    assert torch.equal(both["actor"], only_2017["actor"])
    assert torch.equal(both["sarfa_actor_scores"], alone.actor_scores) and torch.equal(both["sarfa_actor"], alone.actor)
    assert alone.actor_scores.max() > 1e-3


def test_beside_the_fast_2017_method_sarfa_runs_its_own_passes(pong_agent, inputs):
    """Fast precision computes the logits' score only: SARFA read off its passes would put them back on the exact
    path, so the 2017 maps equal perturbation_saliency(precision="fast") and SARFA's equal SARFA alone."""
    from engine.core.perturbation import perturbation_saliency
    from engine.core.saliency import compute_saliency
    from engine.core.settings import SaliencyConfig

    frames, states = inputs
    settings = SaliencyConfig(method=["perturbation", "sarfa"], density=DENSITY, precision="fast")
    both = compute_saliency(pong_agent, frames, states, settings)
    fast = perturbation_saliency(pong_agent, frames, states, density=DENSITY, precision="fast")
    exact = perturbation_saliency(pong_agent, frames, states, density=DENSITY)
    assert not torch.equal(fast.actor, exact.actor)  # the test can tell the two paths apart
    assert torch.equal(both["actor"], fast.actor.cpu()) and torch.equal(both["critic"], fast.critic.cpu())
    alone = sarfa_saliency(pong_agent, frames, states, radius=5, density=DENSITY)
    assert torch.equal(both["sarfa_actor"], alone.actor.cpu())
