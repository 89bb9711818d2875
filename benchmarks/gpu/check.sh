#!/usr/bin/env bash
# The GPU check, end to end, in one call (it also runs on a CPU-only machine, with smaller sizes):
#
#   python benchmarks/gpu/prepare.py .gpu_carry          # here: rollouts, checkpoint, wheels (git-ignored)
#   benchmarks/gpu/check.sh OUT_DIR [.gpu_carry]         # there: results into OUT_DIR
#
# The GPU machines have no network and no kornia, hydra, gymnasium, ale-py or av: the engine core runs from
# this tree (PYTHONPATH) with the carried wheels, on pre-recorded rollouts, then the main job end to end on 50
# games. Writes OUT_DIR/check.json, check.md, check.log, roofline.json, speed.json, speed.log,
# incremental_choice.json, end_to_end.json, nvidia-smi.txt and verdict.md (each goal against its figure, and the
# defaults the figures favour): 10 files, about 7 minutes on an H200 or H100
# (SPEED_BUDGET_S, default 120, bounds the speed variants; CHOICE_S, default 60, the incremental choice;
# END_TO_END_S, default 240, the end-to-end job; SPEED_AGENTS, the agents of the speed variants: by default all
# but the seeded SB3 agent, whose network is CleanRL ppo_atari's). Every step runs under a time limit, and one that
# fails or is cut short is noted in its log while the steps after it still run: one device call brings back all.
set -euo pipefail
out=${1:?usage: benchmarks/gpu/check.sh OUT_DIR [DATA_DIR]}
data=${2:-.gpu_carry}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
if ls "$data"/wheels/*.whl >/dev/null 2>&1; then  # kornia, and the end-to-end job's games, stores and config
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-check-site "$data"/wheels/*.whl
  export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
elif ! python3 -c "import kornia" 2>/dev/null; then
  echo "error: no kornia here and no wheels in $data/wheels: run benchmarks/gpu/prepare.py" >&2; exit 2
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
(nvidia-smi || echo "no nvidia-smi: CPU only") > "$out/nvidia-smi.txt" 2>&1
# a failed check does not stop the benchmarks below (one device call has to bring back everything)
status=0
timeout "${CHECK_S:-240}" python3 benchmarks/gpu/check.py --out "$out" --data "$data" 2>&1 | tee "$out/check.log" \
  || status=$?
# the roofline of each agent on this device, its peaks measured in the same run (issue 19, item 1)
timeout 60 python3 benchmarks/roofline.py --out "$out/roofline.json" 2>&1 | tee -a "$out/check.log" \
  || echo "roofline: exit $?" >> "$out/check.log"
# the exact path's speed-ups side by side: cuDNN autotuning, torch.compile, CUDA graphs, split TF32 (issue 19, item 2)
# (a variant's first call can outrun the budget, which is checked before each: the hard limit is 90 s more)
speed_s=${SPEED_BUDGET_S:-120}
timeout "$((speed_s + 90))" python3 benchmarks/gpu/speed.py --out "$out" --data "$data" --budget-s "$speed_s" \
  --agents "${SPEED_AGENTS:-baby-a3c_gru,cleanrl_ppo_atari,builtin_pong_ppo}" 2>&1 \
  | grep -v "^W[0-9]" | tee "$out/speed.log" || echo "speed: exit $?" >> "$out/speed.log"
# whether incremental="auto" picks the faster of windows and plain passes, exact and fast (issue 19)
timeout "${CHOICE_S:-60}" python3 benchmarks/incremental_choice.py --out "$out/incremental_choice.json" --data "$data" \
  --frames 64 2>&1 | tee -a "$out/speed.log" || echo "incremental_choice: exit $?" >> "$out/speed.log"
# the main job end to end: 50 full games recorded together and scored, against scoring alone (issue 23, item 4)
if python3 -c "import gymnasium, ale_py, zarr, omegaconf" 2>/dev/null; then
  timeout "${END_TO_END_S:-240}" python3 benchmarks/gpu/end_to_end.py --out "$out" --games "${GAMES:-50}" \
    --workers "${WORKERS:-8}" 2>&1 | tail -n 40 >> "$out/speed.log" || echo "end_to_end: exit $?" >> "$out/speed.log"
else
  echo "end_to_end: skipped (no gymnasium, ale-py, zarr or omegaconf: run benchmarks/gpu/prepare.py)" >> "$out/speed.log"
fi
# what the figures say: each goal of issues 19 and 23 against its figure, the defaults they favour (verdict.md)
python3 benchmarks/gpu/verdict.py "$out" || echo "verdict: exit $?" >> "$out/speed.log"
exit "$status"
