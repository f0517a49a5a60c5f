#!/usr/bin/env bash
# Runs `jdarts search` on one machine with several GPUs: one process, all its GPUs.
#
# One JAX process drives every visible GPU (data parallel over local devices,
# --config.parallel.backend=pmap or shard_map); jax.distributed is not started.
#
# Usage:
#   CONFIG=configs/search_cifar10_darts.py WORKDIR=runs/darts_c10 \
#   bash launch/local_multigpu.sh [more jdarts search flags, e.g. --config.batch_size=256]
#
#   CUDA_VISIBLE_DEVICES=0,1 CONFIG=... WORKDIR=... bash launch/local_multigpu.sh
#
# Required variables:
#   CONFIG                config file relative to the repository root (optionally :variant)
#   WORKDIR               run directory; a rerun with the same WORKDIR resumes from its
#                         latest checkpoint
# Optional variables:
#   CUDA_VISIBLE_DEVICES  GPUs to use (default: all)
#   PYTHON                Python interpreter with jdarts installed (default: python3)
#   DATA_DIR              passed as --config.data.data_dir
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of GPU memory JAX preallocates (JAX default 0.75)
set -euo pipefail

: "${CONFIG:?set CONFIG to a config file, e.g. configs/search_cifar10_darts.py}"
: "${WORKDIR:?set WORKDIR to the run directory, e.g. runs/darts_c10}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v "$PYTHON" >/dev/null || { echo "local_multigpu.sh: $PYTHON not found; set PYTHON" >&2; exit 127; }
if command -v nvidia-smi >/dev/null; then
  echo "local_multigpu.sh: GPUs ${CUDA_VISIBLE_DEVICES:-all}: $(nvidia-smi -L | wc -l) on this machine" >&2
fi

args=("--config=$CONFIG" "--workdir=$WORKDIR")
if [[ -n "${DATA_DIR:-}" ]]; then args+=("--config.data.data_dir=$DATA_DIR"); fi
# One process: never start jax.distributed, even inside a SLURM allocation.
export JDARTS_DISTRIBUTED=0
exec "$PYTHON" -m jdarts.cli search "${args[@]}" "$@"
