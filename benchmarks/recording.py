"""Recording speed: steps/s of an agent playing N games at once on this CPU (issue 23, items 1 and 3; a benchmark,
not a test).

    python benchmarks/recording.py [--repeats 3] [--steps 500] [--steps-32 200] [--envs 1 8 32] [--workers 0 1 2]
                                   [--agents pong_ppo baby_a3c] [--segment 50] [--threads T]
                                   [--out benchmarks/results/recording_cpu.json]

For each agent (``builtin/pong_ppo``: CleanRL's Nature CNN + LSTM in ``PongNoFrameskip-v4``; ``baby-a3c/pong@40``:
the 2017 agent in ``Pong-v4``) and each N it times the recording loop of :func:`engine.env.rollout.rollout`:
N = 1 is the single-env :class:`engine.env.rollout.Player` (``num_envs=None``, as before this change), N > 1 the
:class:`engine.env.rollout.VectorPlayer` (``num_envs=N``), ``--steps`` steps per env (``--steps-32`` for N >= 32)
and the assembly of the rollouts; making the environments (ALE's ``load_game``, about 0.1 s per env) is timed
apart, as ``setup_s``. ``--workers`` W > 0 (each W <= N) steps the N environments in W worker processes
(``VectorPlayer(..., workers=W)``, :mod:`engine.env.workers`; their start, a fork server the first time, then a
fork per worker that builds its share of the environments, is in ``setup_s``); W = 0 is the in-process path. The runs are interleaved (one run of every configuration per round) and repeated; the best
round counts, the median is reported too (this machine is shared and noisy). It prints and writes steps/s per env
and in total, and the total's ratio to N = 1 (W = 0) of the same agent and to the issue's baseline (about 200 steps/s:
the main job's single-env recording when issue 23 was filed), with the CPU model and torch's thread count; and,
apart, the rate of the fastest ``--segment`` consecutive steps of any round (``quiet_*``: what the machine gives
while nothing else runs on it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* when run as a script
# Worker processes (--workers) are forked from multiprocessing's fork server, which runs this module's code again in
# each of them as `__mp_main__`: they need none of torch and the agents, so these imports are skipped there.
if __name__ != "__mp_main__":
    import torch

    from benchmarks.common import cpu_flags, machine
    from engine.env.rollout import Player, VectorPlayer, rollout_from_steps
    from engine.policies.loading import load_policy
    from engine.policies.registry import resolve_checkpoint

ISSUE_BASELINE = 200.0  # steps/s: the main job's recording (one env, batch-1 forward) when issue 23 was filed

AGENTS = {
    "pong_ppo": ("builtin/pong_ppo", "PongNoFrameskip-v4"),
    "baby_a3c": ("baby-a3c/pong@40", "Pong-v4"),
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux's /proc; 0 where unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record(
    agent, env_id: str, num_envs: int, steps: int, seed: int = 0, workers: int = 0
) -> tuple[float, float, list[float], tuple[float, list[float]]]:
    """(setup seconds, recording seconds, the seconds of each step, (CPU seconds of this process, of each worker))
    of ``steps`` steps per env of ``num_envs`` games (sampled actions), the environments stepped in ``workers``
    processes (0: in this one)."""
    start = time.perf_counter()
    player: Player | VectorPlayer
    if num_envs == 1 and workers == 0:
        player = Player(agent, env_id, seed)
    else:
        player = VectorPlayer(agent, env_id, num_envs, seed, workers=workers)
    setup = time.perf_counter() - start
    pids = list(getattr(player.pipelines, "pids", [])) if isinstance(player, VectorPlayer) else []
    per_step = []
    cpu_main, cpu_workers = time.process_time(), [cpu_seconds(pid) for pid in pids]
    start = time.perf_counter()
    try:
        games: list[list] = [[] for _ in range(num_envs)]
        for _ in range(steps):
            begin = time.perf_counter()
            if isinstance(player, Player):
                games[0].append(player.step())
            else:
                for i, step in player.step().items():
                    games[i].append(step)
            per_step.append(time.perf_counter() - begin)
        for game in games:
            rollout_from_steps(game)
        seconds = time.perf_counter() - start
        cpu = (time.process_time() - cpu_main, [cpu_seconds(pid) - c for pid, c in zip(pids, cpu_workers)])
    finally:
        player.close()
    return setup, seconds, per_step, cpu


def quiet_rate(per_step: list[float], num_envs: int, segment: int) -> float:
    """Steps/s in total over the fastest ``segment`` consecutive steps: what the machine gives while nobody else
    runs on it (this one is shared: whole runs are slowed by whatever else runs at the time)."""
    window = [sum(per_step[i : i + segment]) for i in range(0, len(per_step) - segment + 1)]
    return num_envs * segment / min(window)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500, help="steps per env for N < 32")
    parser.add_argument("--steps-32", type=int, default=200, help="steps per env for N >= 32")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="worker processes (0: in-process)")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    parser.add_argument("--segment", type=int, default=50, help="steps of the fastest stretch reported apart")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recording_cpu.json")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if 1 not in args.envs or 0 not in args.workers:
        parser.error("--envs must include 1 and --workers 0 (the ratios are against N = 1 in-process)")
    agents = {name: load_policy(resolve_checkpoint(AGENTS[name][0]), device="cpu") for name in args.agents}
    load_before = os.getloadavg()
    Config = tuple[str, int, int]  # agent, N, W
    configs: list[Config] = [
        (name, n, w) for name in args.agents for n in args.envs for w in sorted(args.workers) if w <= n
    ]
    steps_of = {n: args.steps_32 if n >= 32 else args.steps for n in args.envs}
    for name, n, w in configs:  # warm-up round, untimed (it also starts the fork server)
        record(agents[name], AGENTS[name][1], n, 5, workers=w)
    times: dict[Config, list[float]] = {c: [] for c in configs}
    quiet: dict[Config, list[float]] = {c: [] for c in configs}
    setups: dict[Config, list[float]] = {c: [] for c in configs}
    cpus: dict[Config, list[tuple[float, list[float]]]] = {c: [] for c in configs}
    for r in range(args.repeats):
        for c in configs:
            name, n, w = c
            setup, seconds, per_step, cpu = record(agents[name], AGENTS[name][1], n, steps_of[n], workers=w)
            times[c].append(seconds)
            cpus[c].append(cpu)
            quiet[c].append(quiet_rate(per_step, n, min(args.segment, steps_of[n])))
            setups[c].append(setup)
            total = n * steps_of[n] / seconds
            print(
                f"round {r + 1} {name:8s} N={n:3d} W={w}: {total / n:8.1f} steps/s per env, {total:8.1f} in total "
                f"(fastest {args.segment} steps: {quiet[c][-1]:8.1f} in total; setup {setup:.2f} s)",
                flush=True,
            )
    rows = []
    for c in configs:
        name, n, w = c
        steps = steps_of[n]
        best, median = min(times[c]), statistics.median(times[c])
        # CPU per step, least over the rounds (contention inflates it): this process's, and the busiest worker's
        main_cpu = min(cpu[0] for cpu in cpus[c]) / steps
        worker_cpu = min(max(cpu[1], default=0.0) for cpu in cpus[c]) / steps
        workers_cpu = min(sum(cpu[1]) for cpu in cpus[c]) / steps
        base = min(times[name, 1, 0]) / steps_of[1]  # seconds per step with N = 1, in-process
        rows.append(
            dict(
                agent=AGENTS[name][0],
                env_id=AGENTS[name][1],
                num_envs=n,
                workers=w,
                steps_per_env=steps,
                seconds=times[c],
                setup_s=min(setups[c]),
                steps_per_s_per_env=steps / best,
                steps_per_s_total=n * steps / best,
                steps_per_s_total_median=n * steps / median,
                ratio_to_n1=(n * steps / best) * base,
                ratio_to_issue_baseline=(n * steps / best) / ISSUE_BASELINE,
                quiet_steps_per_s_total=max(quiet[c]),
                cpu_ms_per_step_main=1e3 * main_cpu,
                cpu_ms_per_step_workers=1e3 * workers_cpu,
                cpu_ms_per_step_busiest_worker=1e3 * worker_cpu,
                cpu_bound_steps_per_s_total=n / (main_cpu + worker_cpu),
                quiet_ratio_to_n1=max(quiet[c]) / max(quiet[name, 1, 0]),
            )
        )
    result = dict(
        benchmark="recording",
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command="python benchmarks/recording.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        cpu=machine(),
        cpu_flags=cpu_flags(),
        torch=torch.__version__,
        python=platform.python_version(),
        repeats=args.repeats,
        sampled=True,
        segment=args.segment,
        workers=sorted(args.workers),
        load_average_1min=dict(before=load_before[0], after=os.getloadavg()[0]),
        worker_start_method="forkserver",
        issue_baseline_steps_per_s=ISSUE_BASELINE,
        note=(
            "best of interleaved rounds (median too); setup (making the envs) is not in the steps/s; quiet_*: the "
            "fastest stretch of `segment` consecutive steps of any round, what the machine gives when nothing else "
            "runs on it; workers W > 0: the N environments stepped in W processes (engine.env.workers), setup_s "
            "includes starting them; ratio_to_n1: against N = 1 in-process (W = 0) of the same agent in this run, "
            "ratio_to_issue_baseline: against the ~200 steps/s of issue 23's baseline; cpu_ms_per_step_*: CPU time per "
            "step (of all N envs) of this process, of all the workers together and of the busiest one (least over "
            "the rounds); cpu_bound_steps_per_s_total: N / (main + busiest worker CPU per step), the rate with a "
            "free core per process (the main process waits while the workers step, so their times add up), a "
            "model for a loaded machine"
        ),
        rows=rows,
    )
    print(f"\n{result['cpu']}")
    print(
        f"{'agent':18s} {'N':>3s} {'W':>2s} {'steps/env':>9s} {'per env/s':>10s} {'total/s':>9s} {'median':>8s} "
        f"{'x N=1':>6s} {'x 200':>6s} {'quiet/s':>8s} {'x N=1':>6s} {'setup s':>7s} {'cpu ms main':>11s} "
        f"{'workers':>8s} {'cpu-bound/s':>11s}"
    )
    for row in rows:
        print(
            f"{row['agent']:18s} {row['num_envs']:3d} {row['workers']:2d} {row['steps_per_env']:9d} "
            f"{row['steps_per_s_per_env']:10.1f} {row['steps_per_s_total']:9.1f} {row['steps_per_s_total_median']:8.1f} "
            f"{row['ratio_to_n1']:6.2f} {row['ratio_to_issue_baseline']:6.2f} {row['quiet_steps_per_s_total']:8.1f} "
            f"{row['quiet_ratio_to_n1']:6.2f} {row['setup_s']:7.2f} {row['cpu_ms_per_step_main']:11.2f} "
            f"{row['cpu_ms_per_step_workers']:8.2f} {row['cpu_bound_steps_per_s_total']:11.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
