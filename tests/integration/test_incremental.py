"""Exact incremental inference: windows on a declared conv trunk give the plain batched pass's scores.

The 2017 agents (four 3x3/2 ELU convolutions) on real Pong frames, and a small agent of odd geometry (dilation,
groups, stride 3, a non-square 3-channel observation) that only the generic window arithmetic can serve; the
Nature-CNN agents are tested in tests/integration/test_any_policy.py."""

import copy

import pytest
import torch
from torch import nn

from engine.core.batching import pad_rows
from engine.core.blur import gaussian_blur
from engine.core.incremental import _structures, conv_trunk_of, cost_profile, trunk_geometry, window_plan, worthwhile
from engine.core.masks import perturb, perturbation_masks
from engine.core.perturbation import perturbation_saliency
from engine.core.policy import ConvTrunk, IncrementalPolicy, PolicyOutput, reset_rows
from engine.policies.greydanus2017 import ActorCritic
from tests.conftest import assert_float32_close, saliency_rounding


@pytest.mark.parametrize(
    "core,interp,radius,density",
    [
        ("gru", "occlude", 5, 5),
        ("gru", "searchlight", 3, 7),
        ("lstm", "occlude", 2, 9),
        ("lstm", "searchlight", 5, 10),
        ("gru", "occlude", 8, 16),
    ],
)
def test_incremental_equals_plain_pass(
    core, interp, radius, density, pong_agent, pong_lstm_agent, pong_rollout, lstm_states
):
    agent, states = (pong_agent, pong_rollout.states) if core == "gru" else (pong_lstm_agent, lstm_states)
    frames, state = pong_rollout.frames[40:43], tuple(s[40:43] for s in states)
    options = dict(radius=radius, density=density, interp=interp)
    plain = perturbation_saliency(agent, frames, state, incremental=False, **options)
    windows = perturbation_saliency(agent, frames, state, incremental=True, **options)
    # float rounding only (a patch's convolution may round differently): bounded by the plain pass's own
    rounding = saliency_rounding(
        perturbation_saliency, agent, frames, state, ("actor_scores", "critic_scores"), incremental=False, **options
    )
    for key in ("actor_scores", "critic_scores"):
        a, b = getattr(plain, key), getattr(windows, key)
        assert float(a.max()) > 0
        assert_float32_close(b, a, rounding[key])


def test_incremental_chunking_is_bit_identical(pong_agent, pong_rollout):
    frames, states = pong_rollout.frames[40:42], tuple(s[40:42] for s in pong_rollout.states)
    full = perturbation_saliency(pong_agent, frames, states, density=10, incremental=True, perturbations_per_eval=10**6)
    for chunk in (1, 7):
        part = perturbation_saliency(
            pong_agent, frames, states, density=10, incremental=True, perturbations_per_eval=chunk
        )
        assert torch.equal(part.actor_scores, full.actor_scores) and torch.equal(part.critic_scores, full.critic_scores)


# --- the generic window arithmetic -------------------------------------------------------------------------


def trunk_activations(trunk: ConvTrunk, x: torch.Tensor) -> list[torch.Tensor]:
    """Every trunk layer's activations of ``x`` (the plain pass's own modules, rows padded as the engine pads)."""
    n, out, a = x.shape[0], [], pad_rows(x) * trunk.input_scale
    for conv, act in trunk.layers:
        a = conv(a)
        a = a if act is None else act(a)
        out.append(a[:n])
    return out


def assert_changes_lie_in_windows(agent, plan, obs: torch.Tensor, masks: torch.Tensor, interp: str) -> None:
    """Each mask's changed activations, at every windowed trunk layer, lie inside its windows there (computed
    with plain passes: the copy's activations against its observation's, or its blur's, in the same batch)."""
    trunk = conv_trunk_of(agent)
    blurred = gaussian_blur(obs, 3)
    outside = obs if interp == "occlude" else blurred
    changed_somewhere = torch.zeros(plan.stop, dtype=torch.bool)
    with torch.inference_mode():
        for start in range(0, masks.shape[0], 48):
            chunk = masks[start : start + 48]
            copies = perturb(obs, blurred, chunk[:, None], interp)
            layers = trunk_activations(trunk, torch.cat([outside, copies]))
            for layer in range(1, plan.stop + 1):
                rows, cols, (h, w) = plan.windows[layer]
                diff = (layers[layer - 1][1:] != layers[layer - 1][:1]).any(dim=1)  # (masks, H', W')
                for i in range(chunk.shape[0]):
                    hit = diff[i].nonzero()
                    if not len(hit):
                        continue
                    changed_somewhere[layer - 1] = True
                    r0, c0 = int(rows[start + i]), int(cols[start + i])
                    assert r0 <= int(hit[:, 0].min()) and int(hit[:, 0].max()) < r0 + h, (layer, start + i, "rows")
                    assert c0 <= int(hit[:, 1].min()) and int(hit[:, 1].max()) < c0 + w, (layer, start + i, "columns")
    assert bool(changed_somewhere.all())


