#!/usr/bin/env bash
# CI: the package as `pip install .` gives it, not as the checkout has it.
#
# Builds the wheel from a copy of the files git would commit and installs it with its core dependencies (no
# extra, with this workplace's pins: .ci/constraints.txt) into a fresh venv that shares nothing with the test
# environment (no --system-site-packages), so a dependency the default job needs but only an extra brings fails
# here; then, from another directory, checks that `engine` is imported from that venv and
# that the shipped configs work and the report viewer's assets (engine/viz/assets) are there: a bad option is
# refused with exit code 2, the training configs compose, and a 10-step main job on the built-in agent (shipped in
# the package; no network, no ../shared) exits 0 and writes its arrays, and so does the default job as a user runs
# it (`atari-saliency`, no option).
# Usage: .ci/wheel_check.sh [python]   (default: python; KEEP=1 keeps the temporary folder)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/wheel_check.XXXXXX")"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
step() { echo "wheel_check: $*"; }

step "copying the checkout to $WORK/src"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/elsewhere"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
        [[ -e "$f" ]] && printf '%s\0' "$f"; done | tar --null -cf - -T -) | tar -xf - -C "$WORK/src"
else
    cp -a "$ROOT/." "$WORK/src"
fi

step "building the wheel"
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/atari_saliency_engine-*.whl)"
step "built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"

step "installing it with its core dependencies into a venv of its own"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check -c "$ROOT/.ci/constraints.txt" "$WHEEL"
"$VPY" - <<'EOF'
import importlib.util

extras_only = [m for m in ("pytest", "stable_baselines3", "playwright", "s3fs", "mkdocs") if importlib.util.find_spec(m)]
assert not extras_only, f"the core install brought test or extra packages: {extras_only}"
EOF

cd "$WORK/elsewhere"
step "checking where engine is imported from"
"$VPY" - "$WORK/venv" <<'EOF'
import sys
from pathlib import Path

import engine
from engine.cli.app import CONFIG_DIR

venv = Path(sys.argv[1]).resolve()
where = Path(engine.__file__).resolve()
assert venv in where.parents, f"engine was imported from {where}, not from the venv {venv}"
assert venv in CONFIG_DIR.resolve().parents and (CONFIG_DIR / "main.yaml").is_file(), f"configs at {CONFIG_DIR}"
assert (CONFIG_DIR / "train.yaml").is_file() and (CONFIG_DIR / "hydra" / "launcher" / "slurm.yaml").is_file()
assert list((where.parent / "agents" / "pong").glob("step_*.pt")), "the built-in agent is not in the wheel"
print(f"wheel_check: engine {where.parent}, configs {CONFIG_DIR}")
EOF

step "the report viewer's assets are in the wheel"
"$VPY" - "$WORK/venv" <<'EOF'
import sys
from importlib import resources
from pathlib import Path

from engine.viz.report import viewer_asset

venv = Path(sys.argv[1]).resolve()
assets = resources.files("engine.viz") / "assets"
for name in ("report.js", "report.css"):
    where = Path(str(assets / name)).resolve()
    assert venv in where.parents and where.is_file(), f"engine/viz/assets/{name} is not in the wheel ({where})"
    assert viewer_asset(name) == (assets / name).read_text(encoding="utf-8") and viewer_asset(name).strip(), name
print(f"wheel_check: viewer assets {assets}")
EOF

step "a renamed option is refused with one line and exit code 2"
set +e
"$WORK/venv/bin/atari-saliency" saliency.chunk_size=4 >"$WORK/refused.out" 2>"$WORK/refused.err"
rc=$?
set -e
cat "$WORK/refused.err"
[[ $rc == 2 ]] || { echo "wheel_check: expected exit code 2, got $rc"; exit 1; }
grep -q "perturbations_per_eval" "$WORK/refused.err"
[[ $(wc -l <"$WORK/refused.err") == 1 ]] || { echo "wheel_check: expected one line on stderr"; exit 1; }

step "the training configs compose"
"$VPY" -m engine.train algo=a2c --cfg job >"$WORK/train_cfg.yaml"
grep -q "^env_id: Pong-v4" "$WORK/train_cfg.yaml"

step "a 10-step job on the built-in agent, from $PWD"
env -u ATARI_SALIENCY_CHECKPOINTS "$VPY" -m engine rollout.steps=10 output.movie=false progress=false \
    "hydra.run.dir=$WORK/run"
"$VPY" - "$WORK/run" "$WORK/venv" <<'EOF'
import sys
from pathlib import Path

from engine.storage.arrays import load_arrays

run, venv = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
maps, settings = load_arrays(run / "saliency.npz")
played, _ = load_arrays(run / "rollout.npz")
assert maps["actor"].shape == (10, 84, 84) and maps["critic"].shape == (10, 84, 84), maps["actor"].shape
assert played["frames"].shape[0] == 10
assert venv in Path(settings["checkpoint"]).resolve().parents, settings["checkpoint"]
assert (run / "summary.json").is_file() and (run / "engine.log").is_file()
print(f"wheel_check: ok: {run} holds saliency.npz {maps['actor'].shape}, rollout.npz, summary.json")
EOF

step "the default job, as a user runs it after pip install (atari-saliency, no option), from $PWD"
env -u ATARI_SALIENCY_CHECKPOINTS "$WORK/venv/bin/atari-saliency" progress=false "hydra.run.dir=$WORK/default"
for f in saliency.mp4 saliency.npz rollout.npz summary.json report.html; do
    [[ -s "$WORK/default/$f" ]] || { echo "wheel_check: the default job wrote no $f"; exit 1; }
done
step "ok: the default job wrote its movie, arrays, summary and report"
