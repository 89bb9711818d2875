"""Recording and scoring at once (``store.overlap``, issue 23 item 2): end-to-end frames/s of a store job, overlapped
against one stage after the other and against scoring alone (a benchmark, not a test).

    python benchmarks/overlap.py [--steps 500] [--density 10] [--radius 5] [--repeats 3]
                                 [--agent builtin/pong_ppo] [--out benchmarks/results/overlap_cpu.json]

Each round runs three store jobs (:func:`engine.jobs.run.run_job`, fresh stores, no movie, report or arrays) of
``--steps`` steps of Pong: ``overlapped`` (``store.overlap=true``, the default on CUDA: saliency chunks scored while later
rollout chunks are recorded), ``sequential`` (``store.overlap=false``: the whole game recorded, then scored) and
``scoring`` (the same job over a complete rollout store, recorded before the round: the scoring stage alone). The
configurations are interleaved (one run of each per round, after a short warm-up round) and repeated; the best
round counts, the median is reported too. Frames/s are the steps over the seconds of ``run_job`` (loading the agent,
the game's environment, recording, scoring, statistics and summary: what a user waits for); the stages' own
seconds come from each job's summary.json. The store chunking is the app's default. First, whether threads can
overlap the recorder's work at all (``gil``): how long another thread is kept from running Python while ALE's
``act`` (made a long call) or a torch product runs, and the speedup of 2 threads over 1 for the emulator's step, the
agent's batch-1 forward (torch, 1 intra-op thread) and, as the control, a pure-Python loop. ``--gil-only`` runs
just that and adds it to the results file. The CPU may be
shared with other work while this runs: the ratios of one run are what to read, not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* when run as a script
from benchmarks.common import cpu_flags, machine  # noqa: E402
from engine.jobs.config import JobConfig  # noqa: E402
from engine.jobs.run import run_job  # noqa: E402

MODES = ("overlapped", "sequential", "scoring")


def thread_speedup(make_work, seconds: float) -> float:
    """Calls/s of ``make_work()``'s work in 2 threads at once over calls/s in 1 thread (about 2 where the work
    releases the GIL and 2 cores are free, about 1 where it holds the GIL or no core is free)."""

    def rate(n: int) -> float:
        works = [make_work() for _ in range(n)]
        counts = [0] * n
        stop = time.perf_counter() + seconds

        def loop(i: int) -> None:
            work = works[i]
            while time.perf_counter() < stop:
                work()
                counts[i] += 1

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / seconds

    return rate(2) / rate(1)


def blocked_share(work, seconds: float) -> float:
    """The share of ``seconds`` during which this thread could run no Python (pauses over 20 ms) while another
    thread calls ``work()`` in a loop: near 1 where ``work`` is a long call that holds the GIL, near 0 where it
    releases it. Unlike a throughput ratio, a busy machine does not change it much."""
    stop = [False]

    def loop() -> None:
        while not stop[0]:
            work()

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(0.2)
    blocked, last = 0.0, time.perf_counter()
    end = last + seconds
    while last < end:
        sum(range(1000))
        now = time.perf_counter()
        blocked += now - last if now - last > 0.02 else 0.0
        last = now
    stop[0] = True
    thread.join()
    return blocked / seconds


def gil_check(agent_name: str, seconds: float) -> dict:
    """Do the recorder's parts release the GIL? ``blocked_share`` of the emulator's step (ALE's ``act``, made a
    long call: 5000 frames per call) and of a torch matrix product of similar length; and the 2-thread speedups of
    the emulator's step in the job's pipeline (Pong), of the agent's batch-1 forward (torch with 1 intra-op thread)
    and of a pure-Python loop (holds the GIL: the control)."""
    import numpy as np
    from ale_py import ALEInterface, roms

    from engine.env.pipelines import make_env
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint

    emulator = ALEInterface()
    emulator.setInt("frame_skip", 5000)
    emulator.loadROM(roms.get_rom_path("pong"))

    def long_act() -> None:
        emulator.act(0)
        if emulator.game_over():
            emulator.reset_game()

    product = torch.randn(1500, 1500)

    def emulator_step():
        env = make_env("PongNoFrameskip-v4")
        env.reset(seed=0)
        actions = iter(np.random.default_rng(0).integers(0, 6, 1_000_000))

        def step():
            _, _, term, trunc, _ = env.step(int(next(actions)))
            if term or trunc:
                env.reset()

        return step

    agent = load_policy(resolve_checkpoint(agent_name), device="cpu")

    def forward():
        obs = torch.zeros((1, *agent.observation_shape))
        state = agent.initial_state(1)

        def step():
            with torch.inference_mode():
                agent(obs, state)

        return step

    def python():
        def step():
            sum(range(2000))

        return step

    blocked = {
        "ale_act_5000_frames": blocked_share(long_act, seconds),
        "torch_matmul_1500": blocked_share(lambda: product @ product, seconds),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        speedups = {
            "ale_step": thread_speedup(emulator_step, seconds),
            "agent_forward_1_thread": thread_speedup(forward, seconds),
            "python_loop": thread_speedup(python, seconds),
        }
    finally:
        torch.set_num_threads(threads)
    return {"blocked_share": blocked, "two_thread_speedups": speedups}


def job_config(args, out_dir: Path, rollout: Path, overlap: bool, steps: int) -> JobConfig:
    return JobConfig.from_dict(
        {
            "env": {"id": "Pong-v4"},
            "agent": {"checkpoint": args.agent},
            "rollout": {"steps": steps, "seed": 0},
            "saliency": {"density": args.density, "radius": args.radius},
            "store": {"rollout": str(rollout), "overlap": overlap},
            "output": {"dir": str(out_dir), "movie": False, "report": False, "arrays": False, "stills": []},
            "device": "cpu",
            "progress": False,
        }
    )


def timed_job(config: JobConfig) -> dict:
    """Seconds of ``run_job`` (validation included) and the stages' seconds from its summary."""
    start = time.perf_counter()
    run_job(config)
    seconds = time.perf_counter() - start
    summary = json.loads((Path(config.output.dir) / "summary.json").read_text())
    keys = ("overlapped", "rollout_seconds", "saliency_seconds", "waited_seconds", "total_seconds")
    return {"job_seconds": seconds, **{k: summary[k] for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--density", type=int, default=10)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=32)
    parser.add_argument("--agent", default="builtin/pong_ppo")
    parser.add_argument("--gil-seconds", type=float, default=3.0)
    parser.add_argument("--gil-only", action="store_true", help="only the GIL check, added to --out's results")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "overlap_cpu.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gil = gil_check(args.agent, args.gil_seconds)
    print(f"GIL: {gil}", flush=True)
    if args.gil_only:  # into the results of an earlier run
        result = json.loads(args.out.read_text()) if args.out.is_file() else {}
        result["gil"] = gil
        result.pop("two_thread_speedups", None)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    work = Path(tempfile.mkdtemp(prefix="overlap_bench_"))
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        recorded = work / "recorded"  # the complete rollout store that "scoring" replays
        run_job(job_config(args, work / "record_only", recorded, False, args.steps))

        def one(mode: str, n: int, steps: int) -> dict:
            out, rollout = work / f"{mode}_{n}", work / f"{mode}_{n}_rollout"
            if mode == "scoring":
                config = job_config(args, out, recorded if steps == args.steps else rollout, False, steps)
            else:
                config = job_config(args, out, rollout, mode == "overlapped", steps)
            result = timed_job(config)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(rollout, ignore_errors=True)
            return result

        for mode in MODES:  # warm-up round (imports, caches, first allocations)
            one(mode, -1, args.warmup_steps)
        for n in range(args.repeats):
            for mode in MODES:
                result = one(mode, n, args.steps)
                runs[mode].append(result)
                print(f"round {n} {mode:>10}: {args.steps / result['job_seconds']:6.1f} frames/s  {result}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {mode: min(r["job_seconds"] for r in runs[mode]) for mode in MODES}
    median = {mode: statistics.median(r["job_seconds"] for r in runs[mode]) for mode in MODES}
    fps = {mode: args.steps / best[mode] for mode in MODES}
    result = {
        "what": "store job end to end (run_job), overlapped vs sequential vs scoring alone (issue 23 item 2)",
        "command": "python benchmarks/overlap.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "agent": args.agent,
        "steps": args.steps,
        "saliency": {"density": args.density, "radius": args.radius},
        "repeats": args.repeats,
        "frames_per_second_best": fps,
        "frames_per_second_median": {mode: args.steps / median[mode] for mode in MODES},
        "overlapped_over_sequential": fps["overlapped"] / fps["sequential"],
        "overlapped_over_scoring": fps["overlapped"] / fps["scoring"],
        "sequential_over_scoring": fps["sequential"] / fps["scoring"],
        "gil": gil,
        "runs": runs,
        "note": (
            "a shared 2-core machine: other jobs may have run at the same time; read the ratios of one run. The "
            "sequential job records in the main thread, the overlapped one in a thread of its own: compare their "
            "rollout_seconds with that in mind (a busy machine slows torch's OpenMP team of the main thread most)"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("machine", "frames_per_second_best", "overlapped_over_sequential")}))
    print(f"overlapped / scoring alone: {result['overlapped_over_scoring']:.3f}; written to {args.out}")


if __name__ == "__main__":
    main()