@pytest.mark.parametrize("radius,density", [(1, 5), (2.5, 4), (3, 5), (4, 9), (5, 5), (5, 7), (6, 3)])
def test_windows_cover_every_mask(radius, density, pong_agent, pong_rollout):
    masks = perturbation_masks(radius, density)
    plan = window_plan(trunk_geometry(pong_agent, conv_trunk_of(pong_agent)), masks)
    # every non-zero of every mask lies in its input patch (the plan checks this too) ...
    assert torch.equal((plan.mask_patches != 0).sum((1, 2)), (masks != 0).sum((1, 2)))
    # ... and each layer's window holds every activation the mask changes there
    obs = pong_rollout.observations[40:41].float() / 255
    assert_changes_lie_in_windows(pong_agent, plan, obs, masks, "occlude")


def test_auto_uses_windows_only_where_they_pay():
    geometry = trunk_geometry(ActorCritic(6), ActorCritic(6).conv_trunk())

    def pays(radius, density):
        return worthwhile(window_plan(geometry, perturbation_masks(radius, density)))

    assert pays(3, 5) and pays(5, 5)
    assert not pays(8, 5) and not pays(10, 5)
    with pytest.raises(ValueError, match="incremental must be"):
        perturbation_saliency(None, None, None, incremental="yes")


def test_fast_precision_uses_windows_where_they_pay_for_it():
    """Delta propagation does about twice the work per layer for the same fixed cost per copy, so on the CPU its
    windows pay where the exact path's break even: the Nature CNN at radius 5 (measured 1.1-1.2x faster windowed in
    fast mode, 0.97-1.05x exact: benchmarks/results/incremental_choice_cpu.json); neither pays at radius 8."""
    from tests.integration.test_any_policy import NatureAgent

    agent = NatureAgent()
    geometry = trunk_geometry(agent, conv_trunk_of(agent))

    def pays(radius, fast):
        return worthwhile(window_plan(geometry, perturbation_masks(radius, 5, size=(84, 84)), fast=fast))

    assert pays(3, False) and pays(3, True)
    assert not pays(5, False) and pays(5, True)
    assert not pays(8, False) and not pays(8, True)
    # the GPU's fast profile is its exact one until a GPU session times fast mode
    assert cost_profile(torch.device("cuda"), fast=True) == cost_profile(torch.device("cuda"))
    assert cost_profile(torch.device("cpu"), fast=True) != cost_profile(torch.device("cpu"))


def test_every_window_structure_equals_the_plain_pass_on_the_2017_agent(pong_rollout):
    torch.manual_seed(0)
    agent = ActorCritic(6, core="lstm").double().eval()
    obs = pong_rollout.observations[40:42]
    state = tuple(torch.randn(2, 256, dtype=torch.float64) * 0.3 for _ in range(2))
    plain = perturbation_saliency(agent, obs, state, radius=3, density=9, incremental=False)
    _check_structures(agent, obs, state, 3, 9, plain, "occlude")


def _check_structures(agent, obs, state, radius, density, plain, interp):
    """Forced through every choice of windowed layers and segments, the scores equal the plain pass's (float64)."""
    import engine.core.perturbation as perturbation

    geometry = trunk_geometry(agent, conv_trunk_of(agent))
    masks = perturbation_masks(radius, density, size=tuple(agent.observation_shape[1:]), dtype=torch.float64)
    seen = 0
    for structure in _structures(len(geometry.convs)):
        plan = window_plan(geometry, masks, structure)
        assert plan.structure == structure
        x = torch.as_tensor(obs).double() / 255
        with torch.inference_mode():
            actor, critic = perturbation.perturbation_scores(agent, x, state, masks, interp, 3, 50, plan)
        for got, want in ((actor, plain.actor_scores), (critic, plain.critic_scores)):
            want = want.flatten(1)
            assert float(want.abs().max()) > 0
            assert torch.allclose(got, want, rtol=0, atol=1e-12 * float(want.abs().max())), structure
        seen += 1
    assert seen == 2 ** len(geometry.convs) - 1


