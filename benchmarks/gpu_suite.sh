#!/usr/bin/env bash
# The GPU benchmark suite (issue 17): one command on one H100/H200, under ~8 minutes.
#
#   benchmarks/gpu_wheels.sh                 # once, where a package registry is reachable
#   benchmarks/gpu_suite.sh [--tiny] [--out DIR]
#
# Measures, at the paper's setting by default (search supernet C=16, 8 cells,
# batch 64; evaluation network C=36, 20 cells, batch 96; --tiny: a few channels
# and cells, for a CPU check of the plumbing):
#   * the search steps, each kind in its own process (benchmarks/search_step.py
#     --isolate): weight, arch_first_order, exact_hvp, finite_difference:
#     ms/step, images/s, compile s, peak memory (device peak on GPU);
#   * the evaluation network's training step (benchmarks/train_step.py), float32
#     and bfloat16, through both jdarts.parallel wrappers (pmap, shard_map);
#   * then a table (benchmarks/gpu_summary.py) with the projected 50-epoch
#     search time per estimator and the 600-epoch evaluation training time.
# JSON lines go to DIR (default $OUT if set, else gpu_suite_out/): search.jsonl,
# train.jsonl, summary.md, log.txt.
#
# If the packages are not importable, they are installed from benchmarks/gpu_wheels/*.whl
# (made by benchmarks/gpu_wheels.sh beforehand; never committed) into a
# temporary site directory; nothing is downloaded here.
# Environment: PYTHON (default python3), STEP_TIMEOUT (s per measured process,
# default 300), SEARCH_FLAGS / TRAIN_FLAGS (extra flags, e.g. --primitives=...).
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
DIR=${OUT:-gpu_suite_out}
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --out) DIR=$2; shift ;;
    --out=*) DIR=${1#--out=} ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_suite: error: unknown argument '$1'; use [--tiny] [--out DIR]." >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
mkdir -p "$DIR" || { echo "gpu_suite: error: cannot create --out $DIR." >&2; exit 2; }
: > "$DIR/search.jsonl"; : > "$DIR/train.jsonl"
LOG="$DIR/log.txt"; : > "$LOG"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NEEDED="import jax, flax, optax, ml_collections, grain"
if ! "$PY" -c "$NEEDED" >> "$LOG" 2>&1 && ls benchmarks/gpu_wheels/*.whl > /dev/null 2>&1; then
  SITE=$(mktemp -d /tmp/jdarts_site.XXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" benchmarks/gpu_wheels/*.whl >> "$LOG" 2>&1 \
    || { echo "gpu_suite: error: installing benchmarks/gpu_wheels/*.whl failed (see $LOG);" \
              "were they downloaded for this Python (PYVER=... benchmarks/gpu_wheels.sh)?" >&2; exit 2; }
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH#$PWD}"
fi
if ! "$PY" -c "$NEEDED" >> "$LOG" 2>&1; then
  echo "gpu_suite: error: $PY cannot import jax, flax, optax, ml_collections and grain" \
       "(see $LOG); run benchmarks/gpu_wheels.sh where pip works and bring benchmarks/gpu_wheels/." >&2
  exit 2
fi
export PYTHONUNBUFFERED=1

if [ "$TINY" = 1 ]; then
  S=(--C=2 --layers=3 --batch=4 --repeats=2); T=(--C=4 --layers=3 --batch=4 --repeats=2)
else
  S=(--C=16 --layers=8 --batch=64 --repeats=10); T=(--preset=paper --repeats=10)
fi
{ echo "# gpu_suite $(date -u +%FT%TZ) tiny=$TINY"; "$PY" -c "import jax; print(jax.__version__, jax.devices())"; } >> "$LOG" 2>&1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG" 2>&1

FAILED=0
for kind in weight arch_first_order exact_hvp finite_difference; do
  echo "[gpu_suite] search step $kind" >&2
  timeout "$STEP_TIMEOUT" "$PY" benchmarks/search_step.py "${S[@]}" --steps="$kind" \
      --out="$DIR/search.jsonl" ${SEARCH_FLAGS:-} >> "$LOG" 2>&1 \
    || { echo "[gpu_suite]   $kind failed or timed out (see $LOG)" >&2; FAILED=1; }
done
for backend in pmap shard_map; do
  for dtype in float32 bfloat16; do
    echo "[gpu_suite] training step $backend $dtype" >&2
    timeout "$STEP_TIMEOUT" "$PY" benchmarks/train_step.py "${T[@]}" --backend="$backend" \
        --dtype="$dtype" --out="$DIR/train.jsonl" ${TRAIN_FLAGS:-} >> "$LOG" 2>&1 \
      || { echo "[gpu_suite]   $backend $dtype failed or timed out (see $LOG)" >&2; FAILED=1; }
  done
done
"$PY" benchmarks/gpu_summary.py "$DIR/search.jsonl" "$DIR/train.jsonl" | tee "$DIR/summary.md"
exit $FAILED
