#!/usr/bin/env bash
# Compile every CUDA source under csrc/ for the given SM architectures with nvcc (no GPU needed).
# usage: tools/nvcc_check.sh NVCC ARCH [ARCH...]     e.g. tools/nvcc_check.sh nvcc 90 80
# The first ARCH is also compiled to PTX (compute_ARCH), as setup.py embeds it for newer GPUs.
set -euo pipefail
NVCC=${1:-nvcc}; shift || true
ARCHS=${*:-90}
cd "$(dirname "$0")/.."
mapfile -t SRCS < <(find csrc -name '*.cu' | sort)
if [ ${#SRCS[@]} -eq 0 ]; then echo "nvcc-check: no .cu sources"; exit 0; fi
OUTDIR=$(mktemp -d)
trap 'rm -rf "$OUTDIR"' EXIT
FIRST=${ARCHS%% *}
for arch in $ARCHS; do
  code="sm_${arch}"
  [ "$arch" = "$FIRST" ] && code="[sm_${arch},compute_${arch}]"
  for src in "${SRCS[@]}"; do
    "$NVCC" -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -I csrc \
      -gencode "arch=compute_${arch},code=${code}" -c "$src" -o "$OUTDIR/$(basename "$src").sm${arch}.o"
    echo "nvcc-check: $src ${code} ok"
  done
done
