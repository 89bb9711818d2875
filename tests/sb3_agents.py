"""Real SB3 / sb3-contrib zips for the tests, made by the libraries themselves, and tools to edit them.

``make_agent(kind, path)`` builds a seeded model on a tiny image environment (no Atari needed), saves it with
``model.save`` and returns the model (its own policy is the reference the adapter must match).
``rewrite_zip`` copies a zip with its ``data`` JSON, ``policy.pth`` state dict or version edited, to make the
files older SB3 versions and RL Zoo wrote, and broken ones.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

NUM_ACTIONS = 6


class ImageEnv(gym.Env):
    """Random uint8 images, ``Discrete(6)`` actions (or any action space): enough for SB3 to build a policy."""

    def __init__(self, shape=(84, 84, 4), action_space=None, observation_space=None):
        self.observation_space = observation_space or spaces.Box(0, 255, shape, np.uint8)
        self.action_space = action_space or spaces.Discrete(NUM_ACTIONS)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _constructor(kind: str):
    """(class, policy, env, kwargs) for each kind of test agent."""
    from sb3_contrib import QRDQN, RecurrentPPO
    from stable_baselines3 import A2C, DQN, PPO

    on_policy = dict(n_steps=8)
    recurrent = dict(n_steps=8, batch_size=8)
    off_policy = dict(buffer_size=16, learning_starts=0)
    return {
        # channels-last env: SB3 wraps it in VecTransposeImage and saves the (4, 84, 84) space
        "ppo": (PPO, "CnnPolicy", ImageEnv((84, 84, 4)), dict(on_policy, batch_size=8)),
        "a2c": (A2C, "CnnPolicy", ImageEnv((4, 84, 84)), dict(n_steps=4)),
        "ppo_separate": (
            PPO,
            "CnnPolicy",
            ImageEnv(),
            dict(on_policy, batch_size=8, policy_kwargs=dict(share_features_extractor=False)),
        ),
        "ppo_mlp": (
            PPO,
            "CnnPolicy",
            ImageEnv(),
            dict(
                on_policy,
                batch_size=8,
                policy_kwargs=dict(net_arch=dict(pi=[64], vf=[32]), activation_fn=nn.ReLU, normalize_images=False),
            ),
        ),
        "ppo_same_layers": (
            PPO,
            "CnnPolicy",
            ImageEnv(),
            dict(on_policy, batch_size=8, policy_kwargs=dict(net_arch=dict(pi=[16], vf=[16]))),
        ),
        "dqn": (DQN, "CnnPolicy", ImageEnv(), off_policy),
        "qrdqn": (QRDQN, "CnnPolicy", ImageEnv(), dict(off_policy, policy_kwargs=dict(n_quantiles=7))),
        "rppo": (RecurrentPPO, "CnnLstmPolicy", ImageEnv(), recurrent),
        "rppo_shared": (
            RecurrentPPO,
            "CnnLstmPolicy",
            ImageEnv(),
            dict(recurrent, policy_kwargs=dict(shared_lstm=True, enable_critic_lstm=False, lstm_hidden_size=32)),
        ),
        "rppo_linear": (
            RecurrentPPO,
            "CnnLstmPolicy",
            ImageEnv(),
            dict(
                recurrent,
                policy_kwargs=dict(
                    enable_critic_lstm=False, n_lstm_layers=2, lstm_hidden_size=32, share_features_extractor=False
                ),
            ),
        ),
        # unsupported ones
        "ppo_mlppolicy": (
            PPO,
            "MlpPolicy",
            ImageEnv(observation_space=spaces.Box(0, 1, (8,), np.float32)),
            dict(on_policy, batch_size=8),
        ),
        "ppo_continuous": (
            PPO,
            "CnnPolicy",
            ImageEnv(action_space=spaces.Box(-1, 1, (2,), np.float32)),
            dict(on_policy, batch_size=8),
        ),
    }[kind]


def make_agent(kind: str, path: Path, seed: int = 0):
    """Build, perturb (so that the logits are not all near zero) and save a seeded agent; return the model."""
    cls, policy, env, kwargs = _constructor(kind)
    model = cls(policy, env, seed=seed, device="cpu", **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if kind == "ppo_same_layers":  # identical actor and critic layers: SB3 1.x saved them as shared_net
            model.policy.mlp_extractor.value_net[0].load_state_dict(
                model.policy.mlp_extractor.policy_net[0].state_dict()
            )
        action_net = getattr(model.policy, "action_net", None)
        if action_net is not None and isinstance(action_net, nn.Linear):
            # SB3 initialises the action layer with gain 0.01: make the logits O(1), as in a trained agent
            action_net.weight.mul_(100)
            action_net.bias.add_(torch.randn(action_net.bias.shape, generator=generator))
    model.save(path)
    return model


# --- editing zips ----------------------------------------------------------------------------------------------


def read_zip(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
        state_dict = torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)
    return data, state_dict


def saved_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rewrite_zip(src: Path, dst: Path, data=None, policy=None, version: str | None = None, drop=()) -> Path:
    """Copy ``src`` to ``dst`` with ``data(dict) -> dict`` (or raw bytes for data), ``policy(state_dict) ->
    state_dict`` (or raw bytes for policy.pth), the SB3 version string replaced, and the entries in ``drop`` left
    out. Entries are deflated, so a long run of one byte takes little room in ``dst``."""
    old_data, old_policy = read_zip(src)
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for name in archive.namelist():
            if name in drop:
                continue
            content = archive.read(name)
            if name == "data" and data is not None:
                edited_data = data(old_data)
                content = edited_data if isinstance(edited_data, bytes) else json.dumps(edited_data, indent=4).encode()
            elif name == "policy.pth" and policy is not None:
                edited = policy(dict(old_policy))
                content = edited if isinstance(edited, bytes) else saved_bytes(edited)
            elif name == "_stable_baselines3_version" and version is not None:
                content = version.encode()
            out.writestr(name, content)
    return dst


def gym_spaces_data(data: dict, shape: list[int]) -> dict:
    """``data`` as SB3 1.x wrote it with gym 0.21: ``gym.spaces`` types, ``shape`` (not ``_shape``), ``n`` an int."""
    data = dict(data)
    box, discrete = data["observation_space"], data["action_space"]
    data["observation_space"] = {
        ":type:": "<class 'gym.spaces.box.Box'>",
        ":serialized:": box[":serialized:"],
        "dtype": "uint8",
        "shape": shape,
        "low": box["low"],
        "high": box["high"],
        "_np_random": None,
    }
    data["action_space"] = {
        ":type:": "<class 'gym.spaces.discrete.Discrete'>",
        ":serialized:": discrete[":serialized:"],
        "n": int(discrete["n"]),
        "shape": [],
        "dtype": "int64",
        "_np_random": None,
    }
    return data
