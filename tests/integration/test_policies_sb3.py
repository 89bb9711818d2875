"""The Stable-Baselines3 / sb3-contrib adapter (engine.policies.sb3) on real zips written by the libraries.

Every agent is built by the library itself (seeded constructor, ``model.save``), loaded through ``load_sb3``,
and compared with the library's own outputs on random uint8 observations: ``policy.get_distribution(obs)``
(its ``distribution.logits`` are the log-softmax of the network's action layer, which the adapter returns as
logits), ``predict_values``, ``q_net`` / ``quantile_net``, and for RecurrentPPO its ``forward`` over a sequence
with non-zero states and episode starts in the middle.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from stable_baselines3.common.policies import BaseModel  # noqa: E402  (the actor's extractor, shared or not)

from engine.core.errors import CheckpointError  # noqa: E402
from engine.core.policy import Policy  # noqa: E402
from engine.policies.sb3 import SB3Policy  # noqa: E402
from engine.policies.sb3_zip import load_sb3  # noqa: E402
from tests.conftest import assert_float32_close, saliency_rounding  # noqa: E402
from tests.sb3_agents import NUM_ACTIONS, gym_spaces_data, make_agent, rewrite_zip, saved_bytes  # noqa: E402

ACTOR_CRITIC = ("ppo", "a2c", "ppo_separate", "ppo_mlp")
RECURRENT = ("rppo", "rppo_shared", "rppo_linear")
VALUE_BASED = ("dqn", "qrdqn")


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    """kind -> (zip path, the library's model), built on first use."""
    folder = tmp_path_factory.mktemp("sb3")
    cache = {}

    def get(kind: str):
        if kind not in cache:
            path = folder / f"{kind}.zip"
            cache[kind] = (path, make_agent(kind, path))
        return cache[kind]

    return get


def observations(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 4, 84, 84), dtype=np.uint8))


def rounding_by_output(policy, obs: torch.Tensor, state=()) -> dict[str, float]:
    """How far one float32 pass of ``policy`` rounds, measured on these inputs with this machine's kernels: the
    largest difference between its outputs (``logits``, ``value``, ``state``) and those of the same network cast
    to float64. The library computes the same sums in float32 in orders of its own, so the two float32 programs
    may differ by the rounding of each, in orders that differ: four times this (the bound of
    :func:`tests.conftest.assert_float32_close`), and never a fixed tolerance tuned on one CPU."""
    exact = copy.deepcopy(policy).double()
    with torch.no_grad():
        got = policy(obs, state)
        want = exact(obs.double(), tuple(s.double() for s in state))

    def largest(a, b) -> float:
        return max((float((x.double() - y).abs().max()) for x, y in zip(a, b)), default=0.0)

    return dict(
        logits=largest([got.logits], [want.logits]),
        value=largest([got.value], [want.value]),
        state=largest(got.state, want.state),
    )


def sb3_actor_critic(policy, obs: torch.Tensor):
    """The library's raw logits (its action layer), distribution logits, and values."""
    with torch.no_grad():
        features = BaseModel.extract_features(policy, obs, policy.pi_features_extractor)
        raw = policy.action_net(policy.mlp_extractor.forward_actor(features))
        return raw, policy.get_distribution(obs).distribution.logits, policy.predict_values(obs)[:, 0]


# --- outputs equal the library's own ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ACTOR_CRITIC)
def test_actor_critic_outputs_equal_sb3(agents, kind):
    path, model = agents(kind)
    policy = load_sb3(path)
    assert isinstance(policy, Policy) and isinstance(policy, SB3Policy)
    assert policy.observation_shape == (4, 84, 84) and policy.num_actions == NUM_ACTIONS
    assert policy.pipeline == "sb3_atari" and policy.frame_stack == 4
    assert policy.algorithm == {"a2c": "A2C"}.get(kind, "PPO") and policy.initial_state(3) == ()
    obs = observations(5)
    raw, logits, values = sb3_actor_critic(model.policy, obs)
    with torch.inference_mode():
        out = policy(obs.float() / 255, ())
    rounding = rounding_by_output(policy, obs.float() / 255)
    assert_float32_close(out.logits, raw, rounding["logits"])
    assert_float32_close(
        torch.log_softmax(out.logits, -1), logits, 2 * rounding["logits"]
    )  # log-sum-exp: one more logit
    assert_float32_close(out.value, values, rounding["value"])
    assert out.state == ()


