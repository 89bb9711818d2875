#!/usr/bin/env bash
# The GPU check, end to end, in one call (it also runs on a CPU-only machine, with smaller sizes):
#
#   python benchmarks/gpu/prepare.py .gpu_carry          # here: rollouts, checkpoint, wheels (git-ignored)
#   benchmarks/gpu/check.sh OUT_DIR [.gpu_carry]         # there: results into OUT_DIR
#
# The GPU machines have no network and no kornia, hydra, gymnasium, ale-py or av: the engine core runs from
# this tree (PYTHONPATH) with the carried wheels, on pre-recorded rollouts, then the main job end to end on 50
# games. Writes OUT_DIR/check.json, check.log (nvidia-smi first, then check.py's tables), roofline.json,
# speed.json, speed.log, incremental_choice.json, end_to_end.json and verdict.md (each goal against its figure, and
# the defaults the figures favour): 8 files, the most the device tool brings back; about 7 minutes on an H200 or
# H100 (SPEED_BUDGET_S, default 120, bounds the speed variants; CHOICE_S, default 60, the incremental choice;
# END_TO_END_S, default 240, the end-to-end job; SPEED_AGENTS, the agents of the speed variants: by default all
# but the seeded SB3 agent, whose network is CleanRL ppo_atari's). Every step runs under its own time limit, cut to
# what is left of TOTAL_S (default 450, under the call's limit) less a reserve for the verdict, which is written
# after each step; a step that fails or is cut short is noted in its log while the steps after it still run: one
# device call brings back all.
set -uo pipefail
out=${1:?usage: benchmarks/gpu/check.sh OUT_DIR [DATA_DIR]}
data=${2:-.gpu_carry}
cd "$(dirname "$0")/../.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
deadline=$(( $(date +%s) + ${TOTAL_S:-450} - 20 ))  # 20 s kept for the last verdict
limit() {  # the step's own limit, or what is left before the deadline, whichever is less (at least 1 s)
  local left=$(( deadline - $(date +%s) ))
  (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"
}
verdict() { python3 benchmarks/gpu/verdict.py "$out" >/dev/null 2>&1 || true; }
(nvidia-smi || echo "no nvidia-smi: CPU only") > "$out/check.log" 2>&1
if ls "$data"/wheels/*.whl >/dev/null 2>&1; then  # kornia, and the end-to-end job's games, stores and config
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-check-site \
      "$data"/wheels/*.whl >> "$out/check.log" 2>&1; then
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "error: the carried wheels did not install (see above); the steps below run without them" >> "$out/check.log"
  fi
elif ! python3 -c "import kornia" 2>/dev/null; then
  echo "error: no kornia here and no wheels in $data/wheels: run benchmarks/gpu/prepare.py" | tee -a "$out/check.log" >&2
  exit 2
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# a failed check does not stop the benchmarks below (one device call has to bring back everything)
status=0
timeout "$(limit "${CHECK_S:-240}")" python3 benchmarks/gpu/check.py --out "$out" --data "$data" 2>&1 \
  | tee -a "$out/check.log" || { status=$?; echo "check: exit $status" >> "$out/check.log"; }
rm -f "$out/check.md"  # its tables are in check.log: the device tool brings back 8 files
# the roofline of each agent on this device, its peaks measured in the same run (issue 19, item 1)
timeout "$(limit 60)" python3 benchmarks/roofline.py --out "$out/roofline.json" 2>&1 | tee -a "$out/check.log" \
  || echo "roofline: exit $?" >> "$out/check.log"
verdict
# the exact path's speed-ups side by side: cuDNN autotuning, torch.compile, CUDA graphs, split TF32 (issue 19, item 2)
# (a variant's first call can outrun the budget, which is checked before each: the hard limit is 90 s more)
speed_s=${SPEED_BUDGET_S:-120}
timeout "$(limit $((speed_s + 90)))" python3 benchmarks/gpu/speed.py --out "$out" --data "$data" --budget-s "$speed_s" \
  --agents "${SPEED_AGENTS:-baby-a3c_gru,cleanrl_ppo_atari,builtin_pong_ppo}" 2>&1 \
  | grep -v "^W[0-9]" | tee "$out/speed.log" || echo "speed: exit $?" >> "$out/speed.log"
verdict
# whether incremental="auto" picks the faster of windows and plain passes, exact and fast (issue 19)
timeout "$(limit "${CHOICE_S:-60}")" python3 benchmarks/incremental_choice.py \
  --out "$out/incremental_choice.json" --data "$data" --frames 64 2>&1 | tee -a "$out/speed.log" \
  || echo "incremental_choice: exit $?" >> "$out/speed.log"
verdict
# the main job end to end: 50 full games recorded together and scored, against scoring alone (issue 23, item 4)
if python3 -c "import gymnasium, ale_py, zarr, omegaconf" 2>/dev/null; then
  games=${GAMES:-50}
  workers=${WORKERS:-8}
  timeout "$(limit "${END_TO_END_S:-240}")" python3 benchmarks/gpu/end_to_end.py --out "$out" --games "$games" \
    --workers "$(( workers < games ? workers : games ))" 2>&1 | tee -a "$out/speed.log" | tail -n 40 \
    || echo "end_to_end: exit $?" >> "$out/speed.log"
else
  echo "end_to_end: skipped (no gymnasium, ale-py, zarr or omegaconf: run benchmarks/gpu/prepare.py)" >> "$out/speed.log"
fi
# what the figures say: each goal of issues 19 and 23 against its figure, the defaults they favour (verdict.md)
python3 benchmarks/gpu/verdict.py "$out" || echo "verdict: exit $?" >> "$out/speed.log"
exit "$status"
