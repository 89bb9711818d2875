"""The learning curve of a PPO run from its ``progress.csv`` (``python -m engine.train``), as a PNG.

    python benchmarks/plot_training.py training/ppo_pong_lstm/progress.csv benchmarks/results/ppo_pong_learning_curve.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_progress(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path} has no rows yet")
    return {key: [float(r[key]) if r[key] not in ("", None) else float("nan") for r in rows] for key in rows[0]}


def plot(progress: dict[str, list[float]], out: Path, title: str) -> Path:
    frames = [f / 1e6 for f in progress["frames"]]
    hours = [s / 3600 for s in progress["wall_seconds"]]
    fig, (ax, speed) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    ax.plot(frames, progress["mean_return_100"], color="tab:blue")
    ax.axhline(18, color="tab:green", linestyle="--", linewidth=1, label="target +18")
    ax.set_ylabel("mean return, last 100 games")
    ax.set_ylim(-21.5, 21.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    top = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    top.set_xlabel(f"{hours[-1]:.1f} h of wall time in all")
    speed.plot(frames, progress["frames_per_second"], color="tab:gray")
    speed.set_ylabel("frames/s")
    speed.set_xlabel("training frames (millions)")
    speed.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("progress", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--title", default="PPO (CleanRL ppo_atari_lstm) on PongNoFrameskip-v4, 2-core CPU")
    args = parser.parse_args(argv)
    print(plot(read_progress(args.progress), args.out, args.title))


if __name__ == "__main__":
    main()