@pytest.mark.parametrize("kind", VALUE_BASED)
def test_q_values_equal_sb3(agents, kind):
    path, model = agents(kind)
    policy = load_sb3(path)
    assert policy.value_based and policy.algorithm == kind.upper() and policy.num_actions == NUM_ACTIONS
    obs = observations(5)
    with torch.no_grad():
        q = model.policy.q_net(obs) if kind == "dqn" else model.policy.quantile_net(obs).mean(dim=1)
        greedy = model.policy._predict(obs, deterministic=True)
    with torch.inference_mode():
        out = policy(obs.float() / 255, ())
    rounding = rounding_by_output(policy, obs.float() / 255)
    assert_float32_close(out.logits, q, rounding["logits"])
    assert_float32_close(out.value, q.max(dim=1).values, rounding["logits"])
    assert torch.equal(out.logits.argmax(dim=1), greedy)


@pytest.mark.parametrize("kind", RECURRENT)
def test_recurrent_ppo_sequence_equals_sb3(agents, kind):
    """Four envs over six steps from random (non-zero) states, with episode starts in the middle: logits, values
    (both SB3's forward and predict_values, so the critic's own LSTM path) and every state tensor."""
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    path, model = agents(kind)
    sb3 = model.policy
    policy = load_sb3(path)
    assert policy.algorithm == "RecurrentPPO"
    layers, n, hidden = sb3.lstm_hidden_state_shape
    critic_lstm = sb3.lstm_critic is not None
    assert policy.state_widths == (layers * hidden,) * (4 if critic_lstm else 2)
    assert all(torch.equal(s, torch.zeros(3, layers * hidden)) for s in policy.initial_state(3))
    envs, steps = 4, 6
    generator = torch.Generator().manual_seed(1)
    pi = tuple(torch.randn(layers, envs, hidden, generator=generator) for _ in range(2))
    vf = tuple(torch.randn(layers, envs, hidden, generator=generator) for _ in range(2)) if critic_lstm else pi
    states = RNNStates(pi, vf)
    flat = lambda s: s.transpose(0, 1).reshape(envs, -1)  # noqa: E731  (layers, N, H) -> (N, layers * H)
    ours = tuple(flat(s) for s in (*pi, *vf)) if critic_lstm else tuple(flat(s) for s in pi)
    starts = torch.zeros(steps, envs)
    starts[2, 1] = starts[4, 0] = starts[4, 3] = 1.0
    for t in range(steps):
        obs = observations(envs, seed=10 + t)
        with torch.no_grad():
            _, values, _, new_states = sb3.forward(obs, states, starts[t])
            dist, _ = sb3.get_distribution(obs, states.pi, starts[t])
            predicted = sb3.predict_values(obs, states.vf if critic_lstm else states.pi, starts[t])
            features = BaseModel.extract_features(sb3, obs, sb3.pi_features_extractor)
            latent, _ = sb3._process_sequence(features, states.pi, starts[t], sb3.lstm_actor)
            raw = sb3.action_net(sb3.mlp_extractor.forward_actor(latent))
        with torch.inference_mode():
            out = policy(obs.float() / 255, policy.reset_state(ours, starts[t].bool()))
        rounding = rounding_by_output(policy, obs.float() / 255, policy.reset_state(ours, starts[t].bool()))
        assert_float32_close(out.logits, raw, rounding["logits"])
        assert_float32_close(torch.log_softmax(out.logits, -1), dist.distribution.logits, 2 * rounding["logits"])
        assert_float32_close(out.value, values[:, 0], rounding["value"])
        assert_float32_close(out.value, predicted[:, 0], rounding["value"])
        expected = (*new_states.pi, *new_states.vf) if critic_lstm else new_states.pi
        assert len(out.state) == len(expected)
        for mine, theirs in zip(out.state, expected):
            assert_float32_close(mine, flat(theirs), rounding["state"])
        states, ours = new_states, out.state


