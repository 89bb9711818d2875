"""The main job end to end on many games: recording and scoring together, against scoring alone (issue 23).

    python benchmarks/gpu/end_to_end.py --out DIR [--games 50] [--max-steps 5000] [--workers 8]

``builtin/pong_ppo`` plays ``--games`` games of PongNoFrameskip-v4 at once (``rollout.num_envs``, game k seeded
``seed + k``), each until its first episode ends (``rollout.max_episodes=1``, at most ``--max-steps`` steps), in
the job's stores (memory stores: the one kind whose length follows the games), and the job scores every frame
(d5 r5, occlude, float32 without TF32). The job runs twice (``--overlap both``): first with the games scored while
they are recorded (``store.overlap=true``), then recorded and scored in turn (``store.overlap=false``), whose
scoring stage runs alone. Each job's timings give its stages: ``rollout_seconds`` (the games played together) and
``saliency_seconds`` (scoring, without its waits for the recording). Written to DIR/end_to_end.json after each job:
each job's total frames per second (its wall clock; the outputs written per game, movie, arrays, report and
figure, are off), its scoring stage's, and the ratios: the headline ``job_vs_scoring`` is the overlapped job's
frames/s over the scoring stage's frames/s, the lower of its own and the sequential job's (scoring alone, in the
same run); the issue's goal is at least 0.8 on a GPU machine and 0.9 on the 2-core CPU (8 games of 500 steps, d10).

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
    out_dir: Path,
    games: int,
    max_steps: int,
    workers: int | None,
    device: str,
    density: int = 5,
    overlap: bool | None = None,
    chunk_steps: int = 256,
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
            store=dict(overlap=overlap, chunk_steps=chunk_steps),
            output=dict(dir=str(out_dir), movie=False, stills=[], comparison=False, arrays=False, report=False),
            device=device,
            progress=False,
        )
    )


def run_once(args: argparse.Namespace, device: str, overlap: bool) -> dict:
    """One job: its stages' seconds and rates, from its own summary and wall clock."""
    with tempfile.TemporaryDirectory() as tmp:
        config = job_config(
            Path(tmp) / "job", args.games, args.max_steps, args.workers, device, args.density, overlap, args.chunk_steps
        )
        started = time.perf_counter()
        run_job(config)
        wall = time.perf_counter() - started
        summary = json.loads((Path(tmp) / "job" / "summary.json").read_text())
    frames, scored = int(summary["frames"]), int(summary["frames_scored"])
    rollout_s, saliency_s = float(summary["rollout_seconds"]), float(summary["saliency_seconds"])
    job = dict(
        overlapped=summary.get("overlapped", False),
        chunk_steps=summary["config"]["store"]["chunk_steps"],  # as the job ran
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
    if job["scoring_frames_per_s"]:
        job["job_vs_own_scoring"] = round(job["job_frames_per_s"] / job["scoring_frames_per_s"], 3)
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--games", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=5000, help="steps per game at most (a Pong game ends first)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes stepping the games")
    parser.add_argument("--density", type=int, default=5, help="the 2017 method's grid step (radius 5)")
    parser.add_argument(
        "--chunk-steps",
        type=int,
        default=256,
        help="steps per rollout chunk (store.chunk_steps): the scorer starts once the first chunk of every game is played",
    )
    parser.add_argument(
        "--overlap",
        choices=("both", "on", "off"),
        default="both",
        help="both: the overlapped job, then the sequential one (scoring alone); on, off: that job only",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict = dict(
        machine=machine(),
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        torch=torch.__version__,
        cpu_threads=torch.get_num_threads(),
        games=args.games,
        workers=args.workers,
        density=args.density,
        max_steps=args.max_steps,
        chunk_steps=args.chunk_steps,
        jobs={},
    )
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.overlap]
    for overlap in modes:  # the JSON is written after each job: a time limit keeps what finished
        result["jobs"]["overlapped" if overlap else "sequential"] = run_once(args, device, overlap)
        result.update(headline(result["jobs"]))
        (args.out / "end_to_end.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


def headline(jobs: dict) -> dict:
    """The headline figures: the first job's (overlapped where it ran) frames, and its frames/s over the scoring
    stage's, the lower of its own and the sequential job's."""
    job = jobs.get("overlapped") or jobs["sequential"]
    rates = [j["scoring_frames_per_s"] for j in jobs.values() if j.get("scoring_frames_per_s")]
    out = dict(
        frames=job["frames"],
        frames_scored=job["frames_scored"],
        game_lengths=job["game_lengths"],
        job_frames_per_s=job["job_frames_per_s"],
    )
    if rates:
        out["scoring_frames_per_s"] = max(rates)
        out["job_vs_scoring"] = round(job["job_frames_per_s"] / max(rates), 3)
    return out


if __name__ == "__main__":
    main()
