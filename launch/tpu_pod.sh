#!/usr/bin/env bash
# Runs `jdarts search` on every worker of a Cloud TPU VM pod slice (or one TPU VM).
#
# The same command runs on all workers (gcloud ... ssh --worker=all); each worker
# is one JAX process, `jax.distributed` starts from JAX's TPU cluster detection
# (JDARTS_DISTRIBUTED=1, see jdarts/parallel.py) and each host reads its own
# shard of the data.
#
# Usage (from a machine with the gcloud CLI, authenticated):
#   TPU_NAME=darts-v4-32 ZONE=us-central2-b \
#   CONFIG=configs/search_cifar10_darts.py:second_order \
#   WORKDIR=/mnt/gcs/runs/darts_c10 \
#   bash launch/tpu_pod.sh [more jdarts search flags, e.g. --config.epochs=50]
#
# Required variables:
#   TPU_NAME         name of the TPU VM / pod slice
#   ZONE             its zone, e.g. us-central2-b
#   CONFIG           config file relative to the repository root, optionally :variant
#   WORKDIR          run directory (checkpoints, metrics). Every host writes its shards
#                    of the checkpoints to it, so it must be the same directory on all
#                    workers: a Filestore (NFS) share or a gcsfuse-mounted bucket. A
#                    rerun with the same WORKDIR resumes from its latest checkpoint.
# Optional variables:
#   PROJECT          GCP project (default: gcloud's configured project)
#   CREATE=1         create the TPU VM first; then also:
#     ACCELERATOR_TYPE   e.g. v4-32, v5litepod-16 (required with CREATE=1)
#     RUNTIME_VERSION    TPU VM image (default: tpu-ubuntu2204-base)
#     SPOT=1             create a Spot (preemptible) VM
#   INSTALL=0        do not install jdarts on the workers (default 1: clone/update and
#                    pip install -e ".[tpu]")
#   REPO_URL         git URL to clone (default: this checkout's `origin` remote)
#   REPO_REF         branch, tag or commit to check out (default: this checkout's HEAD
#                    commit, which must be pushed to REPO_URL)
#   REMOTE_DIR       checkout directory on the workers (default: jdarts, in $HOME)
#   DATA_DIR         passed as --config.data.data_dir (e.g. /mnt/gcs/tfds)
#
# Preemption: a Spot/preempted TPU VM gets SIGTERM; jdarts saves a checkpoint and
# exits; run this script again (without CREATE) to resume.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to your TPU VM (pod slice) name}"
: "${ZONE:?set ZONE to the TPU VM zone, e.g. us-central2-b}"
: "${CONFIG:?set CONFIG to a config file, e.g. configs/search_cifar10_darts.py}"
: "${WORKDIR:?set WORKDIR to a run directory shared by all workers, e.g. /mnt/gcs/runs/darts}"
CREATE="${CREATE:-0}"
INSTALL="${INSTALL:-1}"
REMOTE_DIR="${REMOTE_DIR:-jdarts}"
if [[ "$CREATE" == 1 ]]; then
  : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE (e.g. v4-32) to create the TPU VM}"
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "$INSTALL" == 1 ]]; then
  REPO_URL="${REPO_URL:-$(git -C "$HERE" remote get-url origin 2>/dev/null || true)}"
  : "${REPO_URL:?set REPO_URL to a git URL the workers can clone (no origin remote here)}"
  REPO_REF="${REPO_REF:-$(git -C "$HERE" rev-parse HEAD 2>/dev/null || echo main)}"
fi
command -v gcloud >/dev/null || { echo "tpu_pod.sh: gcloud not found; install the Google Cloud CLI" >&2; exit 127; }

gcloud_args=(--zone "$ZONE")
if [[ -n "${PROJECT:-}" ]]; then gcloud_args+=(--project "$PROJECT"); fi

if [[ "$CREATE" == 1 ]]; then
  create_args=(--accelerator-type "$ACCELERATOR_TYPE"
               --version "${RUNTIME_VERSION:-tpu-ubuntu2204-base}")
  if [[ "${SPOT:-0}" == 1 ]]; then create_args+=(--spot); fi
  gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_args[@]}" "${create_args[@]}"
fi

# The command each worker runs, with every value shell-quoted.
q() { printf '%q' "$1"; }
search_args=("--config=$CONFIG" "--workdir=$WORKDIR")
if [[ -n "${DATA_DIR:-}" ]]; then search_args+=("--config.data.data_dir=$DATA_DIR"); fi
search_args+=("$@")
remote="set -euo pipefail; cd \$HOME;"
if [[ "$INSTALL" == 1 ]]; then
  remote+=" if [ ! -d $(q "$REMOTE_DIR")/.git ]; then git clone -q $(q "$REPO_URL") $(q "$REMOTE_DIR"); fi;"
  remote+=" cd $(q "$REMOTE_DIR"); git fetch -q origin; git checkout -q $(q "$REPO_REF");"
  remote+=" python3 -m pip install -q -e '.[tpu]';"
else
  remote+=" cd $(q "$REMOTE_DIR");"
fi
remote+=" export JDARTS_DISTRIBUTED=1; python3 -m jdarts.cli search"
for a in "${search_args[@]}"; do remote+=" $(q "$a")"; done

echo "tpu_pod.sh: running on all workers of $TPU_NAME: $remote" >&2
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all \
  --command "$remote"
