#!/usr/bin/env bash
# The GPU benchmark suite (issue 17): one command on one H100/H200. Meant to take
# under ~8 minutes; on an H200 (2026-11-30) the weight step's compile alone took
# over 230 s, so on a short lease give it --budget.
#
#   benchmarks/gpu_wheels.sh                 # once, where a package registry is reachable
#   benchmarks/gpu_suite.sh [--tiny] [--out DIR] [--budget S] [--batched] [--forms F,G]
#       [--peer PEERS/darts --bench PEERS/bench_torch_darts.py]
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
# With --peer (an extracted quark0/darts tree) and --bench (the harness
# ../shared/peers/bench_torch_darts.py, copied where the machine can read it),
# the reference's own steps run first on the same GPU (benchmarks/peer_cuda.py;
# PEER_PYTHON, default PYTHON, must have torch with CUDA; 4 torch threads), and
# the summary adds the side-by-side table (ratios). --batched: also the weight
# and first-order steps of the batched-edges supernet (model.batch_edges).
# --forms F,G: first of all, the weight step with model.depthwise forced to each
# form (e.g. dense,fused: the forms without grouped convolutions), into
# forms.jsonl and a table of its own.
# --budget S: the whole suite's wall seconds (a lease is short): each item runs
# under the time left, those that would start with under 40 s left are
# skipped (and named). Order: reference; the four search kinds per edge;
# weight and first order with batched edges; training steps. Relative paths
# are taken from the repository root.
# JSON lines go to DIR (default $OUT if set, else gpu_suite_out/): search.jsonl,
# train.jsonl, ref.jsonl, forms.jsonl, summary.md, log.txt (passes.md with PASS_TIMES=1).
#
# If the packages are not importable, they are installed from benchmarks/gpu_wheels/*.whl
# (made by benchmarks/gpu_wheels.sh beforehand; never committed) into a
# temporary site directory; nothing is downloaded here.
# Environment: PYTHON (default python3), STEP_TIMEOUT (s per measured process,
# default 300), SEARCH_FLAGS / TRAIN_FLAGS (extra flags, e.g. --primitives=...),
# PASS_TIMES=1: XLA logs its passes and DIR/passes.md gets each item's compile
# time per HLO pass (benchmarks/pass_times.py; also for an item that timed out).
# Every measured process says on stderr (in log.txt) when it has lowered,
# compiled and run, so a timeout still shows where the time went.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
DIR=${OUT:-gpu_suite_out}
PEER=""; BENCH=""; BUDGET=0; BATCHED=0; FORMS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --batched) BATCHED=1 ;;
    --out|--peer|--bench|--budget|--forms)
      [ $# -ge 2 ] || { echo "gpu_suite: error: $1 needs a value." >&2; exit 2; }
      case "$1" in
        --out) DIR=$2 ;; --peer) PEER=$2 ;; --bench) BENCH=$2 ;; --budget) BUDGET=$2 ;;
        --forms) FORMS=$2 ;;
      esac
      shift ;;
    --forms=*) FORMS=${1#--forms=} ;;
    --out=*) DIR=${1#--out=} ;;
    --peer=*) PEER=${1#--peer=} ;;
    --bench=*) BENCH=${1#--bench=} ;;
    --budget=*) BUDGET=${1#--budget=} ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) echo "gpu_suite: error: unknown argument '$1'; use [--tiny] [--out DIR] [--budget S]" \
            "[--batched] [--forms F,G] [--peer TREE --bench FILE]." >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$PEER" ] && { [ ! -f "$PEER/cnn/model_search.py" ] || [ ! -f "$BENCH" ]; }; then
  echo "gpu_suite: error: --peer needs a quark0/darts tree (no $PEER/cnn/model_search.py?)" \
       "and --bench the harness bench_torch_darts.py (got '$BENCH')." >&2
  exit 2
fi
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_suite: error: --budget takes whole seconds." >&2; exit 2 ;; esac
for form in ${FORMS//,/ }; do
  case "$form" in
    auto|dense|fused|xla|shift) ;;
    *) echo "gpu_suite: error: --forms: unknown depthwise form '$form'; choose from" \
            "auto, dense, fused, xla, shift." >&2; exit 2 ;;
  esac
done
START=$(date +%s)
PY=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
mkdir -p "$DIR" || { echo "gpu_suite: error: cannot create --out $DIR." >&2; exit 2; }
: > "$DIR/search.jsonl"; : > "$DIR/train.jsonl"; rm -f "$DIR/passes.md" "$DIR/forms.jsonl"
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
  R=(--configs small --init-channels 2 --layers 3 --batch-size 4 --runs 1 --steps 2 --warmup 1)
  SETTING=tiny