def test_reset_state_is_sb3_episode_start(agents):
    """reset_state zeroes exactly the rows SB3's ``(1 - episode_start) * state`` zeroes, on every state tensor."""
    policy = load_sb3(agents("rppo")[0])
    state = tuple(torch.randn(5, w) for w in policy.state_widths)
    done = torch.tensor([False, True, False, False, True])
    reset = policy.reset_state(state, done)
    for before, after in zip(state, reset):
        assert torch.equal(after, (1.0 - done.float()).view(-1, 1) * before)


# --- batch invariance, dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ppo", "ppo_separate", "dqn", "qrdqn", "rppo", "rppo_linear"])
def test_batch_invariance(agents, kind):
    """The same observation (and state) alone, in a batch of 37, or in chunks gives bit-identical outputs."""
    policy = load_sb3(agents(kind)[0])
    obs = observations(37, seed=3).float() / 255
    generator = torch.Generator().manual_seed(2)
    state = tuple(torch.randn(37, w, generator=generator) for w in policy.state_widths)
    with torch.inference_mode():
        full = policy(obs, state)
        chunks = [policy(obs[a:b], tuple(s[a:b] for s in state)) for a, b in ((0, 5), (5, 37))]
        for i in (0, 17, 36):
            alone = policy(obs[i : i + 1], tuple(s[i : i + 1] for s in state))
            assert torch.equal(alone.logits, full.logits[i : i + 1]) and torch.equal(alone.value, full.value[i : i + 1])
            assert all(torch.equal(a, f[i : i + 1]) for a, f in zip(alone.state, full.state))
    assert torch.equal(torch.cat([c.logits for c in chunks]), full.logits)
    assert torch.equal(torch.cat([c.value for c in chunks]), full.value)
    assert all(torch.equal(torch.cat([c.state[k] for c in chunks]), full.state[k]) for k in range(len(state)))


@pytest.mark.parametrize("kind", ["ppo_separate", "qrdqn", "rppo"])
def test_float64(agents, kind):
    path, model = agents(kind)
    policy = load_sb3(path, dtype=torch.float64)
    assert policy.dtype == torch.float64 and policy.device == torch.device("cpu")
    obs = observations(3)
    state = policy.initial_state(3)
    assert all(s.dtype == torch.float64 for s in state)
    single = load_sb3(path)
    with torch.inference_mode():
        out = policy(obs.double() / 255, state)
        cast = copy.deepcopy(single).double()(obs.double() / 255, state)
    assert out.logits.dtype == out.value.dtype == torch.float64
    # the float32 agent's network in float64, bit for bit: the same layers and weights, nothing rounded to float32
    assert torch.equal(out.logits, cast.logits) and torch.equal(out.value, cast.value)
    if kind == "ppo_separate":  # and against the library (float32 only: its preprocess_obs casts to float)
        raw, _, values = sb3_actor_critic(model.policy, obs)
        rounding = rounding_by_output(single, obs.float() / 255)
        assert_float32_close(out.logits, raw, rounding["logits"] / 2)  # only the library's pass rounds here
        assert_float32_close(out.value, values, rounding["value"] / 2)


def test_gradients_reach_the_observation(agents):
    """Jacobian saliency needs d(outputs)/d(obs) through the rebuilt network (fused, grouped trunk included)."""
    policy = load_sb3(agents("ppo_separate")[0])
    obs = (observations(2).float() / 255).requires_grad_(True)
    out = policy(obs, ())
    (out.logits.sum() + out.value.sum()).backward()
    assert obs.grad is not None and float(obs.grad.abs().sum()) > 0


def test_trunk_hooks_compose_to_the_forward_pass(agents):
    """convs / conv_activations / features / from_features, the hooks incremental inference uses, give the
    forward pass's outputs; separate actor and critic extractors are one grouped trunk."""
    for kind, channels in (("ppo", 64), ("ppo_separate", 128), ("rppo", 64)):
        policy = load_sb3(agents(kind)[0])
        assert [c.kernel_size for c in policy.convs] == [(8, 8), (4, 4), (3, 3)]
        assert [c.stride for c in policy.convs] == [(4, 4), (2, 2), (1, 1)]
        obs = observations(16).float() / 255
        state = policy.initial_state(16)
        with torch.inference_mode():
            layer2 = policy.conv_activations(obs, 0, 2)
            layer3 = policy.conv_activations(layer2, 2, 3)
            assert layer3.shape == (16, channels, 7, 7)
            staged = policy.from_features(layer3.flatten(1), state)
            direct = policy(obs, state)
        assert torch.equal(staged.logits, direct.logits) and torch.equal(staged.value, direct.value)