class OddAgent(nn.Module):
    """A feed-forward policy of odd geometry on (3, 50, 37): a dilated 5x5 conv (padding 4), a grouped 3x3/2 conv
    (padding 1), a 4x4/3 conv (no padding, rows it never reads), tanh and a linear head; input scale 2."""

    pipeline, frame_stack = "gymnasium_atari", 1

    def __init__(self):
        super().__init__()
        self.observation_shape, self.num_actions = (3, 50, 37), 4
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(3, 8, 5, padding=4, dilation=2),
                nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
                nn.Conv2d(8, 6, 4, stride=3),
            ]
        )
        self.head = nn.Linear(6 * 8 * 6, 5)

    device = property(lambda self: self.head.weight.device)
    dtype = property(lambda self: self.head.weight.dtype)

    def initial_state(self, batch: int = 1):
        return ()

    def reset_state(self, state, done):
        return reset_rows(state, done)

    def conv_trunk(self):
        return ConvTrunk(
            ((self.convs[0], torch.relu), (self.convs[1], torch.tanh), (self.convs[2], None)), input_scale=2.0
        )

    def from_trunk(self, activations, state, n=None):
        out = self.head(activations.flatten(1))
        return PolicyOutput(out[:n, 0], out[:n, 1:], ())

    def forward(self, obs, state, batch_invariant: bool = True):
        n = obs.shape[0]
        a = pad_rows(obs) * 2.0 if batch_invariant else obs * 2.0
        a = self.convs[2](torch.tanh(self.convs[1](torch.relu(self.convs[0](a)))))
        return self.from_trunk(a, state, n)


@pytest.fixture(scope="module")
def odd():
    torch.manual_seed(1)
    agent = OddAgent().double().eval()
    obs = (
        (torch.rand(2, 3, 13, 10) * 255).repeat_interleave(4, 2).repeat_interleave(4, 3)[:, :, :50, :37].to(torch.uint8)
    )
    return agent, obs


@pytest.mark.parametrize("interp,radius,density", [("occlude", 2, 4), ("searchlight", 1.5, 6)])
def test_any_geometry_equals_the_plain_pass(odd, interp, radius, density):
    agent, obs = odd
    assert isinstance(agent, IncrementalPolicy)
    plain = perturbation_saliency(agent, obs, (), radius=radius, density=density, interp=interp, incremental=False)
    assert plain.actor_scores.shape == (2, len(range(0, 50, density)), len(range(0, 37, density)))
    _check_structures(agent, obs, (), radius, density, plain, interp)
    windows = perturbation_saliency(agent, obs, (), radius=radius, density=density, interp=interp, incremental=True)
    assert torch.allclose(
        windows.actor_scores, plain.actor_scores, rtol=0, atol=1e-12 * float(plain.actor_scores.abs().max())
    )


def test_any_geometry_windows_cover_every_mask(odd):
    agent, obs = odd
    masks = perturbation_masks(2, 3, size=(50, 37), dtype=torch.float64)
    geometry = trunk_geometry(agent, agent.conv_trunk())
    for structure in _structures(3):
        assert_changes_lie_in_windows(
            agent, window_plan(geometry, masks, structure), obs[:1].double() / 255, masks, "occlude"
        )


def test_a_policy_without_the_declaration_runs_plain_passes(odd):
    agent, obs = odd

    class Plain(nn.Module):  # the same network, declaring nothing
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            for name in ("observation_shape", "num_actions", "pipeline", "frame_stack", "initial_state", "reset_state"):
                setattr(self, name, getattr(inner, name))

        device = property(lambda self: self.inner.device)
        dtype = property(lambda self: self.inner.dtype)

        def forward(self, obs, state, batch_invariant: bool = True):
            return self.inner(obs, state, batch_invariant)

    plain = Plain(agent)
    assert conv_trunk_of(plain) is None and not isinstance(plain, IncrementalPolicy)
    with pytest.raises(ValueError, match=r"incremental inference needs a policy that declares its conv trunk"):
        perturbation_saliency(plain, obs, (), density=6, incremental=True)
    auto = perturbation_saliency(plain, obs, (), density=6)
    assert torch.equal(
        auto.actor_scores, perturbation_saliency(agent, obs, (), density=6, incremental=False).actor_scores
    )


