"""Choose and score a trained agent honestly: choose on some seeds, report on others, every game listed.

Each candidate checkpoint is first shipped the way the package ships agents (half precision, into a temporary
folder), so what is scored is exactly the file that would ship. Every game is one full game (all lives, rewards
unclipped) played by the engine's own rollout in the agent's own pipeline, one game per seed, actions sampled
from the policy unless ``--greedy``.

    python benchmarks/evaluate_agent.py training/ppo_pong_lstm/checkpoints/step_*.pt \\
        --env PongNoFrameskip-v4 --choose-seeds 0-4 --report-seeds 100-109 \\
        --out benchmarks/results/ppo_pong_evaluation.json

The checkpoint with the best mean over the choosing seeds is reported on the report seeds (seeds never used for
training, which seeds its environments from ``seed * 100003 + ...``, nor for choosing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from engine import load_policy  # noqa: E402
from engine.env.rollout import play_episodes  # noqa: E402
from engine.training.shipping import ship_checkpoint  # noqa: E402


def seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``1,5,9`` -> [1, 5, 9]."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def games(path: Path, env_id: str, game_seeds: list[int], greedy: bool, max_steps: int) -> list[float]:
    agent = load_policy(path, device="cpu")
    return [play_episodes(agent, env_id, 1, seed=s, greedy=greedy, max_steps=max_steps)[0] for s in game_seeds]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--choose-seeds", default="0-4", type=seeds)
    parser.add_argument("--report-seeds", default="100-109", type=seeds)
    parser.add_argument("--greedy", action="store_true", help="argmax actions (default: sampled)")
    parser.add_argument("--max-steps", type=int, default=27_000,
                        help="agent steps per game before it counts as failed (a greedy agent can rally forever)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if set(args.choose_seeds) & set(args.report_seeds):
        parser.error("the choosing and reporting seeds must differ")
    started = time.perf_counter()
    candidates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in args.checkpoints:
            shipped = ship_checkpoint(checkpoint, Path(tmp) / checkpoint.stem)
            returns = games(shipped, args.env, args.choose_seeds, args.greedy, args.max_steps)
            candidates[str(checkpoint)] = returns
            print(f"{checkpoint}: mean {np.mean(returns):+.2f} on seeds {args.choose_seeds}: {returns}", flush=True)
        chosen = max(candidates, key=lambda c: np.mean(candidates[c]))
        shipped = ship_checkpoint(Path(chosen), Path(tmp) / "chosen")
        reported = games(shipped, args.env, args.report_seeds, args.greedy, args.max_steps)
    result = dict(
        env_id=args.env, pipeline="cleanrl_atari (engine), full games, rewards unclipped, no sticky actions",
        actions="greedy" if args.greedy else "sampled", precision="float16 (as shipped)",
        choose_seeds=args.choose_seeds, candidates={c: dict(returns=r, mean=float(np.mean(r))) for c, r in candidates.items()},
        chosen=chosen, report_seeds=args.report_seeds, report_returns=reported, report_mean=float(np.mean(reported)),
        machine=machine(), seconds=round(time.perf_counter() - started, 1),
    )
    print(f"chosen {chosen}: mean {result['report_mean']:+.2f} over seeds {args.report_seeds}: {reported}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
