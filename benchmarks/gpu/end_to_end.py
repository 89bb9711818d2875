"""The main job end to end on many games: recording and scoring together, against scoring alone (issue 23).

    python benchmarks/gpu/end_to_end.py --out DIR [--games 50] [--max-steps 5000] [--workers 8]

``builtin/pong_ppo`` plays ``--games`` games of PongNoFrameskip-v4 at once (``rollout.num_envs``, game k seeded
``seed + k``), each until its first episode ends (``rollout.max_episodes=1``, at most ``--max-steps`` steps), in
the job's stores (memory stores: the one kind whose length follows the games), and the job scores every frame
(d5 r5, occlude, float32 without TF32). The job's own timings give the stages: ``rollout_seconds`` (the games
played together) and ``saliency_seconds`` (scoring). Written to DIR/end_to_end.json: total frames per second of
the whole job (its wall clock, outputs included) and of scoring alone, and their ratio (the issue's goal: at
least 0.8 on a GPU machine).

It runs on the CPU too (``--games 2 --max-steps 60``: the test's size).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402
from engine.jobs.config import JobConfig, RolloutConfig  # noqa: E402
from engine.jobs.run import run_job  # noqa: E402


def job_config(
    out_dir: Path, games: int, max_steps: int, workers: int | None, device: str, density: int = 5
) -> JobConfig:
    rollout: dict = dict(steps=max_steps, seed=0, num_envs=games, max_episodes=1)
    if workers is not None and "workers" in RolloutConfig.__dataclass_fields__:
        rollout["workers"] = workers
    return JobConfig.from_dict(
        dict(
            agent=dict(checkpoint="builtin/pong_ppo"),
            env=dict(id="PongNoFrameskip-v4"),
            rollout=rollout,
            saliency=dict(method="perturbation", radius=5, density=density),
            output=dict(dir=str(out_dir), movie=False, stills=[], arrays=False, report=False),
            device=device,
            progress=False,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--games", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=5000, help="steps per game at most (a Pong game ends first)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes stepping the games")
    parser.add_argument("--density", type=int, default=5, help="the 2017 method's grid step (radius 5)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        config = job_config(Path(tmp) / "job", args.games, args.max_steps, args.workers, device, args.density)
        started = time.perf_counter()
        run_job(config)
        wall = time.perf_counter() - started
        summary = json.loads((Path(tmp) / "job" / "summary.json").read_text())
    frames, scored = int(summary["frames"]), int(summary["frames_scored"])
    rollout_s, saliency_s = float(summary["rollout_seconds"]), float(summary["saliency_seconds"])
    result = dict(
        machine=machine(),
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        torch=torch.__version__,
        cpu_threads=torch.get_num_threads(),
        games=args.games,
        workers=args.workers,
        density=args.density,
        max_steps=args.max_steps,
        frames=frames,
        frames_scored=scored,
        game_lengths=[g.get("steps") for g in summary.get("games", [])],
        rollout_seconds=round(rollout_s, 2),
        saliency_seconds=round(saliency_s, 2),
        job_seconds=round(wall, 2),
        recording_steps_per_s=round(frames / rollout_s, 1) if rollout_s else None,
        scoring_frames_per_s=round(scored / saliency_s, 1) if saliency_s else None,
        job_frames_per_s=round(scored / wall, 1),
    )
    if result["scoring_frames_per_s"]:
        result["job_vs_scoring"] = round(result["job_frames_per_s"] / result["scoring_frames_per_s"], 3)
    (args.out / "end_to_end.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