def test_a_declared_trunk_that_cannot_be_windowed_is_a_clear_error(odd):
    agent, obs = odd
    reflect = copy.deepcopy(agent)
    reflect.convs[0].padding_mode = "reflect"
    with pytest.raises(ValueError, match=r"padding_mode='reflect'; incremental inference needs zero padding"):
        perturbation_saliency(reflect, obs, (), density=6)
    wrong = copy.deepcopy(agent)
    wrong.conv_trunk = lambda: ConvTrunk(((wrong.convs[1], None),))
    with pytest.raises(ValueError, match=r"layer 1: takes 8 channels, but the layer before gives 3"):
        perturbation_saliency(wrong, obs, (), density=6, incremental=True)


def test_gpu_plans_have_one_segment(monkeypatch):
    """On a GPU every segment boundary costs more than it saves (measured on an H200): its plans have one."""
    import engine.core.incremental as incremental

    geometry = trunk_geometry(ActorCritic(6), ActorCritic(6).conv_trunk())
    masks = perturbation_masks(3, 5)
    window_plan.cache_clear()
    assert len(window_plan(geometry, masks).segments) > 1  # the CPU's choice
    window_plan.cache_clear()
    monkeypatch.setattr(incremental, "cost_profile", lambda device, fast=False: incremental.PROFILES["cuda"])
    plan = window_plan(geometry, masks)
    assert len(plan.segments) == 1 and worthwhile(plan)
    window_plan.cache_clear()


@pytest.mark.parametrize("shape", [(1, 86, 90), (3, 105, 80)], ids=["86x90", "105x80"])
def test_a_trunk_that_never_reads_the_last_rows_equals_the_plain_pass(shape):
    """A Nature CNN (8x8/4) on observations whose size its strides do not divide never reads the last rows and
    columns: a mask there changes nothing, and the windows cover each mask's part within the trunk's reach."""
    from engine.core.incremental import reach
    from engine.policies.sb3 import SB3ActorCritic

    torch.manual_seed(0)
    agent = SB3ActorCritic(shape, 4, features=32, separate_vf=False, shared=[], pi=[], vf=[], activation=None)
    agent = agent.double().eval()
    geometry = trunk_geometry(agent, agent.conv_trunk())
    assert reach(geometry, 0)[1] < shape[1] - 1 or reach(geometry, 1)[1] < shape[2] - 1  # the case at hand
    obs = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    options = dict(radius=5, density=9)
    plain = perturbation_saliency(agent, obs, (), incremental=False, **options)
    for incremental in (True, "auto"):
        windows = perturbation_saliency(agent, obs, (), incremental=incremental, **options)
        for key in ("actor_scores", "critic_scores"):
            a, b = getattr(plain, key), getattr(windows, key)
            assert torch.allclose(b, a, rtol=0, atol=1e-12 * float(a.abs().max())), (incremental, key)


def test_a_trunk_padded_beyond_its_kernel_runs_plain_passes_with_auto(odd):
    """A 1x1/2 first convolution padded by 1 reads padding only at some positions: the planner has no windows for it,
    so "auto" runs plain passes and incremental=True says why."""
    from engine.core.incremental import UnsupportedTrunk

    agent, obs = odd
    padded = copy.deepcopy(agent)
    padded.convs[0] = nn.Conv2d(3, 8, 1, stride=2, padding=1).double()
    padded.head = nn.Linear(6 * 4 * 3, 5).double()
    plain = perturbation_saliency(padded, obs, (), density=6, incremental=False)
    assert torch.equal(perturbation_saliency(padded, obs, (), density=6).actor_scores, plain.actor_scores)
    with pytest.raises(UnsupportedTrunk, match=r"padded by more than its kernel reaches\): use incremental=False"):
        perturbation_saliency(padded, obs, (), density=6, incremental=True)
