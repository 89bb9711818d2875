"""Recording speed: steps/s of an agent playing N games at once on this CPU (issue 23, items 1 and 3; a benchmark,
not a test).

    python benchmarks/recording.py [--repeats 3] [--steps 500] [--steps-32 200] [--envs 1 8 32]
                                   [--agents pong_ppo baby_a3c] [--segment 50] [--threads T]
                                   [--out benchmarks/results/recording_cpu.json]

For each agent (``builtin/pong_ppo``: CleanRL's Nature CNN + LSTM in ``PongNoFrameskip-v4``; ``baby-a3c/pong@40``:
the 2017 agent in ``Pong-v4``) and each N it times the recording loop of :func:`engine.env.rollout.rollout`:
N = 1 is the single-env :class:`engine.env.rollout.Player` (``num_envs=None``, as before this change), N > 1 the
:class:`engine.env.rollout.VectorPlayer` (``num_envs=N``), ``--steps`` steps per env (``--steps-32`` for N >= 32)
and the assembly of the rollouts; making the environments (ALE's ``load_game``, about 0.1 s per env) is timed
apart, as ``setup_s``. The runs are interleaved (one run of every configuration per round) and repeated; the best
round counts, the median is reported too (this machine is shared and noisy). It prints and writes steps/s per env
and in total, and the total's ratio to N = 1 of the same agent, with the CPU model and torch's thread count; and,
apart, the rate of the fastest ``--segment`` consecutive steps of any round (``quiet_*``: what the machine gives
while nothing else runs on it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.* when run as a script
from benchmarks.common import cpu_flags, machine  # noqa: E402
from engine.env.rollout import Player, VectorPlayer, rollout_from_steps  # noqa: E402
from engine.policies.loading import load_policy  # noqa: E402
from engine.policies.registry import resolve_checkpoint  # noqa: E402

AGENTS = {
    "pong_ppo": ("builtin/pong_ppo", "PongNoFrameskip-v4"),
    "baby_a3c": ("baby-a3c/pong@40", "Pong-v4"),
}


def record(agent, env_id: str, num_envs: int, steps: int, seed: int = 0) -> tuple[float, float, list[float]]:
    """(setup seconds, recording seconds, the seconds of each step) of ``steps`` steps per env of ``num_envs``
    games (sampled actions)."""
    start = time.perf_counter()
    player: Player | VectorPlayer
    player = Player(agent, env_id, seed) if num_envs == 1 else VectorPlayer(agent, env_id, num_envs, seed)
    setup = time.perf_counter() - start
    per_step = []
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
    finally:
        player.close()
    return setup, time.perf_counter() - start, per_step


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
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    parser.add_argument("--segment", type=int, default=50, help="steps of the fastest stretch reported apart")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recording_cpu.json")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if 1 not in args.envs:
        parser.error("--envs must include 1 (the ratios are against N = 1)")
    agents = {name: load_policy(resolve_checkpoint(AGENTS[name][0]), device="cpu") for name in args.agents}
    configs = [(name, n) for name in args.agents for n in args.envs]
    steps_of = {n: args.steps_32 if n >= 32 else args.steps for n in args.envs}
    for name, n in configs:  # warm-up round, untimed
        record(agents[name], AGENTS[name][1], n, 5)
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    quiet: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    setups: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for r in range(args.repeats):
        for name, n in configs:
            setup, seconds, per_step = record(agents[name], AGENTS[name][1], n, steps_of[n])
            times[name, n].append(seconds)
            quiet[name, n].append(quiet_rate(per_step, n, min(args.segment, steps_of[n])))
            setups[name, n].append(setup)
            total = n * steps_of[n] / seconds
            print(
                f"round {r + 1} {name:8s} N={n:3d}: {total / n:8.1f} steps/s per env, {total:8.1f} in total "
                f"(fastest {args.segment} steps: {quiet[name, n][-1]:8.1f} in total)",
                flush=True,
            )
    rows = []
    for name, n in configs:
        steps = steps_of[n]
        best, median = min(times[name, n]), statistics.median(times[name, n])
        base = min(times[name, 1]) / steps_of[1]  # seconds per step with N = 1
        rows.append(
            dict(
                agent=AGENTS[name][0],
                env_id=AGENTS[name][1],
                num_envs=n,
                steps_per_env=steps,
                seconds=times[name, n],
                setup_s=min(setups[name, n]),
                steps_per_s_per_env=steps / best,
                steps_per_s_total=n * steps / best,
                steps_per_s_total_median=n * steps / median,
                ratio_to_n1=(n * steps / best) * base,
                quiet_steps_per_s_total=max(quiet[name, n]),
                quiet_ratio_to_n1=max(quiet[name, n]) / max(quiet[name, 1]),
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
        note=(
            "best of interleaved rounds (median too); setup (making the envs) is not in the steps/s; quiet_*: the "
            "fastest stretch of `segment` consecutive steps of any round, what the machine gives when nothing else "
            "runs on it"
        ),
        rows=rows,
    )
    print(f"\n{result['cpu']}")
    print(
        f"{'agent':18s} {'N':>3s} {'steps/env':>9s} {'per env/s':>10s} {'total/s':>9s} {'median':>8s} {'x N=1':>6s} "
        f"{'quiet/s':>8s} {'x N=1':>6s}"
    )
    for row in rows:
        print(
            f"{row['agent']:18s} {row['num_envs']:3d} {row['steps_per_env']:9d} {row['steps_per_s_per_env']:10.1f} "
            f"{row['steps_per_s_total']:9.1f} {row['steps_per_s_total_median']:8.1f} {row['ratio_to_n1']:6.2f} "
            f"{row['quiet_steps_per_s_total']:8.1f} {row['quiet_ratio_to_n1']:6.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
