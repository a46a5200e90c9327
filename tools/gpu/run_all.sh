#!/usr/bin/env bash
# Every GPU check of the project in one call (one H100/H200, Python 3.12 + CUDA torch, no network):
#   megatron-core (+ any other wheel) from .whl/ -> /tmp/site; the extension built ONCE (sm_90 + PTX, ninja);
#   then tools/gpu/kernels_gpu.sh (tests/gpu, compute-sanitizer, kernel + fused-LM-head benchmarks),
#   tools/gpu/sft_te_gpu.sh (SFT checks on CUDA: layouts, flex vs sdpa, fp16, resume, MFU; TE when importable),
#   tools/gpu/dpo_gpu.sh (DPO loss-path memory in bf16, a ~1B DPO step), and the compat lane's GPU part when
#   tools/gpu/compat_gpu.sh exists. Each part has its own time budget and the script goes on after a failure.
# Results: $OUT/summary.txt (every part's summary) and $OUT/gpu_results.tar.gz (all logs and CSVs).
set -x
OUT=${OUT:-/tmp/gpu_out}
ROOT=/tmp/gpu_all
rm -rf "$ROOT"; mkdir -p "$ROOT" "$OUT"
T0=$(date +%s)
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    > "$ROOT/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"9.0+PTX"} MAX_JOBS=${MAX_JOBS:-16}
RESULTS=()
run_part() {  # run_part NAME LIMIT_S SCRIPT [ENV=...]
  local name=$1 limit=$2 script=$3; shift 3
  local t=$(date +%s)
  mkdir -p "$ROOT/$name"
  env OUT="$ROOT/$name" "$@" timeout --kill-after=15 "$limit" bash "$script" > "$ROOT/$name/run.log" 2>&1
  local rc=$?
  RESULTS+=("$(printf '%-8s rc=%-4s %4ss' "$name" "$rc" "$(( $(date +%s) - t ))")")
  tail -n 40 "$ROOT/$name/run.log"
}
# PARTS: which parts to run (a second call on the warm machine can run the rest: PARTS=compat)
PARTS=${PARTS:-"kernels sft dpo compat"}
has() { [[ " $PARTS " == *" $1 "* ]]; }
if ! ls megatron_align/_C*.so >/dev/null 2>&1 && ! has kernels; then  # a fresh machine: build first
  (cd . && $PY setup.py -q build_ext --inplace) > "$ROOT/build.log" 2>&1
fi
has kernels && run_part kernels 215 tools/gpu/kernels_gpu.sh BUDGET_S=165
has sft && run_part sft 160 tools/gpu/sft_te_gpu.sh SKIP_BUILD=1 BUDGET_S=150
has dpo && run_part dpo 120 tools/gpu/dpo_gpu.sh SKIP_BUILD=1 MEM_S=45 STEP_S=65
if has compat && [ -f tools/gpu/compat_gpu.sh ]; then
  run_part compat $(( ${TOTAL_S:-560} - ($(date +%s) - T0) )) tools/gpu/compat_gpu.sh SKIP_BUILD=1 \
    BUDGET_S=$(( ${TOTAL_S:-560} - 20 - ($(date +%s) - T0) ))
fi
{
  echo "=== run_all: $(( $(date +%s) - T0 ))s on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || cat .git_commit 2>/dev/null) $(date -u +%F)"
  printf '%s\n' "${RESULTS[@]}"
  for f in "$ROOT"/*/summary.txt; do echo; echo "--- $f"; cat "$f"; done
  echo; echo "--- sft checks"; cat "$ROOT"/sft/sft_gpu_checks.jsonl 2>/dev/null
} > "$OUT/summary.txt"
tar czf "$OUT/gpu_results.tar.gz" -C "$ROOT" .
cat "$OUT/summary.txt"