# --- files from older SB3 versions and RL Zoo ------------------------------------------------------------------


def _compare_with(policy, model, kind="ppo"):
    obs = observations(4, seed=7)
    raw, _, values = sb3_actor_critic(model.policy, obs)
    with torch.inference_mode():
        out = policy(obs.float() / 255, ())
    rounding = rounding_by_output(policy, obs.float() / 255)
    assert_float32_close(out.logits, raw, rounding["logits"])
    assert_float32_close(out.value, values, rounding["value"])


def _sb3_1x_keys(state_dict):
    """SB3 < 1.7 had one features extractor (no pi_/vf_ copies)."""
    return {
        k: v for k, v in state_dict.items() if not k.startswith(("pi_features_extractor.", "vf_features_extractor."))
    }


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_sb3_1x_and_rl_zoo_zips(agents, tmp_path, layout):
    """An SB3 1.x zip (gym spaces, ``shape``, integer ``n``, one extractor) as RL Zoo published them, with the
    observation space saved channel-first (after VecTransposeImage) or channel-last (VecFrameStack's (84, 84, 4))."""
    path, model = agents("ppo")
    shape = [4, 84, 84] if layout == "channels_first" else [84, 84, 4]
    old = rewrite_zip(
        path,
        tmp_path / "old.zip",
        data=lambda d: gym_spaces_data(d, shape),
        policy=_sb3_1x_keys,
        version="1.5.0",
        drop=("system_info.txt",),
    )
    policy = load_sb3(old)
    assert policy.observation_shape == (4, 84, 84) and policy.sb3_version == "1.5.0"
    _compare_with(policy, model)


def test_sb3_1x_shared_mlp_layers(agents, tmp_path):
    """SB3 1.x's ``mlp_extractor.shared_net`` (``net_arch=[16, dict(pi=[], vf=[])]``), checked against a 2.x
    model whose actor and critic layers are identical."""
    path, model = agents("ppo_same_layers")

    def shared(state_dict):
        state_dict = _sb3_1x_keys(state_dict)
        for part in ("weight", "bias"):
            state_dict[f"mlp_extractor.shared_net.0.{part}"] = state_dict.pop(f"mlp_extractor.policy_net.0.{part}")
            del state_dict[f"mlp_extractor.value_net.0.{part}"]
        return state_dict

    policy = load_sb3(rewrite_zip(path, tmp_path / "shared.zip", policy=shared, version="1.2.0"))
    assert "shared [16]" in policy.summary
    _compare_with(policy, model)


def test_zip_without_readable_policy_class(agents, tmp_path):
    """``model.save(path, exclude=[...])`` or an unknown field layout: the network is told by its keys."""
    path, model = agents("ppo_separate")
    edited = rewrite_zip(
        path, tmp_path / "bare.zip", data=lambda d: {k: v for k, v in d.items() if k != "policy_class"}
    )
    _compare_with(load_sb3(edited), model)


# --- bad files: each a clear CheckpointError --------------------------------------------------------------------


