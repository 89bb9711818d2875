"""Stable-Baselines3 and sb3-contrib agents from the zip ``model.save(path)`` writes (SB3 1.x and 2.x, RL Zoo's
too), read without running any code from it and without importing either library (:func:`load_sb3`):

- ``policy.pth`` is read with ``torch.load(weights_only=True)``: tensors and plain containers only;
- ``data`` is JSON; its cloudpickled entries (dicts with a ``":serialized:"`` field) are never decoded: only the
  readable fields SB3 writes beside them are used (a space's ``":type:"``, ``_shape``/``shape``, ``dtype``, ``n``;
  the policy class's ``__module__`` and the name in its ``__init__``; ``policy_kwargs``' first-level values);
- every other entry (``pytorch_variables.pth``, the optimizer) is never opened.

The algorithm, observation shape, number of actions and architecture are inferred from those fields and from the
state dict's keys and shapes, and checked against each other before the network (:mod:`engine.policies.sb3`) is
built. Anything else (an ``MlpPolicy``, a continuous action space, a custom features extractor, unknown keys, a
damaged or foreign zip, Python objects in ``policy.pth``) is a :class:`CheckpointError` that says what was found
and what is supported.
"""

from __future__ import annotations

import os
import re
import zipfile

import torch
from torch import nn

from ..core.device import resolve_device, resolve_dtype
from ..core.errors import CheckpointError
from .checkpoint import (
    MAX_ACTIONS,
    MAX_CHANNELS,
    check_layouts,
    check_weights,
    check_zip_entries,
    load_checked,
    load_torch_file,
    parse_json,
)
from .sb3 import NATURE_CONVS, SB3ActorCritic, SB3Policy, SB3QNetwork, nature_flat_size

SUPPORTED = (
    "supported: Stable-Baselines3 PPO, A2C and DQN with CnnPolicy, sb3-contrib RecurrentPPO with CnnLstmPolicy "
    "and QRDQN with CnnPolicy (NatureCNN on uint8 image observations, a Discrete action space), saved by "
    "model.save(path)"
)
# Bounds on what is read from the zip before it is parsed (a Nature-CNN agent is about 7 MB, its data JSON a few
# hundred KB): a member beyond them, or one that would inflate far beyond its compressed size
# (checkpoint.check_zip_entries), is not an SB3 agent, and is never decompressed.
MAX_DATA_BYTES = 64 << 20
MAX_POLICY_BYTES = 2 << 30
MAX_SIDE, MAX_WIDTH, MAX_QUANTILES = 1024, 16384, 10000  # image side, layer width, QRDQN quantiles

# (policy class module, class name) -> family; the name is read from the ``__init__`` SB3 lists among the
# class's readable attributes.
_CNN_POLICIES = {
    ("stable_baselines3.common.policies", "ActorCriticCnnPolicy"): "actor_critic",
    ("stable_baselines3.dqn.policies", "CnnPolicy"): "dqn",
    ("sb3_contrib.qrdqn.policies", "CnnPolicy"): "qrdqn",
    ("sb3_contrib.common.recurrent.policies", "RecurrentActorCriticCnnPolicy"): "recurrent",
}
_MODULE_ALGORITHMS = {
    "stable_baselines3.common.policies": "PPO/A2C",
    "stable_baselines3.dqn.policies": "DQN",
    "sb3_contrib.qrdqn.policies": "QRDQN",
    "sb3_contrib.common.recurrent.policies": "RecurrentPPO",
    "stable_baselines3.sac.policies": "SAC",
    "stable_baselines3.td3.policies": "TD3/DDPG",
    "sb3_contrib.tqc.policies": "TQC",
    "sb3_contrib.ars.policies": "ARS",
    "sb3_contrib.crossq.policies": "CrossQ",
    "sb3_contrib.common.maskable.policies": "MaskablePPO",
}
_ACTIVATIONS = {
    "ReLU": nn.ReLU,
    "Tanh": nn.Tanh,
    "ELU": nn.ELU,
    "LeakyReLU": nn.LeakyReLU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "Sigmoid": nn.Sigmoid,
    "Softplus": nn.Softplus,
    "Mish": nn.Mish,
    "SELU": nn.SELU,
}

# --- reading the zip -----------------------------------------------------------------------------------------


