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


def windowed_speed(frames: list[float], seconds: list[float], window: int = 10) -> tuple[list[float], list[float]]:
    """Frames per second of wall time over each ``window`` consecutive updates (the CSV's own column averages
    since the process started, which hides slow and fast stretches); pauses between runs are left out."""
    xs, ys = [], []
    for i in range(window, len(frames)):
        elapsed = seconds[i] - seconds[i - window]
        if elapsed > 0:
            xs.append(frames[i])
            ys.append((frames[i] - frames[i - window]) / elapsed)
    return xs, ys


def plot(
    progress: dict[str, list[float]],
    out: Path,
    title: str,
    target: float | None = 18.0,
    ylim: tuple[float, float] | None = (-21.5, 21.5),
) -> Path:
    frames = [f / 1e6 for f in progress["frames"]]
    hours = [s / 3600 for s in progress["wall_seconds"]]
    fig, (ax, speed) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    ax.plot(frames, progress["mean_return_100"], color="tab:blue")
    if target is not None:
        ax.axhline(target, color="tab:green", linestyle="--", linewidth=1, label=f"target {target:+g}")
        ax.legend(loc="lower right")
    ax.set_ylabel("mean return, last 100 games")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    top = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    top.set_xlabel(f"{hours[-1]:.1f} h of wall time in all")
    at, per_second = windowed_speed(progress["frames"], progress["wall_seconds"])
    speed.plot([f / 1e6 for f in at], per_second, color="tab:gray", linewidth=0.8)
    speed.set_ylabel("frames/s\n(10 updates)")
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
    parser.add_argument("--target", default="18", help="the target return drawn as a line, or none")
    parser.add_argument(
        "--pong-axis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fix the return axis to Pong's -21..21 (--no-pong-axis: fit the data)",
    )
    args = parser.parse_args(argv)
    target = None if args.target.lower() == "none" else float(args.target)
    print(plot(read_progress(args.progress), args.out, args.title, target, (-21.5, 21.5) if args.pong_axis else None))


if __name__ == "__main__":
    main()
