"""Table and plot of the benchmark suite's results (``benchmarks/results/suite.jsonl``).

    python benchmarks/report.py [--results benchmarks/results/suite.jsonl] [--plot benchmarks/results/suite.png]

Prints a markdown table (one row per run: settings, seconds per frame of every method, speed-ups) and draws
frames per second against density and radius for each method (log scale), from the latest run of each setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("engine", "plain", "bare_forward", "captum", "xaitk", "reference", "jacobian")


def load(path: Path) -> list[dict]:
    runs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            key = (r["density"], r["radius"], r["chunk_size"], r["dtype"], r["threads"], r["frames"])
            runs[key] = r  # the latest run of each setting
    return list(runs.values())


def table(runs: list[dict]) -> str:
    head = (
        "| density | radius | frames | chunk | dtype | threads | "
        + " | ".join(METHODS)
        + " | engine vs reference | incremental vs plain |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(
        runs, key=lambda r: (r["dtype"], -r["threads"], r["chunk_size"], r["frames"], r["radius"], r["density"])
    ):
        s = r["seconds_per_frame"]
        cells = [f"{s[m]:.4f}" if m in s else "" for m in METHODS]
        speed = r.get("speedup_vs_reference", {}).get("engine")
        inc = r.get("incremental_speedup_over_plain")
        rows.append(
            f"| {r['density']} | {r['radius']:g} | {r['frames']} | {r['chunk_size']} | {r['dtype']} | {r['threads']} | "
            + " | ".join(cells)
            + f" | {f'{speed:.1f}x' if speed else ''} | {f'{inc:.2f}x' if inc else ''} |"
        )
    return "\n".join(rows)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = max(r["threads"] for r in runs)  # the default (all cores); single-thread runs are in the table only
    default = [r for r in runs if r["dtype"] == "float32" and r["frames"] == 8 and r["threads"] == threads]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis, fixed in ((axes[0], "density", ("radius", 5)), (axes[1], "radius", ("density", 5))):
        chosen = sorted(
            (r for r in default if r[fixed[0]] == fixed[1] and r["chunk_size"] == 64), key=lambda r: r[axis]
        )
        for method in METHODS:
            points = [(r[axis], 1 / r["seconds_per_frame"][method]) for r in chosen if method in r["seconds_per_frame"]]
            if len(points) > 1:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set_xlabel(axis + (" (grid step, px)" if axis == "density" else " (mask sigma, px)"))
        ax.set_ylabel("frames / s")
        ax.set_yscale("log")
        ax.set_title(f"{fixed[0]} {fixed[1]}, float32, chunks of 64")
        ax.grid(True, which="both", alpha=0.3)
    machine = default[0]["machine"] if default else ""
    axes[1].legend(fontsize=8)
    fig.suptitle(f"perturbation saliency of Pong frames (baby-a3c 40M): {machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "suite.jsonl"))
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "suite.png"))
    args = parser.parse_args()
    runs = load(Path(args.results))
    print(table(runs))
    plot(runs, Path(args.plot))
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
