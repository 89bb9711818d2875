"""Prepare what the GPU check needs on a machine that has no network, gymnasium, ale-py or kornia.

Run here (where the project is installed): ``python benchmarks/gpu/prepare.py [DIR]`` (default ``.gpu_carry``,
git-ignored through ``.git/info/exclude``). It writes into DIR:

- ``pong_gru.npz``: 1000 real Pong-v4 steps played by baby-a3c's Pong agent (raw frames, the GRU state used on
  each frame, the logits and values recorded on this CPU), compressed (~3 MB);
- ``pong_lstm.npz``: 200 steps played by the built-in LSTM agent (``builtin/pong``: states ``(hx, cx)``);
- ``baby-a3c-pong.tar``: the baby-a3c checkpoint, resolved through the registry (``ATARI_SALIENCY_CHECKPOINTS``,
  the cache or the sha256-checked download);
- ``cleanrl-ppo.pt`` and ``pong_nature.npz``: a seeded CleanRL ``ppo_atari`` agent (Nature CNN on 4 stacked 84x84
  frames, saved as CleanRL saves it, in float16: its weights are rounded to float16 first, so the file holds
  exactly the agent that played, in half the bytes the device tool carries) and 1000 PongNoFrameskip-v4 steps it
  played in CleanRL's pipeline (the observations it saw, logits, values);
- ``pong_ppo.npz``: 300 PongNoFrameskip-v4 steps played by the built-in ``builtin/pong_ppo`` (Nature CNN + LSTM
  on one 84x84 frame; states ``(hx, cx)``);
- ``sb3-ppo-shell.zip``, ``sb3-ppo-keys.json`` and ``pong_sb3.npz``: an SB3 ``PPO("CnnPolicy")`` saved by SB3
  with the CleanRL agent's weights (its zip without the weights, rebuilt from ``cleanrl-ppo.pt`` on the GPU machine,
  so that they travel once) and 300 PongNoFrameskip-v4 steps it played in SB3's Atari pipeline;
- ``wheels/``: kornia and kornia-rs wheels for the GPU machine's Python (3.12), downloaded with pip, and those of
  the end-to-end job (gymnasium, ale-py, zarr and its codecs, omegaconf): about 21 MB.

Then carry DIR along: ``benchmarks/gpu/check.sh $OUT DIR`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.env.rollout import rollout
from engine.policies.cleanrl import CleanRLPPO, load_cleanrl
from engine.policies.greydanus2017 import load_agent
from engine.policies.loading import load_policy
from engine.policies.registry import resolve_checkpoint

WHEELS = ["kornia==0.9.0", "kornia_rs==0.2.0"]
# the end-to-end job (benchmarks/gpu/end_to_end.py): the games, the stores and the job's config schema; the versions
# this project is tested with; the GPU image has numpy, opencv, tqdm, pillow and cloudpickle
JOB_WHEELS = [
    "gymnasium==1.4.0",
    "ale-py==0.12.1",
    "farama-notifications==0.0.6",
    "zarr==3.1.6",
    "numcodecs==0.16.6",
    "donfig==0.8.1.post1",
    "google-crc32c==1.9.0",
    "omegaconf==2.3.1",
]
SDIST_ONLY = ["antlr4-python3-runtime==4.9.3"]  # omegaconf's parser: published as a source archive only
DEVICE_LIMIT_MB = 64 * 2**20 / 1e6  # the device tool's limit on the working tree and what it carries together
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def record(agent, env_id: str, steps: int, path: Path) -> None:
    played = rollout(agent, env_id, steps, seed=0, progress=True)
    arrays = dict(logits=played.logits.numpy(), values=played.values.numpy(), actions=played.actions.numpy())
    if agent.pipeline == "greydanus2017":
        arrays["frames"] = played.frames.numpy()  # raw frames: the check preprocesses them on the device
    else:
        arrays["observations"] = played.observations.numpy()
    arrays.update({f"state_{i}": s.numpy() for i, s in enumerate(played.states)})
    np.savez_compressed(path, **arrays)
    print(f"{path}: {steps} steps, {path.stat().st_size / 1e6:.1f} MB")


def sb3_key_map(sb3_keys: list[str]) -> dict[str, str]:
    """SB3 ``PPO("CnnPolicy")`` state-dict key -> CleanRL ``ppo_atari`` key: the same Nature CNN and heads (SB3 keeps
    the shared extractor under three names)."""
    layers = {"cnn.0": "network.0", "cnn.2": "network.2", "cnn.4": "network.4", "linear.0": "network.7"}
    mapped = {}
    for key in sb3_keys:
        prefix, _, rest = key.partition(".")
        if prefix in ("features_extractor", "pi_features_extractor", "vf_features_extractor"):
            layer, _, param = rest.rpartition(".")
            mapped[key] = f"{layers[layer]}.{param}"
        else:
            mapped[key] = {"action_net": "actor", "value_net": "critic"}[prefix] + key[len(prefix) :]
    return mapped


def save_sb3_ppo(out: Path, cleanrl_state: dict[str, torch.Tensor]) -> Path:
    """A ``PPO("CnnPolicy")`` saved by SB3 itself (its zip, for 4 stacked 84x84 frames) holding the CleanRL agent's
    weights (the same Nature CNN and heads). What travels is the zip without its ``policy.pth``
    (``sb3-ppo-shell.zip``) and the key map (``sb3-ppo-keys.json``): ``speed.py``'s ``sb3_zip`` rebuilds the zip
    from ``cleanrl-ppo.pt`` there, so the weights travel once. Returns the full zip, in a temporary folder."""
    import json
    import zipfile

    import gymnasium as gym
    from gymnasium import spaces
    from stable_baselines3 import PPO

    class Shapes(gym.Env):  # only its spaces matter: SB3 builds the policy from them
        observation_space = spaces.Box(0, 255, (84, 84, 4), np.uint8)
        action_space = spaces.Discrete(6)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    model = PPO("CnnPolicy", Shapes(), n_steps=8, batch_size=8, seed=0, device="cpu")
    keys = sb3_key_map(list(model.policy.state_dict()))
    model.policy.load_state_dict({k: cleanrl_state[v] for k, v in keys.items()}, strict=True)
    full = Path(tempfile.mkdtemp()) / "sb3-ppo.zip"
    model.save(full)
    with zipfile.ZipFile(full) as source, zipfile.ZipFile(out / "sb3-ppo-shell.zip", "w") as shell:
        for info in source.infolist():
            if info.filename != "policy.pth":
                shell.writestr(info, source.read(info.filename))
    (out / "sb3-ppo-keys.json").write_text(json.dumps(list(keys.items())))
    return full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=".gpu_carry")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the baby-a3c rollout (at least 210)")
    parser.add_argument("--no-wheels", action="store_true", help="skip the wheels (a machine that has kornia)")
    args = parser.parse_args()
    if args.steps < 210:
        parser.error("--steps must be at least 210: the check scores frames up to 204")
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    baby = resolve_checkpoint("baby-a3c/pong@40")
    shutil.copyfile(baby, out / "baby-a3c-pong.tar")
    record(load_agent(baby, device="cpu"), "Pong-v4", args.steps, out / "pong_gru.npz")
    record(load_agent(resolve_checkpoint("builtin/pong"), device="cpu"), "Pong-v4", 200, out / "pong_lstm.npz")
    record(
        load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu"),
        "PongNoFrameskip-v4",
        300,
        out / "pong_ppo.npz",
    )
    torch.manual_seed(0)
    nature = CleanRLPPO(num_actions=6)
    with torch.no_grad():  # logits of order 1, as in a trained agent (CleanRL initialises the actor with std 0.01)
        nature.actor.weight.mul_(100)
        for parameter in nature.parameters():  # float16 values: the float16 file below holds them exactly
            parameter.copy_(parameter.half().float())
    torch.save({k: v.half() for k, v in nature.state_dict().items()}, out / "cleanrl-ppo.pt")
    record(
        load_cleanrl(out / "cleanrl-ppo.pt", device="cpu"), "PongNoFrameskip-v4", args.steps, out / "pong_nature.npz"
    )
    sb3_full = save_sb3_ppo(out, nature.state_dict())
    record(load_policy(sb3_full, device="cpu"), "PongNoFrameskip-v4", 300, out / "pong_sb3.npz")
    if args.no_wheels:
        print(f"ready: {out} (no wheels)")
        return
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    # only this run's wheels: one left from an earlier pin would make the device's install refuse both versions
    shutil.rmtree(out / "wheels", ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(out / "wheels"),
            *WHEELS,
            *JOB_WHEELS,
        ],
        check=True,
    )
    subprocess.run(  # pure Python: a wheel built here installs there
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out / "wheels"), *SDIST_ONLY], check=True
    )
    carried = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    # what travels: tracked files and untracked ones git does not ignore, as the device tool counts them
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], capture_output=True, check=True
    ).stdout.split(b"\0")
    tree = sum(Path(name.decode()).stat().st_size for name in tracked if name and Path(name.decode()).is_file()) / 1e6
    print(f"ready: {out} ({carried:.1f} MB; with the tracked tree, {tree + carried:.1f} of {DEVICE_LIMIT_MB:.1f} MB)")
    if tree + carried > DEVICE_LIMIT_MB:
        sys.exit(f"error: the tree ({tree:.1f} MB) and {out} ({carried:.1f} MB) exceed the device tool's limit")


if __name__ == "__main__":
    main()
