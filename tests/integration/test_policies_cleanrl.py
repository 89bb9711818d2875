"""CleanRL adapters (engine.policies.cleanrl): files saved as the scripts save them load, and the outputs equal the
scripts' own ``get_action_and_value`` / ``get_value`` / ``QNetwork`` outputs; bad files are clear CheckpointErrors.

The agents are the scripts' own classes (tests/cleanrl_scripts.py, copied from CleanRL), seeded, saved with
``torch.save(agent.state_dict(), path)``. Observations at the policy interface are ``bytes / 255``; the scripts get
the bytes as floats and divide by 255 themselves.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine.core.errors import CheckpointError
from engine.core.policy import Policy
from engine.policies.cleanrl import (
    ARCHITECTURES,
    CleanRLDQN,
    CleanRLPPO,
    CleanRLPPOLSTM,
    identify_cleanrl,
    load_cleanrl,
)
from engine.policies.greydanus2017 import ActorCritic
from tests.cleanrl_scripts import (
    CHANNELS,
    ContinuousAgent,
    MLPQNetwork,
    fake_envs,
    make_agent,
    random_bytes,
    save_like_cleanrl,
)
from tests.conftest import assert_float32_close, saliency_rounding

N = 37  # an odd batch, padded to 40 rows
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{script: (script agent, path of its saved state dict)}."""
    folder = tmp_path_factory.mktemp("cleanrl")
    out = {}
    for script in ARCHITECTURES:
        agent = make_agent(script, num_actions=6, seed=len(script))
        path = folder / f"{script}.cleanrl_model"
        save_like_cleanrl(agent, path)
        out[script] = (agent, path)
    return out


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """|a - b| <= tol * max|b| (relative to the largest value)."""
    return bool((a - b).abs().max() <= TOL[dtype] * b.abs().max().clamp_min(1e-30))


def script_outputs(script: str, agent, x: torch.Tensor, lstm_state=None, done=None):
    """The script's own log-probability of every action (None for the Q-network), its raw logits (Q-values) and
    value (``max_a Q``) on the bytes ``x``."""
    n, actions = x.shape[0], 6
    with torch.no_grad():
        if script == "dqn_atari":
            q = agent(x)  # the Q-values: no distribution to compare
            return None, q, q.max(dim=1).values
        args = (lstm_state, done) if script == "ppo_atari_lstm" else ()
        # log pi(a | x) for every action a, from the script's get_action_and_value
        logprobs = torch.stack(
            [agent.get_action_and_value(x, *args, torch.full((n,), a, dtype=torch.long))[1] for a in range(actions)], 1
        )
        out = agent.get_action_and_value(x, *args)
        value = agent.get_value(x, *args)
        assert torch.equal(value, out[3])
        if script == "ppo_atari_lstm":
            hidden, _ = agent.get_states(x, lstm_state, done)
            raw = agent.actor(hidden)
        else:
            raw = agent.actor(agent.network(x / 255.0))
        return logprobs, raw, value.squeeze(-1)


