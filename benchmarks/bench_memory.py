"""Peak memory of the streaming saliency job: a rollout 10x longer must not need more memory.

    python benchmarks/bench_memory.py [--steps 100] [--factor 10] [--density 10]

Records a short and a ``factor`` times longer Pong rollout into rollout stores, then scores each store in a
fresh process (``engine.jobs.score.score_store``, frames_per_chunk=64) and reports each process's peak resident
memory (ru_maxrss) and their ratio. The bound: one chunk of frames (64 x 100 KB), its maps, one batch of
perturbations and the agent, whatever the rollout length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT.parent / "shared" / "checkpoints" / "baby-a3c" / "pong-v4" / "model.40.tar"

SCORE = """
import resource, sys, time
from engine.core.settings import SaliencyConfig
from engine.policies.greydanus2017 import load_agent
from engine.core.files import sha256_of
from engine.jobs.score import score_store
agent = load_agent(sys.argv[1], device="cpu")
start = time.perf_counter()
score_store(agent, sys.argv[2], sys.argv[3], SaliencyConfig(density=int(sys.argv[4])), sha256_of(sys.argv[1]), frames_per_chunk=64, progress=False)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--density", type=int, default=10)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    args = parser.parse_args()

    from engine.core.files import sha256_of
    from engine.jobs.record import record_rollout
    from engine.policies.greydanus2017 import load_agent

    agent = load_agent(CHECKPOINT, device="cpu")
    result = dict(checkpoint=str(CHECKPOINT), density=args.density, frames_per_chunk=64)
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in (("short", args.steps), ("long", args.steps * args.factor)):
            store = Path(tmp) / f"rollout_{name}"
            record_rollout(
                agent, "Pong-v4", steps, store, seed=0, checkpoint_sha256=sha256_of(CHECKPOINT), progress=False
            )
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    SCORE,
                    str(CHECKPOINT),
                    str(store),
                    str(Path(tmp) / f"saliency_{name}"),
                    str(args.density),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout.split()
            seconds, peak_kb = float(out[-2]), int(out[-1])
            result[name] = dict(frames=steps, seconds=seconds, peak_rss_mb=peak_kb / 1024)
            print(f"{name:5s}: {steps:6d} frames, {seconds:7.1f} s, peak RSS {peak_kb / 1024:7.1f} MB")
    result["peak_ratio"] = result["long"]["peak_rss_mb"] / result["short"]["peak_rss_mb"]
    print(f"peak memory, {args.factor}x longer rollout / short: {result['peak_ratio']:.3f} (bound: 1.5)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
