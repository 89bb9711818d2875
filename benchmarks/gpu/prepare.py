"""Prepare what the GPU check needs on a machine that has no network, gymnasium, ale-py or kornia.

Run here (where the project is installed): ``python benchmarks/gpu/prepare.py [DIR]`` (default ``.gpu_carry``,
git-ignored through ``.git/info/exclude``). It writes into DIR:

- ``pong_gru.npz``: 1000 real Pong-v4 steps played by baby-a3c's Pong agent (raw frames, the GRU state used on
  each frame, the logits and values recorded on this CPU), compressed (~3 MB);
- ``pong_lstm.npz``: 200 steps played by the built-in LSTM agent (``builtin/pong``: states ``(hx, cx)``);
- ``baby-a3c-pong.tar``: the baby-a3c checkpoint, resolved through the registry (``ATARI_SALIENCY_CHECKPOINTS``,
  the cache or the sha256-checked download);
- ``cleanrl-ppo.pt`` and ``pong_nature.npz``: a seeded CleanRL ``ppo_atari`` agent (Nature CNN on 4 stacked 84x84
  frames, saved as CleanRL saves it) and 1000 PongNoFrameskip-v4 steps it played in CleanRL's pipeline (the
  observations it saw, logits, values);
- ``pong_ppo.npz``: 300 PongNoFrameskip-v4 steps played by the built-in ``builtin/pong_ppo`` (Nature CNN + LSTM
  on one 84x84 frame; states ``(hx, cx)``);
- ``wheels/``: kornia and kornia-rs wheels for the GPU machine's Python (3.12), downloaded with pip.

Then carry DIR along: ``benchmarks/gpu/check.sh $OUT DIR`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from engine.env.rollout import rollout
from engine.policies.cleanrl import CleanRLPPO, load_cleanrl
from engine.policies.greydanus2017 import load_agent
from engine.policies.loading import load_policy
from engine.policies.registry import resolve_checkpoint

WHEELS = ["kornia==0.9.0", "kornia_rs==0.2.0"]
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
    torch.save(nature.state_dict(), out / "cleanrl-ppo.pt")
    record(
        load_cleanrl(out / "cleanrl-ppo.pt", device="cpu"), "PongNoFrameskip-v4", args.steps, out / "pong_nature.npz"
    )
    if args.no_wheels:
        print(f"ready: {out} (no wheels)")
        return
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
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
        ],
        check=True,
    )
    print(f"ready: {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
