"""Score and attention of Pong agents: the built-in LSTM agent and baby-a3c's GRU agent, same code for both.

For each agent: the mean score of ``--episodes`` sampled episodes of Pong-v4, and, on a ``--steps``-step rollout,
the share of actor (and critic) perturbation saliency within ``--distance`` frame pixels of the ball, the agent's
paddle and the opponent's paddle, against the share of the screen those regions cover (``engine.metrics.regions``).

    python benchmarks/agent_report.py                   # writes benchmarks/results/agents.json, prints a table
    python benchmarks/agent_report.py --agents builtin/pong@1000000 builtin/pong
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import load_agent  # noqa: E402
from engine.core.perturbation import perturbation_saliency  # noqa: E402
from engine.env.rollout import play_episodes, rollout  # noqa: E402
from engine.metrics.regions import object_shares  # noqa: E402
from engine.policies.registry import ALIASES, resolve_checkpoint  # noqa: E402

CHECKPOINT_DIRS = [str(ROOT.parent / "shared" / "checkpoints")]


def report(name: str, episodes: int, steps: int, distance: float, seed: int) -> dict:
    path = resolve_checkpoint(name, CHECKPOINT_DIRS, allow_download=False)
    agent = load_agent(path, device="cpu")
    started = time.perf_counter()
    returns = play_episodes(agent, "Pong-v4", episodes, seed=seed, progress=True)
    played = rollout(agent, "Pong-v4", steps, seed=seed, progress=True)
    maps = perturbation_saliency(agent, played.frames, played.states, radius=5, density=5, progress=True)
    shares = {
        kind: object_shares(played.frames, getattr(maps, kind), distance=distance) for kind in ("actor", "critic")
    }
    meta_path = Path(path).with_suffix(".json")
    return dict(
        agent=name,
        checkpoint=str(path),
        core=agent.core,
        training=json.loads(meta_path.read_text()) if meta_path.is_file() else None,
        episodes=returns,
        mean_score=sum(returns) / len(returns),
        rollout_steps=steps,
        distance_px=distance,
        shares={kind: {obj: vars(s) | {"ratio": s.ratio} for obj, s in per.items()} for kind, per in shares.items()},
        seconds=round(time.perf_counter() - started, 1),
    )


def markdown_table(rows: list[dict]) -> str:
    """The agent table of docs/agents.md: score of each episode, and actor/critic saliency near ball and paddle vs area."""
    lines = [
        "| agent | training frames | mean score (5 sampled episodes) | actor saliency near ball / area "
        "| near own paddle / area | critic near ball / area |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        a, c = row["shares"]["actor"], row["shares"]["critic"]
        # built-in checkpoints carry a .json; baby-a3c's names count millions of frames (baby-a3c/pong@40)
        known = ALIASES.get(row["agent"], row["agent"]).partition("@")[2]
        frames = f"{row['training']['frames']:,}" if row["training"] else (f"{known}M" if known else "?")
        scores = ", ".join(f"{x:+.0f}" for x in row["episodes"])
        lines.append(
            f"| `{row['agent']}` ({row['core'].upper()}) | {frames} | {row['mean_score']:+.1f} ({scores}) | "
            f"{a['ball']['saliency']:.1%} / {a['ball']['area']:.1%} | {a['paddle']['saliency']:.1%} / "
            f"{a['paddle']['area']:.1%} | {c['ball']['saliency']:.1%} / {c['ball']['area']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["builtin/pong", "baby-a3c/pong"])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--distance", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agents.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rows = [report(name, args.episodes, args.steps, args.distance, args.seed) for name in args.agents]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(markdown_table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