def _read_zip(path: str, source: str) -> tuple[dict, dict[str, torch.Tensor], str | None]:
    """(data JSON, policy state dict, SB3 version or None), or a CheckpointError saying what the file is."""
    if not os.path.isfile(path):
        raise CheckpointError(f"SB3 checkpoint {source} does not exist (or is not a file): check the path")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"SB3 checkpoint {source} cannot be read ({exc.strerror or exc})") from exc
    if not head:
        raise CheckpointError(f"{source} is not an SB3 agent: the file is empty (0 bytes); {SUPPORTED}")
    if head != b"PK\x03\x04":
        raise CheckpointError(
            f"{source} is not an SB3 agent: not a zip archive (it starts with the bytes {head.hex(' ')}); {SUPPORTED}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            if "data" not in infos or "policy.pth" not in infos:
                what = (
                    "a torch.save file (an agent of another library, e.g. a state dict)"
                    if any(n.endswith("data.pkl") for n in infos)
                    else f"a zip archive holding {sorted(infos)[:8]}"
                )
                raise CheckpointError(
                    f"{source} is not an SB3 agent: it is {what}, without the 'data' and 'policy.pth' entries that "
                    f"SB3's model.save writes; {SUPPORTED}"
                )
            for name, bound in (("data", MAX_DATA_BYTES), ("policy.pth", MAX_POLICY_BYTES)):
                if infos[name].file_size > bound:
                    raise CheckpointError(
                        f"{source}: its {name!r} entry is {infos[name].file_size} bytes, beyond any SB3 Atari agent's "
                        f"({bound} at most): not read"
                    )
            check_zip_entries(archive.infolist(), os.path.getsize(path), source)
            raw_data = archive.read("data")
            raw_policy = archive.read("policy.pth")
            version = None
            if "_stable_baselines3_version" in infos and infos["_stable_baselines3_version"].file_size < 256:
                version = archive.read("_stable_baselines3_version").decode("utf-8", "replace").strip() or None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        # RuntimeError: an encrypted entry
        raise CheckpointError(
            f"{source} is not a readable SB3 agent: a damaged or truncated zip archive ({exc})"
        ) from exc
    except Exception as exc:  # zlib.error and the like from a corrupt entry
        raise CheckpointError(
            f"{source} is not a readable SB3 agent: a damaged zip entry ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        data = parse_json(raw_data, f"{source}: its 'data' entry", MAX_DATA_BYTES, expected="the JSON SB3 writes")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {SUPPORTED}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: its 'data' entry is JSON but not an object of SB3's fields; {SUPPORTED}")
    return data, _read_policy(raw_policy, source), version


def _read_policy(raw: bytes, source: str) -> dict[str, torch.Tensor]:
    """``policy.pth`` with ``torch.load(weights_only=True)`` and bounded work (checkpoint.load_torch_file):
    tensors and plain containers only, nothing executed; each tensor stored once (no expanded or overlapping
    view, which the comparisons and arithmetic that follow would walk value by value)."""
    obj = load_torch_file(
        raw, f"{source}: its policy.pth", fix="SB3's model.save writes only a state dict of tensors there"
    )
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{source}: its policy.pth holds a {type(obj).__name__}, not a state dict of tensors")
    state_dict = dict(obj)
    check_layouts(state_dict, source)
    return state_dict


# --- what the JSON says ----------------------------------------------------------------------------------------


def _type_name(entry) -> str:
    """``"Box"`` from ``{":type:": "<class 'gymnasium.spaces.box.Box'>", ...}``; ``""`` if unreadable."""
    if isinstance(entry, dict) and isinstance(entry.get(":type:"), str):
        match = re.search(r"'([\w.]+)'", entry[":type:"])
        if match:
            return match.group(1).rsplit(".", 1)[-1]
    return ""


def _policy_class(data: dict) -> tuple[str, str] | None:
    """(module, class name) of the saved policy class, from its readable fields only."""
    entry = data.get("policy_class")
    if not isinstance(entry, dict):
        return None
    module = entry.get("__module__")
    match = re.match(r"<function (\w+)\.__init__", str(entry.get("__init__", "")))
    if not isinstance(module, str) or not match:
        return None
    return module, match.group(1)


def _policy_kwargs(data: dict) -> dict:
    """The readable first-level values of ``policy_kwargs`` (plain JSON, or beside a ``":serialized:"`` blob)."""
    kwargs = data.get("policy_kwargs")
    if not isinstance(kwargs, dict):
        return {}
    return {k: v for k, v in kwargs.items() if not k.startswith(":")}


def _class_name(value) -> str:
    """``"ReLU"`` from ``"<class 'torch.nn.modules.activation.ReLU'>"``."""
    match = re.search(r"'([\w.]+)'", str(value))
    return match.group(1).rsplit(".", 1)[-1] if match else str(value)


def _int(value, what: str, source: str) -> int:
    """An integer written as a JSON int or a string of digits (gymnasium writes ``Discrete.n`` as a string, gym as
    an int); a float, a bool, infinity or anything else is refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,18}", value.strip()):
        return int(value)
    raise CheckpointError(f"{source}: the {what} {value!r} is not an integer")


def _action_count(data: dict, source: str) -> int:
    space = data.get("action_space")
    kind = _type_name(space)
    if kind == "Discrete":
        assert isinstance(space, dict)  # _type_name reads a type from dicts only
        n = _int(space.get("n"), "action space size", source)
        if not 1 <= n <= MAX_ACTIONS:
            raise CheckpointError(f"{source}: a Discrete action space of {n} actions, outside 1..{MAX_ACTIONS}")
        return n
    shape = space.get("_shape", space.get("shape")) if isinstance(space, dict) else None
    if kind == "Box":
        raise CheckpointError(
            f"{source}: a continuous (Box) action space of shape {shape}: only Discrete action spaces are "
            f"supported (saliency scores action preferences); {SUPPORTED}"
        )
    found = f"a {kind} action space" if kind else "no readable action space in its data"
    raise CheckpointError(f"{source}: {found}; only Discrete action spaces are supported; {SUPPORTED}")


def _observation_layout(data: dict, channels: int, flat: int, source: str) -> tuple[int, int, int]:
    """(C, H, W) the network sees, from the saved observation space (channel-first as SB3 saves it after
    VecTransposeImage, or channel-last as older zips may hold it), checked against the NatureCNN weights."""
    space = data.get("observation_space")
    kind = _type_name(space)
    if kind != "Box":
        found = f"a {kind} observation space" if kind else "no readable observation space in its data"
        raise CheckpointError(f"{source}: {found}; a CnnPolicy agent observes a Box of uint8 images; {SUPPORTED}")
    assert isinstance(space, dict)  # _type_name reads a type from dicts only
    shape = space.get("_shape", space.get("shape"))
    dtype = str(space.get("dtype", ""))
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape)):
        raise CheckpointError(
            f"{source}: an observation space of shape {shape}, not an image (C, H, W) or (H, W, C); {SUPPORTED}"
        )
    if dtype != "uint8":
        raise CheckpointError(
            f"{source}: observations of dtype {dtype or 'unknown'}: SB3 scales only uint8 images by 1/255, and the "
            f"engine's observations are image bytes / 255; {SUPPORTED}"
        )
    layouts = []
    if shape[0] == channels:
        layouts.append((shape[0], shape[1], shape[2]))
    if shape[2] == channels:
        layouts.append((shape[2], shape[0], shape[1]))
    for layout in layouts:
        if max(layout[1:]) <= MAX_SIDE and nature_flat_size(*layout[1:]) == flat:
            return layout
    raise CheckpointError(
        f"{source}: the observation space {tuple(shape)} does not fit the NatureCNN weights (the first convolution "
        f"takes {channels} channels, the linear layer {flat} features): the data and policy.pth disagree"
    )


# --- what the state dict says ----------------------------------------------------------------------------------


class _Keys:
    """The state dict, the keys taken so far, and the errors that name them."""

    def __init__(self, sd: dict[str, torch.Tensor], source: str, what: str):
        self.sd, self.source, self.what = sd, source, what
        self.used: set[str] = set()

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix + ".") for k in self.sd)

    def take(self, key: str, ndim: int) -> tuple[int, ...]:
        if key not in self.sd:
            raise CheckpointError(f"{self.source}: missing tensor {key!r} for {self.what}; {SUPPORTED}")
        shape = tuple(self.sd[key].shape)
        if len(shape) != ndim:
            raise CheckpointError(f"{self.source}: {key} has shape {shape}, expected {ndim} dimensions for {self.what}")
        self.used.add(key)
        return shape

    def expect(self, key: str, shape: tuple[int, ...]) -> None:
        found = self.take(key, len(shape))
        if found != shape:
            raise CheckpointError(f"{self.source}: {key} has shape {found}, expected {shape} for {self.what}")

    def nature_cnn(self, prefix: str) -> tuple[int, int, int]:
        """(channels, flat, features) of the NatureCNN under ``prefix``, every tensor's shape checked."""
        out0, in0, kh, kw = self.take(f"{prefix}.cnn.0.weight", 4)
        if out0 != NATURE_CONVS[0][0] or (kh, kw) != (8, 8) or not 1 <= in0 <= MAX_CHANNELS:
            raise CheckpointError(
                f"{self.source}: {prefix}.cnn.0.weight has shape {(out0, in0, kh, kw)}, not the NatureCNN's first "
                f"convolution (32, C in 1..{MAX_CHANNELS}, 8, 8): a custom features extractor; {SUPPORTED}"
            )
        previous = out0
        for index, (out, kernel, _) in zip((0, 2, 4), NATURE_CONVS):
            if index:
                self.expect(f"{prefix}.cnn.{index}.weight", (out, previous, kernel, kernel))
            self.expect(f"{prefix}.cnn.{index}.bias", (out,))
            previous = out
        features, flat = self.take(f"{prefix}.linear.0.weight", 2)
        if not 1 <= features <= MAX_WIDTH:
            raise CheckpointError(
                f"{self.source}: {prefix}.linear.0.weight implies {features} features, outside 1..{MAX_WIDTH}"
            )
        self.expect(f"{prefix}.linear.0.bias", (features,))
        return in0, flat, features

    def linears(self, prefix: str, width: int, step: int = 2) -> list[int]:
        """Output widths of the Linear layers ``prefix.0``, ``prefix.{step}``, ... (an ``nn.Sequential`` of
        Linear and activation layers), chained from ``width``; every key under ``prefix`` must be one of them."""
        indices = sorted(
            {
                int(m.group(1))
                for k in self.sd
                if (m := re.fullmatch(re.escape(prefix) + r"\.(\d+)\.(?:weight|bias)", k))
            }
        )
        if indices != list(range(0, step * len(indices), step)):
            found = sorted(k for k in self.sd if k.startswith(prefix + "."))[:6]
            raise CheckpointError(
                f"{self.source}: the layers under {prefix!r} ({found}) are not SB3's Linear/activation layout for "
                f"{self.what}"
            )
        widths = []
        for index in indices:
            out, inp = self.take(f"{prefix}.{index}.weight", 2)
            if inp != width or not 1 <= out <= MAX_WIDTH:
                raise CheckpointError(
                    f"{self.source}: {prefix}.{index}.weight has shape {(out, inp)}, expected ({'1..' + str(MAX_WIDTH)}, {width})"
                )
            self.expect(f"{prefix}.{index}.bias", (out,))
            widths.append(out)
            width = out
        return widths

    def lstm(self, prefix: str, features: int) -> tuple[int, int]:
        """(hidden, layers) of the ``nn.LSTM`` under ``prefix`` (unidirectional, with biases, no projection)."""
        _, hidden = self.take(f"{prefix}.weight_hh_l0", 2)
        if not 1 <= hidden <= MAX_WIDTH:
            raise CheckpointError(
                f"{self.source}: {prefix}.weight_hh_l0 implies {hidden} hidden units, outside 1..{MAX_WIDTH}"
            )
        layers = 0
        while f"{prefix}.weight_ih_l{layers}" in self.sd:
            width = features if layers == 0 else hidden
            self.expect(f"{prefix}.weight_ih_l{layers}", (4 * hidden, width))
            self.expect(f"{prefix}.weight_hh_l{layers}", (4 * hidden, hidden))
            self.expect(f"{prefix}.bias_ih_l{layers}", (4 * hidden,))
            self.expect(f"{prefix}.bias_hh_l{layers}", (4 * hidden,))
            layers += 1
        if layers == 0:
            raise CheckpointError(f"{self.source}: missing tensor {prefix + '.weight_ih_l0'!r} for {self.what}")
        return hidden, layers

    def check_unknown(self, ignored: tuple[str, ...] = ()) -> None:
        unknown = sorted(k for k in self.sd if k not in self.used and not k.startswith(ignored))
        if unknown:
            raise CheckpointError(
                f"{self.source}: unexpected tensors {unknown[:8]}{'...' if len(unknown) > 8 else ''} for {self.what} "
                f"(e.g. a custom network, a continuous action head, or another algorithm); {SUPPORTED}"
            )


def _same(sd: dict[str, torch.Tensor], a: str, b: str) -> bool:
    """Whether every tensor under prefix ``a`` equals the one under ``b`` (SB3 saves a shared module once per
    name it is registered under)."""
    keys_a = sorted(k[len(a) :] for k in sd if k.startswith(a + "."))
    keys_b = sorted(k[len(b) :] for k in sd if k.startswith(b + "."))
    return keys_a == keys_b and all(
        sd[a + k].shape == sd[b + k].shape and torch.equal(sd[a + k], sd[b + k]) for k in keys_a
    )


def _family(data: dict, sd: dict[str, torch.Tensor], source: str) -> str:
    """``actor_critic``, ``recurrent``, ``dqn`` or ``qrdqn`` from the policy class, checked against the keys."""
    by_keys = (
        "dqn"
        if any(k.startswith("q_net.") for k in sd)
        else "qrdqn"
        if any(k.startswith("quantile_net.") for k in sd)
        else "recurrent"
        if any(k.startswith("lstm_actor.") for k in sd)
        else "actor_critic"
        if "action_net.weight" in sd
        else None
    )
    cls = _policy_class(data)
    if cls is not None:
        module, name = cls
        family = _CNN_POLICIES.get(cls)
        if family is None:
            algorithm = _MODULE_ALGORITHMS.get(module)
            if algorithm is None:
                raise CheckpointError(f"{source}: a policy of class {module}.{name}, which is not SB3's; {SUPPORTED}")
            if "MultiInput" in name:
                kind = "a MultiInputPolicy (dict observations)"
            elif "Cnn" in name:
                kind = f"a CnnPolicy ({name})"
            else:
                kind = (
                    f"an {'MlpLstmPolicy' if 'Recurrent' in name else 'MlpPolicy'} ({name}, no convolutional network)"
                )
            raise CheckpointError(f"{source}: {algorithm} with {kind}, which is not supported; {SUPPORTED}")
        if by_keys is not None and by_keys != family:
            raise CheckpointError(
                f"{source}: the data names the policy class {module}.{name} but policy.pth holds the tensors of "
                f"another network ({sorted(sd)[:4]}...): the file is inconsistent"
            )
        return family
    if by_keys is None:
        raise CheckpointError(
            f"{source}: cannot tell the SB3 network: no policy class in its data and none of q_net.*, quantile_net.*, "
            f"lstm_actor.*, action_net.* among its tensors ({sorted(sd)[:6]}...); {SUPPORTED}"
        )
    return by_keys


def _activation(kwargs: dict, default: type[nn.Module], source: str) -> type[nn.Module]:
    if "activation_fn" not in kwargs:
        return default
    name = _class_name(kwargs["activation_fn"])
    if name not in _ACTIVATIONS:
        raise CheckpointError(
            f"{source}: activation_fn {kwargs['activation_fn']!r} between its MLP layers is not one of the torch "
            f"activations supported ({', '.join(_ACTIVATIONS)})"
        )
    return _ACTIVATIONS[name]


def _algorithm_name(family: str, data: dict) -> str:
    if family == "actor_critic":
        return "PPO" if "clip_range" in data else "TRPO" if "cg_max_steps" in data else "A2C"
    return {"recurrent": "RecurrentPPO", "dqn": "DQN", "qrdqn": "QRDQN"}[family]


def _trunk_weights(sd: dict[str, torch.Tensor], towers: list[str], scale: float) -> dict[str, torch.Tensor]:
    """The trunk's (possibly fused) convolution weights and the linear layers after it, under our names."""
    weights = {}
    for index, theirs in enumerate((0, 2, 4)):
        for part in ("weight", "bias"):
            weights[f"trunk.{index}.{part}"] = torch.cat([sd[f"{t}.cnn.{theirs}.{part}"] for t in towers])
    if scale != 1.0:  # normalize_images=False: the network saw bytes, 255 x what it gets here
        weights["trunk.0.weight"] = weights["trunk.0.weight"] * scale
    return weights


def _build(
    data: dict, sd: dict[str, torch.Tensor], source: str
) -> tuple[SB3Policy, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The rebuilt network (float32, CPU, untrained), the state dict to load into it, and the file's tensors it
    uses; every shape checked."""
    family = _family(data, sd, source)
    algorithm = _algorithm_name(family, data)
    what = f"SB3 {algorithm} with {'CnnLstmPolicy' if family == 'recurrent' else 'CnnPolicy'}"
    keys = _Keys(sd, source, what)
    num_actions = _action_count(data, source)  # first: a continuous action space is the clearest reason
    if "log_std" in sd:
        raise CheckpointError(f"{source}: a 'log_std' tensor: a continuous-action (Gaussian) policy; {SUPPORTED}")
    kwargs = _policy_kwargs(data)
    extractor_class = kwargs.get("features_extractor_class")
    if extractor_class is not None and _class_name(extractor_class) != "NatureCNN":
        raise CheckpointError(
            f"{source}: features_extractor_class {_class_name(extractor_class)!r}: only SB3's NatureCNN is supported; "
            f"{SUPPORTED}"
        )
    scale = 1.0 if kwargs.get("normalize_images", True) is not False else 255.0
    weights: dict[str, torch.Tensor] = {}

    def rename(ours: str, theirs: str) -> None:
        weights.update({f"{ours}.{k[len(theirs) + 1 :]}": v for k, v in sd.items() if k.startswith(theirs + ".")})

    if family in ("dqn", "qrdqn"):
        net = "q_net" if family == "dqn" else "quantile_net"
        channels, flat, features = keys.nature_cnn(f"{net}.features_extractor")
        widths = keys.linears(f"{net}.{net}", features)
        if not widths:
            raise CheckpointError(f"{source}: missing tensor {net + '.' + net + '.0.weight'!r} for {what}")
        quantiles = None
        if family == "qrdqn":
            quantiles, rest = divmod(widths[-1], num_actions)
            saved = data.get("n_quantiles", kwargs.get("n_quantiles", quantiles))
            if rest or not 1 <= quantiles <= MAX_QUANTILES or _int(saved, "n_quantiles", source) != quantiles:
                raise CheckpointError(
                    f"{source}: the last quantile layer has {widths[-1]} outputs, not n_quantiles ({saved}) x "
                    f"{num_actions} actions"
                )
        elif widths[-1] != num_actions:
            raise CheckpointError(f"{source}: the Q-network has {widths[-1]} outputs for {num_actions} actions")
        keys.check_unknown(ignored=(f"{net}_target.",))
        shape = _observation_layout(data, channels, flat, source)
        activation = _activation(kwargs, nn.ReLU, source) if len(widths) > 1 else None
        model: SB3Policy = SB3QNetwork(
            shape, num_actions, features=features, hidden=widths[:-1], activation=activation, quantiles=quantiles
        )
        weights.update(_trunk_weights(sd, [f"{net}.features_extractor"], scale))
        rename("linear", f"{net}.features_extractor.linear.0")
        rename("q_net", f"{net}.{net}")
        described = "NatureCNN, " + (f"Q-network MLP {widths[:-1]}" if widths[:-1] else "linear Q-head")
        if quantiles is not None:
            described += f", {quantiles} quantiles (Q = their mean)"
    else:
        # SB3 >= 1.7 registers the actor's extractor as features_extractor and pi_features_extractor, and a shared
        # one as vf_features_extractor too: policy.pth holds each name's copy
        pi_name = "features_extractor" if keys.has("features_extractor") else "pi_features_extractor"
        channels, flat, features = keys.nature_cnn(pi_name)
        if pi_name == "features_extractor" and keys.has("pi_features_extractor"):
            if not _same(sd, "pi_features_extractor", pi_name):
                raise CheckpointError(
                    f"{source}: pi_features_extractor.* and features_extractor.* differ, but SB3 saves the actor's "
                    "extractor under both names: this is not a file SB3 wrote"
                )
            keys.used.update(k for k in sd if k.startswith("pi_features_extractor."))
        separate_vf = keys.has("vf_features_extractor") and not _same(sd, "vf_features_extractor", pi_name)
        if separate_vf:
            if keys.nature_cnn("vf_features_extractor") != (channels, flat, features):
                raise CheckpointError(f"{source}: the critic's NatureCNN has other sizes than the actor's")
        keys.used.update(k for k in sd if k.startswith("vf_features_extractor."))
        lstm = None
        latent = features
        if family == "recurrent":
            hidden, layers = keys.lstm("lstm_actor", features)
            rename("lstm_actor", "lstm_actor")
            if keys.has("lstm_critic"):
                if keys.lstm("lstm_critic", features) != (hidden, layers):
                    raise CheckpointError(f"{source}: the critic's LSTM has other sizes than the actor's")
                rename("lstm_critic", "lstm_critic")
                critic = "lstm"
            elif "critic.weight" in sd:
                keys.expect("critic.weight", (hidden, features))
                keys.expect("critic.bias", (hidden,))
                rename("critic", "critic")
                critic = "linear"
            else:
                if separate_vf:
                    raise CheckpointError(
                        f"{source}: no critic LSTM or layer, and separate actor and critic extractors: sb3-contrib "
                        "shares the actor's LSTM only with a shared extractor"
                    )
                critic = "shared"
            lstm = (hidden, layers, critic)
            latent = hidden
        shared = keys.linears("mlp_extractor.shared_net", latent)
        if shared and family == "recurrent":
            raise CheckpointError(
                f"{source}: shared MLP layers in a recurrent policy, which sb3-contrib does not build"
            )
        top = shared[-1] if shared else latent
        pi = keys.linears("mlp_extractor.policy_net", top)
        vf = keys.linears("mlp_extractor.value_net", top)
        keys.expect("action_net.weight", (num_actions, pi[-1] if pi else top))
        keys.expect("action_net.bias", (num_actions,))
        keys.expect("value_net.weight", (1, vf[-1] if vf else top))
        keys.expect("value_net.bias", (1,))
        keys.check_unknown()
        shape = _observation_layout(data, channels, flat, source)
        activation = _activation(kwargs, nn.Tanh, source) if (shared or pi or vf) else None
        model = SB3ActorCritic(
            shape,
            num_actions,
            features=features,
            separate_vf=separate_vf,
            shared=shared,
            pi=pi,
            vf=vf,
            activation=activation,
            lstm=lstm,
        )
        towers = [pi_name, "vf_features_extractor"] if separate_vf else [pi_name]
        weights.update(_trunk_weights(sd, towers, scale))
        rename("pi_linear", f"{pi_name}.linear.0")
        if separate_vf:
            rename("vf_linear", "vf_features_extractor.linear.0")
        for ours, theirs in (
            ("shared_net", "mlp_extractor.shared_net"),
            ("policy_net", "mlp_extractor.policy_net"),
            ("value_net_mlp", "mlp_extractor.value_net"),
            ("action_net", "action_net"),
            ("value_net", "value_net"),
        ):
            rename(ours, theirs)
        described = f"{'separate actor and critic' if separate_vf else 'shared'} NatureCNN"
        if lstm is not None:
            critic_text = {"lstm": "its own LSTM", "shared": "the actor's LSTM", "linear": "a linear layer"}[lstm[2]]
            described += f", LSTM {lstm[0]} x {lstm[1]} layer(s) (critic: {critic_text})"
        if shared or pi or vf:
            described += f", MLP shared {shared} pi {pi} vf {vf}"
    model.algorithm = algorithm
    model.summary = (
        f"{what}: observations {'x'.join(map(str, model.observation_shape))} uint8, {num_actions} actions, {described}"
        + (", normalize_images=False" if scale != 1.0 else "")
    )
    return model, weights, {k: sd[k] for k in sorted(keys.used)}


def load_sb3(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32
) -> SB3Policy:
    """Load a Stable-Baselines3 / sb3-contrib zip (``model.save(path)``) as a :class:`~engine.core.policy.Policy`.

    Nothing in the file is executed: ``policy.pth`` is read with ``torch.load(weights_only=True)`` and the
    ``data`` JSON's cloudpickled entries are skipped. The algorithm, observation shape (C, H, W), action count
    and architecture are inferred from the JSON's readable fields and the tensors' names and shapes. Returns the
    rebuilt network in eval mode on ``device`` with ``dtype``; anything unsupported or damaged raises
    :class:`CheckpointError` naming the file, what was found and what is supported.
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    path = os.fspath(path)
    source = repr(path)
    data, sd, version = _read_zip(path, source)
    model, weights, used = _build(data, sd, source)
    check_weights(used, source)
    model.sb3_version = version
    if version:
        model.summary += f" (saved by SB3 {version})"
    return load_checked(model, weights, source, device=device, dtype=dtype)