@pytest.mark.parametrize("script", ARCHITECTURES)
def test_loads_what_the_script_saves(saved, script):
    policy = load_cleanrl(saved[script][1], device="cpu")
    cls = {"ppo_atari": CleanRLPPO, "ppo_atari_lstm": CleanRLPPOLSTM, "dqn_atari": CleanRLDQN}[script]
    assert type(policy) is cls and policy.script == script
    assert isinstance(policy, Policy)
    assert policy.num_actions == 6
    assert policy.observation_shape == (CHANNELS[script], 84, 84)
    assert policy.frame_stack == {"ppo_atari": 4, "ppo_atari_lstm": 1, "dqn_atari": 4}[script]
    assert policy.pipeline == "cleanrl_atari"
    assert policy.device == torch.device("cpu") and policy.dtype == torch.float32 and not policy.training
    # the parameter names are the script's own: the file loads back into the script's class, strictly
    assert list(policy.state_dict()) == list(saved[script][0].state_dict())
    state = policy.initial_state(3)
    assert state == () if script != "ppo_atari_lstm" else [tuple(s.shape) for s in state] == [(3, 128), (3, 128)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("script", ["ppo_atari", "dqn_atari"])
def test_feed_forward_outputs_equal_the_script(saved, script, dtype):
    agent, path = saved[script]
    agent = copy.deepcopy(agent).to(dtype)
    policy = load_cleanrl(path, device="cpu", dtype=dtype)
    x = random_bytes(N, 4).to(dtype)
    with torch.no_grad():
        out = policy(x / 255, ())
    logprobs, raw, value = script_outputs(script, agent, x)
    assert out.logits.shape == (N, 6) and out.value.shape == (N,) and out.state == ()
    assert out.logits.dtype == dtype
    assert close(out.logits, raw, dtype) and close(out.value, value, dtype)
    if logprobs is not None:
        assert close(torch.log_softmax(out.logits, dim=1), logprobs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_sequence_equals_the_script(saved, dtype):
    """Step by step, from a non-zero state, with episodes ending mid-sequence: the script's rollout calls
    ``get_action_and_value(next_obs, next_lstm_state, next_done)``; ``next_done`` resets the state before the step."""
    agent, path = saved["ppo_atari_lstm"]
    agent = copy.deepcopy(agent).to(dtype)
    policy = load_cleanrl(path, device="cpu", dtype=dtype)
    steps, envs = 6, 5
    x = random_bytes(steps * envs, 1, seed=3).to(dtype).view(steps, envs, 1, 84, 84)
    done = torch.zeros(steps, envs, dtype=dtype)
    done[2, 1] = done[3, 0] = done[3, 4] = 1.0  # those envs start a new episode at that step
    g = torch.Generator().manual_seed(4)
    start = tuple(0.5 * torch.randn(1, envs, 128, generator=g, dtype=dtype) for _ in range(2))  # rows all differ
    script_state, state = start, tuple(s[0] for s in start)
    values, logits = [], []
    for t in range(steps):
        logprobs, raw, value = script_outputs("ppo_atari_lstm", agent, x[t], script_state, done[t])
        with torch.no_grad():
            script_state = agent.get_action_and_value(x[t], script_state, done[t])[4]
            state = policy.reset_state(state, done[t].bool())
            out = policy(x[t] / 255, state)
        state = out.state
        assert close(out.logits, raw, dtype) and close(out.value, value, dtype)
        assert close(torch.log_softmax(out.logits, 1), logprobs, dtype)
        for ours, theirs in zip(state, script_state):
            assert ours.shape == (envs, 128) and close(ours, theirs[0], dtype)
        values.append(out.value)
        logits.append(out.logits)
    # the update phase's call on the whole sequence at once gives the same values
    with torch.no_grad():
        _, _, _, seq_value, seq_state = agent.get_action_and_value(x.flatten(0, 1), start, done.flatten())
    assert close(torch.cat(values), seq_value.squeeze(-1), dtype)
    assert close(state[0], seq_state[0][0], dtype) and close(state[1], seq_state[1][0], dtype)


def test_lstm_reset_zeroes_only_the_done_rows(saved):
    policy = load_cleanrl(saved["ppo_atari_lstm"][1], device="cpu")
    state = (torch.randn(4, 128), torch.randn(4, 128))
    done = torch.tensor([False, True, False, True])
    reset = policy.reset_state(state, done)
    for before, after in zip(state, reset):
        assert torch.equal(after[~done], before[~done]) and not after[done].any()


@pytest.mark.parametrize("script", ARCHITECTURES)
def test_batch_invariant(saved, script):
    """One observation alone, or in a batch of 37, gives bit-identical outputs (and next states)."""
    policy = load_cleanrl(saved[script][1], device="cpu")
    obs = random_bytes(N, CHANNELS[script], seed=5).float() / 255
    state = tuple(torch.randn(N, 128, generator=torch.Generator().manual_seed(6)) for _ in policy.initial_state(1))
    with torch.no_grad():
        batch = policy(obs, state)
        for row in (0, 17, N - 1):
            one = policy(obs[row : row + 1], tuple(s[row : row + 1] for s in state))
            assert torch.equal(one.logits[0], batch.logits[row]) and torch.equal(one.value[0], batch.value[row])
            assert all(torch.equal(a[0], b[row]) for a, b in zip(one.state, batch.state))


def test_sizes_come_from_the_file(tmp_path):
    """18 actions (ALE's full set) and another frame stack are read from the shapes."""
    agent = make_agent("dqn_atari", num_actions=18)
    save_like_cleanrl(agent, tmp_path / "q.pt")
    policy = load_cleanrl(tmp_path / "q.pt", device="cpu")
    assert policy.num_actions == 18 and policy.observation_shape == (4, 84, 84)
    sd = make_agent("ppo_atari").state_dict()
    sd["network.0.weight"] = sd["network.0.weight"][:, :2].clone()  # a 2-frame stack
    assert identify_cleanrl(sd) == ("ppo_atari", {"channels": 2, "num_actions": 6})


# --- bad files -----------------------------------------------------------------------------------------------------


def _write(tmp_path, name, payload) -> str:
    path = tmp_path / name
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    return str(path)


def _ppo(**changes):
    sd = dict(make_agent("ppo_atari").state_dict())
    for key, value in changes.items():
        if value is None:
            del sd[key]
        else:
            sd[key] = value
    return sd


BAD = {
    "continuous": (lambda: ContinuousAgent(fake_envs(3, (17,), continuous=True)).state_dict(), "continuous-action"),
    "mlp_dqn": (lambda: MLPQNetwork(fake_envs(2, (4,))).state_dict(), "MLP on vector observations"),
    "mlp_ppo": (
        lambda: {"actor.0.weight": torch.zeros(64, 4), "critic.0.weight": torch.zeros(64, 4)},
        "classic-control ppo",
    ),
    "c51": (lambda: {**make_agent("dqn_atari").state_dict(), "atoms": torch.linspace(-10, 10, 51)}, "distributional"),
    "agent_2017": (lambda: ActorCritic(6, core="lstm").state_dict(), "load_agent"),
    "unknown_keys": (lambda: {"encoder.weight": torch.zeros(3, 3)}, "no 'network.0.weight'"),
    "extra_key": (lambda: _ppo(**{"aux.weight": torch.zeros(2, 2)}), "unexpected ['aux.weight']"),
    "missing_key": (lambda: _ppo(**{"critic.bias": None}), "missing ['critic.bias']"),
    "wrong_shape": (lambda: _ppo(**{"network.7.weight": torch.zeros(512, 2304)}), "84x84 observation"),
    "nan": (lambda: _ppo(**{"actor.weight": torch.full((6, 512), float("nan"))}), "non-finite"),
    "integer": (lambda: _ppo(**{"actor.bias": torch.zeros(6, dtype=torch.int64)}), "floating point"),
    "list": (lambda: [torch.zeros(3)], "not a state dict"),
    "absurd_actions": (
        lambda: _ppo(**{"actor.weight": torch.zeros(5000, 512), "actor.bias": torch.zeros(5000)}),
        "outside 1..1024",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_state_dicts_are_clear_errors(tmp_path, case):
    make, expected = BAD[case]
    path = _write(tmp_path, f"{case}.cleanrl_model", make())
    with pytest.raises(CheckpointError) as info:
        load_cleanrl(path, device="cpu")
    message = str(info.value)
    assert expected in message, message
    assert path in message or case == "list"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("pickled_module", "Python objects other than tensors"),
        ("truncated", "truncated"),
        ("flax_msgpack", "JAX scripts"),
        ("empty", "empty"),
        ("missing", "does not exist"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, case, expected):
    path = tmp_path / "agent.cleanrl_model"
    if case == "pickled_module":  # torch.save(agent) instead of its state dict: loading it would run code
        torch.save(make_agent("dqn_atari"), path)
    elif case == "truncated":
        save_like_cleanrl(make_agent("dqn_atari"), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "flax_msgpack":  # what ppo_atari_envpool_xla_jax_scan / dqn_atari_jax write
        path.write_bytes(b"\x92\x81\xa4args\x80" + bytes(64))
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=expected):
        load_cleanrl(path, device="cpu")


@pytest.mark.parametrize("script", ["ppo_atari_lstm", "dqn_atari"])
def test_runs_through_the_engines_saliency(saved, script):
    """The loaded policy is all the engine needs: perturbation maps equal the one-pass-per-mask loop reference
    (float64, a coarse grid to stay fast) and Jacobian saliency runs."""
    from engine.core.jacobian import jacobian_saliency
    from engine.core.perturbation import perturbation_saliency
    from engine.core.reference import score_frame_np

    policy = load_cleanrl(saved[script][1], device="cpu", dtype=torch.float64)
    x = random_bytes(1, CHANNELS[script], seed=7)
    g = torch.Generator().manual_seed(8)
    state = tuple(torch.randn(1, 128, generator=g, dtype=torch.float64) for _ in policy.initial_state(1))
    result = perturbation_saliency(policy, x, state, density=20)
    actor, critic = score_frame_np(policy, x[0].numpy(), state, density=20)
    assert result.actor.shape == (1, 84, 84)
    torch.testing.assert_close(result.actor_scores[0], torch.from_numpy(actor), rtol=1e-9, atol=1e-12 * actor.max())
    torch.testing.assert_close(result.critic_scores[0], torch.from_numpy(critic), rtol=1e-9, atol=1e-12 * critic.max())
    assert jacobian_saliency(policy, x, state).actor.shape == (1, 84, 84)


@pytest.mark.parametrize("script", ARCHITECTURES)
def test_incremental_inference_equals_plain_passes(saved, script):
    """The adapters declare their conv trunk: windows give the plain pass's scores."""
    from engine.core.perturbation import perturbation_saliency

    policy = load_cleanrl(saved[script][1], device="cpu")
    obs = random_bytes(2, policy.observation_shape[0])
    state = tuple(
        torch.randn(2, *s.shape[1:], generator=torch.Generator().manual_seed(3)) * 0.5 for s in policy.initial_state(1)
    )
    windows = perturbation_saliency(policy, obs, state, radius=3, density=7, incremental=True)
    plain = perturbation_saliency(policy, obs, state, radius=3, density=7, incremental=False)
    assert float(plain.actor_scores.max()) > 0
    options = dict(radius=3, density=7, incremental=False)
    rounding = saliency_rounding(
        perturbation_saliency, policy, obs, state, ("actor_scores", "critic_scores"), **options
    )
    assert_float32_close(windows.actor_scores, plain.actor_scores, rounding["actor_scores"])
    assert_float32_close(windows.critic_scores, plain.critic_scores, rounding["critic_scores"])
