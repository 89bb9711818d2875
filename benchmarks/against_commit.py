"""The engine against an earlier commit of itself, side by side in one run (issue 19's CPU goal: the exact path
against the commit before that work; a benchmark, not a test).

    python benchmarks/against_commit.py --commit 37b185b^ --out FILE [--data .gpu_carry] [--frames 32]
                                        [--rounds 3] [--agents baby-a3c,pong_ppo] [--variants eager,compile]

The earlier commit is checked out into a temporary git worktree. Each timing runs in a fresh process that imports
``engine`` from one tree (``--time TREE AGENT VARIANT FRAMES``): ``perturbation_saliency`` with the defaults of
that tree (d5 r5 occlude, float32, ``incremental="auto"``) on ``--frames`` real recorded frames of
``benchmarks/gpu/prepare.py`` (baby-a3c's Pong frames and GRU states; ``builtin/pong_ppo``'s observations and
LSTM states), after a warm-up call on 4 frames (compilation included), best of 3 calls. The variants: the earlier
tree's ``eager``; this tree's ``eager`` and ``compile`` (``compile=True``). Rounds interleave every configuration,
so a slow phase of a shared machine hits them alike; the result keeps every round, and the ratios of the best
rounds to the earlier tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ("baby-a3c", "pong_ppo")


def time_one(tree: Path, agent_name: str, variant: str, frames: int, data: Path, threads: int) -> float:
    """Frames per second of one configuration, in this process (``engine`` imported from ``tree``)."""
    sys.path.insert(0, str(tree))
    import numpy as np
    import torch

    import engine
    from engine.core.perturbation import perturbation_saliency
    from engine.policies.greydanus2017 import load_agent
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint

    if not Path(engine.__file__).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"engine was imported from {engine.__file__}, not from {tree}")
    torch.set_num_threads(threads)
    if agent_name == "baby-a3c":
        arrays = dict(np.load(data / "pong_gru.npz"))
        agent, inputs = load_agent(data / "baby-a3c-pong.tar", device="cpu"), arrays["frames"][:frames]
    else:
        arrays = dict(np.load(data / "pong_ppo.npz"))
        agent = load_policy(resolve_checkpoint("builtin/pong_ppo"), device="cpu")
        inputs = arrays["observations"][:frames]
    states = tuple(torch.from_numpy(arrays[k][:frames]) for k in sorted(arrays) if k.startswith("state_"))
    settings: dict = dict(density=5, radius=5)
    if variant == "compile":
        settings["compile"] = True
    perturbation_saliency(agent, inputs[:4], tuple(s[:4] for s in states), **settings)  # warm-up, compilation
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        perturbation_saliency(agent, inputs, states, **settings)
        best = min(best, time.perf_counter() - start)
    return len(inputs) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", help="the earlier commit (anything git rev-parse takes)")
    parser.add_argument("--out", type=Path, help="the JSON file to write (after every round)")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu_carry", help="benchmarks/gpu/prepare.py's folder")
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="eager,compile", help="this tree's variants (eager, compile)")
    parser.add_argument("--time", nargs=4, metavar=("TREE", "AGENT", "VARIANT", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time:
        tree, agent, variant, frames = args.time
        print(f"{time_one(Path(tree), agent, variant, int(frames), args.data, args.threads):.3f}")
        return
    if not args.commit or not args.out:
        parser.error("--commit and --out are required")
    agents = args.agents.split(",")
    if unknown := sorted(set(agents) - set(AGENTS)):
        parser.error(f"unknown agents {unknown}: choose from {AGENTS}")
    if unknown := sorted(set(args.variants.split(",")) - {"eager", "compile"}):
        parser.error(f"unknown variants {unknown}: choose from eager, compile")
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.commit}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"no commit {args.commit!r} in this repository: {commit.stderr.strip()}")
    sha = commit.stdout.strip()
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import cpu_flags, machine

    with tempfile.TemporaryDirectory() as tmp:
        earlier = Path(tmp) / "earlier"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(earlier), sha], cwd=ROOT, check=True)
        try:
            configs = [(earlier, "earlier", "eager")] + [(ROOT, "this", v) for v in args.variants.split(",")]
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
            result: dict = dict(
                machine=machine(),
                cpu_flags=cpu_flags(),
                threads=args.threads,
                frames=args.frames,
                earlier_commit=sha,
                this_commit=head.strip(),
                settings="d5 r5 occlude float32, incremental='auto', best of 3 calls after a warm-up",
                rounds=[],
            )
            env = {**os.environ, "PYTHONPATH": ""}  # each child imports engine from its own tree
            for number in range(args.rounds):
                row: dict = {}
                for agent in agents:
                    for tree, label, variant in configs:
                        timed = subprocess.run(
                            [sys.executable, __file__, "--time", str(tree), agent, variant, str(args.frames)]
                            + ["--data", str(args.data), "--threads", str(args.threads)],
                            capture_output=True,
                            text=True,
                            env=env,
                            timeout=900,
                        )
                        if timed.returncode != 0:
                            raise SystemExit(f"{label} {variant} {agent} failed:\n{timed.stderr[-3000:]}")
                        rate = float(timed.stdout.strip().splitlines()[-1])
                        row[f"{agent}:{label}:{variant}"] = rate
                        print(f"round {number + 1} {agent:9s} {label:8s} {variant:8s} {rate:8.2f} frames/s", flush=True)
                result["rounds"].append(row)
                best = {key: max(r[key] for r in result["rounds"]) for key in row}
                result["best_frames_per_s"] = best
                result["vs_earlier"] = {
                    key: round(rate / best[f"{key.split(':')[0]}:earlier:eager"], 3)
                    for key, rate in best.items()
                    if ":this:" in key
                }
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1))
            print(json.dumps(result["vs_earlier"]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(earlier)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