def _refused(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_sb3(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


class _Payload:
    """Unpickling this creates a file: a stand-in for any code a malicious pickle runs."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize(
    "kind, found", [("ppo_mlppolicy", "MlpPolicy"), ("ppo_continuous", "continuous (Box) action space")]
)
def test_unsupported_policies(agents, kind, found):
    message = _refused(agents(kind)[0], found, "supported: Stable-Baselines3 PPO, A2C and DQN with CnnPolicy")
    assert "RecurrentPPO" in message


def test_damaged_and_foreign_files(agents, tmp_path):
    path = agents("ppo")[0]
    raw = path.read_bytes()
    (truncated := tmp_path / "truncated.zip").write_bytes(raw[: len(raw) // 2])
    _refused(truncated, "damaged or truncated zip")
    (empty := tmp_path / "empty.zip").write_bytes(b"")
    _refused(empty, "empty")
    (text := tmp_path / "notes.zip").write_text("hello")
    _refused(text, "not a zip archive")
    _refused(tmp_path / "missing.zip", "does not exist")
    torch.save({"w": torch.zeros(2)}, state_dict := tmp_path / "agent.pt")
    _refused(state_dict, "torch.save file", "'data' and 'policy.pth'")
    with zipfile.ZipFile(other := tmp_path / "other.zip", "w") as archive:
        archive.writestr("hello.txt", "hi")
    _refused(other, "hello.txt", "not an SB3 agent")
    corrupt = rewrite_zip(path, tmp_path / "corrupt.zip", policy=lambda sd: b"not a torch file at all")
    _refused(
        corrupt, "policy.pth is not a torch checkpoint: it is a text file", "(it starts with 'not a torch file at all')"
    )
    bad_json = tmp_path / "bad_json.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad_json, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"{not json" if name == "data" else src.read(name))
    _refused(bad_json, "'data' entry is not the JSON")


def test_unknown_and_inconsistent_tensors(agents, tmp_path):
    path = agents("ppo")[0]
    extra = rewrite_zip(
        path, tmp_path / "extra.zip", policy=lambda sd: {**sd, "extra_head.weight": torch.zeros(3, 512)}
    )
    _refused(extra, "unexpected tensors ['extra_head.weight']", "supported:")
    missing = rewrite_zip(
        path, tmp_path / "missing.zip", policy=lambda sd: {k: v for k, v in sd.items() if not k.startswith("value_net")}
    )
    _refused(missing, "missing tensor 'value_net.weight'")
    nan = rewrite_zip(
        path,
        tmp_path / "nan.zip",
        policy=lambda sd: {**sd, "action_net.bias": torch.full_like(sd["action_net.bias"], float("nan"))},
    )
    _refused(nan, "non-finite")
    # a PPO's data with a DQN's tensors

    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path) as ppo, zipfile.ZipFile(agents("dqn")[0]) as dqn, zipfile.ZipFile(mixed, "w") as out:
        out.writestr("data", ppo.read("data"))
        out.writestr("policy.pth", dqn.read("policy.pth"))
    _refused(mixed, "inconsistent")


def test_data_that_does_not_fit(agents, tmp_path):
    path = agents("ppo")[0]

    def edit(field, **changes):
        def apply(data):
            data = dict(data)
            data[field] = {**data[field], **changes}
            return data

        return apply

    _refused(rewrite_zip(path, tmp_path / "a.zip", data=edit("observation_space", _shape=[3, 84, 84])), "does not fit")
    _refused(rewrite_zip(path, tmp_path / "b.zip", data=edit("observation_space", dtype="float32")), "dtype float32")
    _refused(rewrite_zip(path, tmp_path / "c.zip", data=edit("action_space", n="9")), "action_net.weight")
    _refused(
        rewrite_zip(
            path,
            tmp_path / "d.zip",
            data=edit("policy_kwargs", features_extractor_class="<class 'my_project.CustomCNN'>"),
        ),
        "CustomCNN",
        "NatureCNN",
    )
    _refused(
        rewrite_zip(
            path,
            tmp_path / "e.zip",
            data=edit(
                "policy_class",
                __module__="stable_baselines3.sac.policies",
                __init__="<function CnnPolicy.__init__ at 0x1>",
            ),
        ),
        "SAC",
    )


@pytest.fixture
def inflated_bytes(monkeypatch):
    """How many bytes were inflated from zip entries (every read of an entry goes through ZipExtFile.read)."""
    count = [0]
    real = zipfile.ZipExtFile.read

    def counting(self, n=-1):
        data = real(self, n)
        count[0] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    return count


def test_entries_that_inflate_are_refused_unread(agents, tmp_path, inflated_bytes):
    """A policy.pth or data of 48 MiB of zeros, deflated to some 50 KB (a 1 MB zip whose policy.pth inflates to
    1 GiB, in small): refused from the zip directory, before a byte is inflated."""
    path = agents("ppo")[0]
    for entry, edit in (
        ("policy.pth", dict(policy=lambda sd: bytes(48 << 20))),
        ("data", dict(data=lambda d: b" " * (48 << 20) + b"{}")),
    ):
        bomb = rewrite_zip(path, tmp_path / f"{entry}_bomb.zip", **edit)
        assert bomb.stat().st_size < path.stat().st_size + 200_000
        inflated_bytes[0] = 0
        _refused(bomb, f"'{entry}' would inflate from", "refused without inflating it")
        assert inflated_bytes[0] == 0


def test_expanded_tensors_are_refused_before_any_comparison(agents, tmp_path, monkeypatch):
    """policy.pth with (10^6, 10^6) stride-0 tensors under both names of the actor's extractor: comparing them
    would take 10^12 steps; they are refused from their strides first."""
    huge = torch.zeros(1).expand(10**6, 10**6)
    evil = rewrite_zip(
        agents("ppo")[0],
        tmp_path / "expanded.zip",
        policy=lambda sd: {**sd, "features_extractor.huge": huge, "pi_features_extractor.huge": huge},
    )
    real_equal = torch.equal

    def equal(a, b):
        if 0 in a.stride() + b.stride():
            raise AssertionError("compared an expanded tensor")
        return real_equal(a, b)

    monkeypatch.setattr(torch, "equal", equal)
    _refused(evil, "huge (1000000, 1000000) has 1000000000000 values but only 1 are stored")


def test_deeply_nested_data_is_refused(agents, tmp_path):
    nested = b'{"policy_class": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _refused(
        rewrite_zip(agents("ppo")[0], tmp_path / "nested.zip", data=lambda d: nested),
        "'data' entry nests 100001 levels deep",
        "at most 64",
    )


def test_pickle_in_policy_pth_is_never_executed(agents, tmp_path):
    marker = tmp_path / "pwned"
    payload = saved_bytes({"action_net.weight": _Payload(marker)})
    # the payload is live: an unsafe load would create the file
    live = tmp_path / "live"
    torch.load(io.BytesIO(saved_bytes({"x": _Payload(live)})), weights_only=False)
    assert live.exists()
    evil = rewrite_zip(agents("ppo")[0], tmp_path / "evil.zip", policy=lambda sd: payload)
    _refused(evil, "Python objects other than tensors", "could run code")
    assert not marker.exists()


def test_serialized_json_entries_are_never_unpickled(agents, tmp_path):
    """The data JSON's cloudpickled entries (``:serialized:``) are skipped: a payload there never runs."""
    path, model = agents("ppo")
    marker = tmp_path / "pwned"
    blob = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    live = tmp_path / "live"
    pickle.loads(base64.b64decode(base64.b64encode(pickle.dumps(_Payload(live)))))
    assert live.exists()

    def poison(data):
        return {
            k: ({**v, ":serialized:": blob} if isinstance(v, dict) and ":serialized:" in v else v)
            for k, v in data.items()
        }

    policy = load_sb3(rewrite_zip(path, tmp_path / "poisoned.zip", data=poison))
    assert not marker.exists()
    _compare_with(policy, model)


# --- saliency of SB3 agents: the batched engine against the loop reference and a plain autograd loop ----------


@pytest.mark.parametrize("kind", ["ppo", "dqn", "rppo"])
def test_saliency_equals_the_loop_reference(agents, kind):
    """Each map within float rounding of the one-pass-per-perturbation loop (float64), passes of any size give
    identical maps, and Jacobians equal a plain per-frame autograd loop."""
    from engine.core.jacobian import jacobian_saliency
    from engine.core.perturbation import perturbation_saliency
    from engine.core.reference import saliency_np

    policy = load_sb3(agents(kind)[0], dtype=torch.float64)
    obs = observations(3, seed=4)
    generator = torch.Generator().manual_seed(1)
    state = tuple(
        torch.randn(3, *s.shape[1:], generator=generator, dtype=torch.float64) * 0.5 for s in policy.initial_state(1)
    )
    got = perturbation_saliency(policy, obs, state, density=21)
    for t in range(3):
        ref = saliency_np(policy, obs[t].numpy(), tuple(s[t : t + 1] for s in state), density=21)
        for key in ("actor_scores", "critic_scores"):
            want = ref[key]
            assert np.abs(want).max() > 0, key
            assert np.abs(getattr(got, key)[t].numpy() - want).max() <= 1e-9 * np.abs(want).max(), (kind, key, t)
    for per_eval in (1, 5):
        part = perturbation_saliency(policy, obs, state, density=21, perturbations_per_eval=per_eval)
        assert torch.equal(part.actor_scores, got.actor_scores) and torch.equal(part.critic_scores, got.critic_scores)
    jac = jacobian_saliency(policy, obs, state)
    x = obs.double() / 255
    for t in range(3):
        leaf = x[t : t + 1].clone().requires_grad_(True)
        out = policy(leaf, tuple(s[t : t + 1] for s in state), batch_invariant=False)
        (grad,) = torch.autograd.grad(out.value.sum(), leaf)
        assert torch.allclose(jac.critic_grad[t], grad[0], rtol=0, atol=1e-10 * float(grad.abs().max()))


@pytest.mark.parametrize("kind", ["ppo", "ppo_separate", "dqn", "rppo"])
def test_incremental_inference_equals_plain_passes(agents, kind):
    """The adapters declare their conv trunk (grouped when actor and critic extractors are separate): windows
    give the plain pass's scores."""
    from engine.core.perturbation import perturbation_saliency

    policy = load_sb3(agents(kind)[0])
    obs = observations(2, seed=7)
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


@pytest.mark.parametrize("kind", RECURRENT)
def test_rnn_states_convert_both_ways(agents, kind):
    """sb3-contrib's RNNStates -> the engine's state tuple (the layout the sequence test above checks against SB3)
    and back, exactly; a feed-forward agent and wrong shapes are refused with what is expected."""
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    path, model = agents(kind)
    policy = load_sb3(path)
    layers, _, hidden = model.policy.lstm_hidden_state_shape
    critic_lstm = model.policy.lstm_critic is not None
    generator = torch.Generator().manual_seed(2)
    pi = tuple(torch.randn(layers, 3, hidden, generator=generator) for _ in range(2))
    vf = tuple(torch.randn(layers, 3, hidden, generator=generator) for _ in range(2)) if critic_lstm else pi
    state = policy.state_from_rnn_states(RNNStates(pi, vf))
    flat = tuple(s.transpose(0, 1).reshape(3, -1) for s in ((*pi, *vf) if critic_lstm else pi))
    assert len(state) == len(policy.state_widths) and all(torch.equal(a, b) for a, b in zip(state, flat))
    back = policy.rnn_states_from_state(state)
    assert all(torch.equal(a, b) for a, b in zip((*back.pi, *back.vf), (*pi, *vf)))
    with pytest.raises(ValueError, match=r"RNNStates tensors must be \(layers="):
        policy.state_from_rnn_states(RNNStates(tuple(t[..., :-1] for t in pi), vf))
    with pytest.raises(ValueError, match="feed-forward"):
        load_sb3(agents("ppo")[0]).state_from_rnn_states(RNNStates(pi, vf))


@pytest.mark.parametrize("raw, shown", [("Infinity", "inf"), ("NaN", "nan"), ("6.9", "6.9"), ("true", "True")])
def test_an_action_count_that_is_no_integer_is_refused(agents, tmp_path, raw, shown):
    """data's Discrete n is an int (gym) or a string of digits (gymnasium): a float, a bool or JSON's Infinity (which
    Python's json reads) is refused in one line, not rounded to an action count or raised as an OverflowError."""
    path = agents("ppo")[0]

    def edit(data):
        space = dict(data["action_space"], n="__N__")
        return json.dumps(dict(data, action_space=space)).replace('"__N__"', raw).encode()

    _refused(rewrite_zip(path, tmp_path / "n.zip", data=edit), f"the action space size {shown} is not an integer")
    as_text = rewrite_zip(
        path, tmp_path / "text.zip", data=lambda d: dict(d, action_space=dict(d["action_space"], n=str(NUM_ACTIONS)))
    )
    assert load_sb3(as_text).num_actions == NUM_ACTIONS


@pytest.mark.parametrize("kind", ["rppo", "ppo_separate", "ppo_mlp", "ppo", "dqn"])
def test_the_sanity_checks_first_stage_randomises_both_heads(agents, kind):
    """The cascade's first stage is the output layers the policy returns logits and values from, also where the
    actor and critic run separate layers (a critic LSTM, separate extractors, MLP layers of their own), so that
    "after the output layer" the actor's map has lost its head."""
    from engine.metrics.faithfulness import cascade_stages

    stages = cascade_stages(load_sb3(agents(kind)[0]))
    assert set(stages[0]) == ({"q_net.0"} if kind == "dqn" else {"action_net", "value_net"}), stages
    names = [name for stage in stages for name in stage]
    assert all(len(stage) == 1 for stage in stages[1:]) and len(set(names)) == len(names)
