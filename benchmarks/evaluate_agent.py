"""Choose and score a trained agent honestly: choose on some seeds, report on others, every game listed.

Each candidate checkpoint is first shipped the way the package ships agents (half precision, into a temporary
folder), so what is scored is exactly the file that would ship. Every game is one full game (all lives, rewards
unclipped) played by the engine's own rollout in the agent's own pipeline, one game per seed, actions sampled
from the policy unless ``--actions greedy``. ``--actions sampled,greedy`` makes each (checkpoint, way of acting)
pair a candidate, so how the agent acts is chosen on the choosing seeds too. A game that has not ended within
``--max-steps`` agent steps (a greedy agent can hold a rally forever) is listed as ``null`` and rules its candidate
out.

    python benchmarks/evaluate_agent.py training/ppo_pong_lstm/checkpoints/step_*.pt \\
        --env PongNoFrameskip-v4 --choose-seeds 0-4 --report-seeds 100-109 \\
        --out benchmarks/results/ppo_pong_evaluation.json

The checkpoint with the best mean over the choosing seeds is reported on the report seeds (seeds never used for
training, which seeds its environments from ``seed * 100003 + ...``, nor for choosing).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from engine import load_policy  # noqa: E402
from engine.env.rollout import EpisodesUnfinished, play_episodes  # noqa: E402
from engine.training.shipping import ship_checkpoint  # noqa: E402


def seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``1,5,9`` -> [1, 5, 9]."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


ACTIONS = ("sampled", "greedy")


def actions(text: str) -> list[str]:
    """``sampled,greedy`` -> ["sampled", "greedy"]."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ACTIONS]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"actions must be sampled, greedy or sampled,greedy; got {text!r}")
    return list(dict.fromkeys(modes))


def game(agent, env_id: str, seed: int, greedy: bool, max_steps: int) -> float | None:
    """One full game's return, or None when it has not ended within ``max_steps`` agent steps."""
    try:
        return play_episodes(agent, env_id, 1, seed=seed, greedy=greedy, max_steps=max_steps)[0]
    except EpisodesUnfinished:
        return None


@functools.lru_cache(maxsize=2)
def _policy(path: Path):
    """Each process loads a candidate once for all its games (the policy keeps no state between games)."""
    return load_policy(path, device="cpu")


def _one_game(task: tuple) -> float | None:
    path, env_id, seed, greedy, max_steps = task
    torch.set_num_threads(1)
    return game(_policy(path), env_id, seed, greedy, max_steps)


def play(tasks: list[tuple], jobs: int) -> list[float | None]:
    """The return of each game ``(shipped checkpoint, env_id, seed, greedy, max_steps)``, in order, played ``jobs`` at
    a time in worker processes."""
    if jobs == 1:
        return [_one_game(t) for t in tasks]
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_one_game, tasks))


def mean(returns: list[float | None]) -> float | None:
    """The mean return, or None when a game did not finish (the candidate failed)."""
    return None if any(r is None for r in returns) else float(np.mean(returns))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--choose-seeds", default="0-4", type=seeds)
    parser.add_argument("--report-seeds", default="100-109", type=seeds)
    parser.add_argument(
        "--actions",
        default=["sampled"],
        type=actions,
        help="sampled (default), greedy (argmax), or sampled,greedy to choose between them too",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=27_000,
        help="agent steps per game before it counts as failed (a greedy agent can rally forever)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="games played at once, in worker processes of one torch thread each"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if set(args.choose_seeds) & set(args.report_seeds):
        parser.error("the choosing and reporting seeds must differ")
    if args.jobs < 1:
        parser.error(f"--jobs must be 1 or more, got {args.jobs}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        shipped = {c: ship_checkpoint(c, Path(tmp) / c.stem) for c in args.checkpoints}
        pairs = [(c, mode) for c in args.checkpoints for mode in args.actions]
        returns = iter(
            play(
                [
                    (shipped[c], args.env, seed, mode == "greedy", args.max_steps)
                    for c, mode in pairs
                    for seed in args.choose_seeds
                ],
                args.jobs,
            )
        )
        candidates = []
        for checkpoint, mode in pairs:
            r = [next(returns) for _ in args.choose_seeds]
            candidates.append(dict(checkpoint=str(checkpoint), actions=mode, returns=r, mean=mean(r)))
            print(f"{checkpoint} ({mode}): mean {_signed(mean(r))} on seeds {args.choose_seeds}: {r}", flush=True)
        finished = [c for c in candidates if c["mean"] is not None]
        if not finished:
            raise SystemExit(f"no candidate finished all its games within {args.max_steps} steps")
        chosen = max(finished, key=lambda c: c["mean"])
        reported = play(
            [
                (shipped[Path(chosen["checkpoint"])], args.env, seed, chosen["actions"] == "greedy", args.max_steps)
                for seed in args.report_seeds
            ],
            args.jobs,
        )
    result = dict(
        env_id=args.env,
        pipeline="cleanrl_atari (engine), full games, rewards unclipped, no sticky actions",
        precision="float16 (as shipped)",
        max_steps=args.max_steps,
        choose_seeds=args.choose_seeds,
        candidates=candidates,
        chosen=chosen["checkpoint"],
        actions=chosen["actions"],
        report_seeds=args.report_seeds,
        report_returns=reported,
        report_mean=mean(reported),
        machine=machine(),
        seconds=round(time.perf_counter() - started, 1),
    )
    print(
        f"chosen {chosen['checkpoint']} ({chosen['actions']} actions): mean {_signed(result['report_mean'])} over "
        f"seeds {args.report_seeds}: {reported}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _signed(value: float | None) -> str:
    return "unfinished" if value is None else f"{value:+.2f}"


if __name__ == "__main__":
    main()
