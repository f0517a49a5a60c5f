#!/usr/bin/env bash
# Downloads, here (with a package registry), the wheels benchmarks/gpu_suite.sh
# installs on a GPU machine that has none: the jdarts dependencies such a
# machine's image lacks (it has jax, flax, optax, numpy, absl, etils, protobuf,
# cloudpickle, PyYAML). They land in benchmarks/gpu_wheels/ (git-ignored, never
# committed); carry that folder to the GPU machine with the working tree.
#
#   benchmarks/gpu_wheels.sh            # CPython 3.12, manylinux x86-64
#   PYVER=3.11 benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")"
PYVER=${PYVER:-3.12}
DEST=gpu_wheels
mkdir -p "$DEST"
# One version each (two of one package stop the install there); grain's own
# needs are named too, since --no-deps fetches none.
PKGS=(ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0)
PLATS=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 \
         manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATS+=(--platform "${p}_x86_64")
done
for pkg in "${PKGS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATS[@]}" -d "$DEST" "$pkg"
done
ls -l "$DEST"