else
  S=(--C=16 --layers=8 --batch=64 --repeats=10); T=(--preset=paper --repeats=10)
  R=(--configs paper --runs 1 --steps 10 --warmup 3)
  SETTING=paper
fi
{ echo "# gpu_suite $(date -u +%FT%TZ) tiny=$TINY budget=$BUDGET"; "$PY" -c "import jax; print(jax.__version__, jax.devices())"; } >> "$LOG" 2>&1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG" 2>&1

FAILED=0
SKIPPED=()
# Seconds the next item may run: STEP_TIMEOUT, or less when --budget runs out;
# 0 (skip) under 40 s.
allowed() {
  local t=$STEP_TIMEOUT
  if [ "$BUDGET" -gt 0 ]; then
    local left=$(( BUDGET - ($(date +%s) - START) ))
    [ "$left" -lt "$t" ] && t=$left
  fi
  [ "$t" -lt 40 ] && t=0
  echo "$t"
}
# item LABEL CMD...: runs CMD under `allowed` seconds, logs, records a skip or failure.
item() {
  local label=$1; shift
  local t; t=$(allowed)
  if [ "$t" = 0 ]; then
    echo "[gpu_suite] $label skipped: --budget spent" >&2; SKIPPED+=("$label"); return
  fi
  echo "[gpu_suite] $label (up to ${t} s)" >&2
  if [ "${PASS_TIMES:-0}" = 1 ]; then
    local tmp; tmp=$(mktemp /tmp/gpu_suite_item.XXXX)
    TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1 timeout "$t" "$@" > "$tmp" 2>&1 \
      || { echo "[gpu_suite]   $label failed or timed out (see $LOG)" >&2; FAILED=1; }
    grep -v "hlo_pass_pipeline.cc" "$tmp" >> "$LOG"
    if grep -q "HLO pass: " "$tmp"; then
      { echo "## $label"; echo; "$PY" benchmarks/pass_times.py "$tmp" --top 12 --modules 1
        echo; } >> "$DIR/passes.md" 2>&1
    fi
    rm -f "$tmp"
  else
    timeout "$t" "$@" >> "$LOG" 2>&1 \
      || { echo "[gpu_suite]   $label failed or timed out (see $LOG)" >&2; FAILED=1; }
  fi
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' /; }

LOAD0=$(loadavg)
if [ -n "$PEER" ]; then
  : > "$DIR/ref.jsonl"
  item "reference ($SETTING)" "${PEER_PYTHON:-$PY}" benchmarks/peer_cuda.py --bench "$BENCH" \
      "$PEER" "${R[@]}" --threads 4 --peer-commit "${PEER_COMMIT:-f276dd3}" \
      --kinds weight,arch_first,arch_second --out "$DIR/ref.jsonl"
fi
LOAD1=$(loadavg)
search() {  # search KIND [FLAGS...]
  local kind=$1; shift
  item "search step $kind $*" "$PY" benchmarks/search_step.py "${S[@]}" --steps="$kind" \
      --out="$DIR/search.jsonl" ${SEARCH_FLAGS:-} "$@"
}
for form in ${FORMS//,/ }; do
  item "search step weight --depthwise=$form" "$PY" benchmarks/search_step.py "${S[@]}" \
      --steps=weight --out="$DIR/forms.jsonl" ${SEARCH_FLAGS:-} --depthwise="$form"
done
search weight
search arch_first_order
search exact_hvp
search finite_difference
if [ "$BATCHED" = 1 ]; then
  search weight --batch_edges
  search arch_first_order --batch_edges
fi
LOAD2=$(loadavg)
for backend in pmap shard_map; do
  for dtype in float32 bfloat16; do
    item "training step $backend $dtype" "$PY" benchmarks/train_step.py "${T[@]}" \
        --backend="$backend" --dtype="$dtype" --out="$DIR/train.jsonl" ${TRAIN_FLAGS:-}
  done
done
SUMMARY=(--setting "$SETTING" --commit "${JDARTS_COMMIT:-?}" --loads "$LOAD0,$LOAD1,$LOAD2")
[ -n "$PEER" ] && SUMMARY+=(--ref "$DIR/ref.jsonl")
[ -s "$DIR/forms.jsonl" ] && SUMMARY+=(--forms "$DIR/forms.jsonl")
"$PY" benchmarks/gpu_summary.py "$DIR/search.jsonl" "$DIR/train.jsonl" "${SUMMARY[@]}" \
  | tee "$DIR/summary.md"
if [ ${#SKIPPED[@]} -gt 0 ]; then
  (IFS=';'; echo "Skipped (--budget): ${SKIPPED[*]}") | tee -a "$DIR/summary.md"
fi
exit $FAILED
