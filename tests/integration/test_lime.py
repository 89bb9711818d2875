"""LIME (Ribeiro et al. 2016) on the real baby-a3c Pong agents: equal to the ``lime`` package's image explainer made to
see the same thing (our grid segmentation, a constant hide colour, all features, its random draws), to a loop
reference, independent of how it is batched; recurrent agents scored at each frame's restored state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.core.lime import grid_segments, lime_saliency, lime_samples, lime_seed
from engine.core.preprocessing import preprocess_frames
from tests.integration.conftest import TopLeftPixel

FRAME = 45  # a frame of the seeded rollout with the ball in play and a non-zero state
SAMPLES, CELL = 40, 20  # 4 x 4 superpixels on 80x80 and few samples: the references stay short
FEATURES = 16


@pytest.fixture(scope="module")
def agent64(pong_agent):
    return copy.deepcopy(pong_agent).double()


@pytest.fixture(scope="module")
def inputs(pong_rollout):
    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2] for s in pong_rollout.states)
    return frames, states, pong_rollout.actions[FRAME : FRAME + 2]


def test_grid_segments():
    segments = grid_segments((5, 7), 3)  # 2 x 3 cells, the last row and column clipped
    assert segments.tolist() == [
        [0, 0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 1, 2],
        [3, 3, 3, 4, 4, 4, 5],
        [3, 3, 3, 4, 4, 4, 5],
    ]


def test_equals_the_lime_package(agent64, pong_rollout):
    from lime.lime_image import LimeImageExplainer

    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2].double() for s in pong_rollout.states)
    actions = pong_rollout.actions[FRAME : FRAME + 2]
    hide = 0.5
    got = lime_saliency(agent64, frames, states, SAMPLES, CELL, seed=3, actions=actions, hide_value=hide)
    x = preprocess_frames(frames, dtype=torch.float64)
    segments = grid_segments((80, 80), CELL).numpy()
    for k in range(2):
        state = tuple(s[k : k + 1] for s in states)

        def classify(images: np.ndarray, state=state) -> np.ndarray:  # (B, H, W, C) -> probabilities and value
            batch = torch.as_tensor(images).permute(0, 3, 1, 2).contiguous()
            with torch.no_grad():
                out = agent64(batch, tuple(s.expand(batch.shape[0], -1) for s in state))
            return torch.cat([torch.softmax(out.logits, -1), out.value[:, None]], 1).numpy()

        explainer = LimeImageExplainer(
            kernel_width=0.25, feature_selection="none", random_state=np.random.RandomState(lime_seed(3, k))
        )
        action, value_label = int(actions[k]), agent64.num_actions
        explanation = explainer.explain_instance(
            x[k].permute(1, 2, 0).numpy(),  # (H, W, 1): lime's layout, no gray2rgb for a 3-D image
            classify,
            labels=(action, value_label),
            hide_color=hide,
            top_labels=None,
            num_features=FEATURES,
            num_samples=SAMPLES,
            batch_size=SAMPLES,
            segmentation_fn=lambda image: segments,
            random_seed=0,  # lime draws a segmentation seed from its RandomState unless given one
        )
        for label, weights, intercept in (
            (action, got.actor_weights[k], got.actor_intercept[k]),
            (value_label, got.critic_weights[k], got.critic_intercept[k]),
        ):
            want = torch.zeros(FEATURES, dtype=torch.float64)
            for feature, coef in explanation.local_exp[label]:
                want[feature] = coef
            assert want.abs().max() > 0
            torch.testing.assert_close(weights, want, rtol=1e-7, atol=1e-10 * float(want.abs().max()))
            assert abs(float(intercept) - explanation.intercept[label]) <= 1e-7 * abs(explanation.intercept[label])
    assert torch.equal(got.actor[0], got.actor_weights[0][torch.as_tensor(segments)])


def test_equals_a_loop_reference(agent64, pong_rollout):
    x = preprocess_frames(pong_rollout.frames[FRAME : FRAME + 1], dtype=torch.float64)
    state = tuple(s[FRAME : FRAME + 1].double() for s in pong_rollout.states)
    got = lime_saliency(agent64, x, state, SAMPLES, CELL, seed=5, response="value", frame_indices=[9])
    samples = lime_samples(SAMPLES, FEATURES, seed=5, frame_index=9)
    assert samples[0].all() and not samples[1:].all()
    segments = grid_segments((80, 80), CELL)
    rows, ys, ws = [], [], []
    with torch.no_grad():
        for z in samples:  # one sample at a time: hidden superpixels black
            image = x.clone()
            for feature in range(FEATURES):
                if not z[feature]:
                    image[..., segments == feature] = 0.0
            ys.append(float(agent64(image, state).value[0]))
            rows.append([1.0] + z.double().tolist())
            d = 1 - float(z.sum()) ** 0.5 / FEATURES**0.5  # cosine distance to the all-on sample
            ws.append(np.sqrt(np.exp(-(d**2) / 0.25**2)))
    # ridge with an unpenalised intercept, in closed form: (A^T W A + diag(0, 1, ..., 1)) b = A^T W y
    a, y, wt = np.array(rows), np.array(ys), np.diag(ws)
    solution = np.linalg.solve(a.T @ wt @ a + np.diag([0.0] + [1.0] * FEATURES), a.T @ wt @ y)
    torch.testing.assert_close(got.critic_weights[0], torch.as_tensor(solution[1:]), rtol=1e-8, atol=1e-12)
    assert abs(float(got.critic_intercept[0]) - solution[0]) <= 1e-8 * abs(solution[0])


def test_batching_never_changes_a_bit(pong_agent, inputs):
    frames, states, actions = inputs
    n = frames.shape[0]

    def run(f, s, a, per_eval, indices=None):
        return lime_saliency(
            pong_agent, f, s, SAMPLES, CELL, actions=a, frame_indices=indices, perturbations_per_eval=per_eval
        )

    reference = run(frames, states, actions, n * SAMPLES)
    for per_eval in (1, 7):
        again = run(frames, states, actions, per_eval)
        assert torch.equal(again.actor, reference.actor) and torch.equal(again.critic, reference.critic)
    for k in range(n):
        alone = run(frames[k : k + 1], tuple(s[k : k + 1] for s in states), actions[k : k + 1], 7, [k])
        assert torch.equal(alone.actor[0], reference.actor[k]) and torch.equal(alone.critic[0], reference.critic[k])


def test_the_restored_state_matters(pong_lstm_agent, pong_rollout, lstm_states):
    frames = pong_rollout.frames[FRAME : FRAME + 2]
    states = tuple(s[FRAME : FRAME + 2] for s in lstm_states)
    actions = pong_rollout.actions[FRAME : FRAME + 2]
    right = lime_saliency(pong_lstm_agent, frames, states, SAMPLES, CELL, actions=actions)
    zeros = tuple(torch.zeros_like(s) for s in states)
    wrong = lime_saliency(pong_lstm_agent, frames, zeros, SAMPLES, CELL, actions=actions)
    assert all(float(s.abs().max()) > 0 for s in states)
    for k in range(2):
        assert not torch.allclose(right.actor[k], wrong.actor[k], rtol=1e-3, atol=1e-6)
        assert not torch.allclose(right.critic[k], wrong.critic[k], rtol=1e-3, atol=1e-6)


def test_a_tiny_policy_by_hand():
    # the value is 1 where superpixel 0 is on, else 0: an exact linear model, y = z_0; with no penalty the fit
    # finds it (coefficient 1 on superpixel 0, 0 elsewhere, intercept 0)
    frames = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    frames[0, 0, 0, 0] = 255
    result = lime_saliency(TopLeftPixel(), frames, (), num_samples=40, cell=8, response="value", alpha=0.0)
    want = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(result.critic_weights[0], want, rtol=0, atol=1e-12)
    assert abs(float(result.critic_intercept[0])) < 1e-12
    torch.testing.assert_close(result.critic[0, :8, :8], torch.ones(8, 8, dtype=torch.float64), rtol=0, atol=1e-12)
    # a bfloat16 agent (its responses 0 and 1 exact): fitted in float32, which a bfloat16 solve cannot do
    half = type("HalfTopLeftPixel", (TopLeftPixel,), {"dtype": torch.bfloat16})()
    fitted = lime_saliency(half, frames, (), num_samples=40, cell=8, response="value", alpha=0.0)
    assert fitted.critic_weights.dtype == torch.float32
    torch.testing.assert_close(fitted.critic_weights[0], want.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fit_with_no_single_solution_says_so(dtype):
    """alpha=0 with samples that do not determine every coefficient has no single ridge solution, whether the
    rounding leaves an exact zero pivot or not: one line that says what to change, not a linear-algebra traceback
    or arbitrary coefficients. Two cases among 6 samples of 4 superpixels: one on in every sample, and two that
    always move together."""
    frames = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    policy = type("TopLeftPixelOf", (TopLeftPixel,), {"dtype": dtype})()

    def constant(z):
        return bool(z.all(0).any())

    def together(z):
        return any(torch.equal(z[:, i], z[:, j]) for i in range(4) for j in range(i + 1, 4))

    for degenerate in (constant, together):
        seed = next(s for s in range(1000) if degenerate(lime_samples(6, 4, s, 0)))
        with pytest.raises(ValueError, match=r"no single solution: its samples determine [0-3] of the 4 .* alpha > 0"):
            lime_saliency(policy, frames, (), num_samples=6, cell=8, seed=seed, response="value", alpha=0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_samples=1), "num_samples must be an integer >= 2"),
        (dict(num_samples=2.5), "num_samples must be an integer >= 2"),
        (dict(cell=0), "cell must be an integer side"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(hide_value=float("inf")), r"hide_value must be in 0..1, the observations' scale"),
        (dict(hide_value=255), r"hide_value must be in 0..1, the observations' scale \(0 black, 1 white\), got 255"),
        # no ridge penalty: 4 cells of 8 pixels and an intercept are not determined by 4 samples
        (dict(alpha=0), r"alpha=0 \(no ridge penalty\) fits 4 superpixels .* needs num_samples > 4, got 4"),
        (dict(kernel_width=0), "kernel_width must be a positive number"),
        (dict(alpha=-1), "alpha must be a non-negative number"),
        (dict(response="q"), "response must be one of"),
        (dict(response="action_prob"), "needs the action taken"),
        (dict(frame_indices=[0, 1]), "frame_indices must be 1 integer frame indices"),
        (dict(perturbations_per_eval=0), "perturbations_per_eval must be a positive integer"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    frames = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        lime_saliency(TopLeftPixel(), frames, (), **{"num_samples": 4, "cell": 8, "response": "value", **kwargs})


def test_samples_that_cannot_fit_the_memory_budget_are_refused_before_they_are_drawn(monkeypatch):
    """LIME draws a frame's samples and fits them at once; a count whose draws and fit for one frame exceed the
    memory budget used to end in numpy's allocation error, and is now refused before anything is drawn."""
    from engine.core import lime

    frames = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    monkeypatch.setattr(lime, "lime_samples", lambda *a: pytest.fail("drew samples"))
    with pytest.raises(ValueError, match=r"num_samples=100,000,000 needs about .* MB per frame for the samples"):
        lime_saliency(TopLeftPixel(), frames, (), num_samples=10**8, cell=8, response="value")
    with pytest.raises(ValueError, match="num_samples=50,000 needs .*: lower it, or raise memory_budget_mb"):
        lime_saliency(TopLeftPixel(), frames, (), num_samples=50_000, cell=8, response="value", memory_budget_mb=0.5)


def test_frames_whose_samples_do_not_fit_at_once_are_fitted_in_groups_with_the_same_maps(monkeypatch):
    """A budget that holds one frame's samples and fit but not a call's scores the frames a group at a time, with
    the same maps (each frame's samples depend on its index alone, and each fit on its frame's)."""
    from engine.core import lime
    from engine.core.settings import draws_bytes

    frames = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    options = dict(num_samples=400, cell=4, response="value", frame_indices=[7, 3, 0, 11, 2])
    whole = lime_saliency(TopLeftPixel(), frames, (), **options)
    drawn: list[int] = []
    real = lime.lime_samples
    monkeypatch.setattr(lime, "lime_samples", lambda *a: drawn.append(a[-1]) or real(*a))
    one_frame = draws_bytes("lime", 400, 1, (16, 16), 4, 8) / 2**20
    grouped = lime_saliency(TopLeftPixel(), frames, (), memory_budget_mb=2.5 * one_frame, **options)
    assert drawn == [7, 3, 0, 11, 2]
    for name in ("actor", "critic", "actor_weights", "critic_weights", "actor_intercept", "critic_intercept"):
        assert torch.equal(getattr(grouped, name), getattr(whole, name)), name
