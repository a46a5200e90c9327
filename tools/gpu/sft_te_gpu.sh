#!/usr/bin/env bash
# Issue 16 GPU checks on one CUDA device (H100; Python 3.12, CUDA torch, nvcc; no internet; megatron-core and
# Transformer Engine only if carried). Run from the repository root:  bash tools/gpu/sft_te_gpu.sh
# (about 3-4 minutes on an H100; BUDGET_S bounds it, default 280 s).
#
#   1. installs carried wheels from .whl/ (megatron-core cp312; transformer_engine if present) into /tmp/site
#   2. builds megatron_align._C in place (sm_90 unless TORCH_CUDA_ARCH_LIST is set)
#   3. the issue's CPU-isolated tests with CUDA visible (RoPE frequencies, optimizer-state decision, attention
#      kernels incl. the block-mask count, MFU formula, cp validation)
#   4. tools/gpu/sft_gpu_checks.py: single-process SFT runs on CUDA (layout parity fp32, flex vs sdpa with
#      the compiled block mask and FlexAttention backward, fp16 vs fp32 first grad norm, bitwise resume with
#      the distributed optimizer and the dp_reshardable checkpoint, MFU with this device's exact peak), then
#      the same with model.transformer_impl=te (THD + fused RoPE + TE FusedAdam resume) when TE imports.
# Results: $OUT/sft_gpu_checks.jsonl (one JSON line per check: ok, numbers, error tail), logs, junit XML.
# Exit status: number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sft_te_gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
T0=$(date +%s)
declare -a NAMES RCS SECS
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  echo "=== [$name] (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  local rc=$?
  NAMES+=("$name"); RCS+=("$rc"); SECS+=($(( $(date +%s) - t )))
  echo "=== [$name] rc=$rc in $(( $(date +%s) - t ))s"
}
left() { echo $(( ${BUDGET_S:-280} - ($(date +%s) - T0) )); }

if ls .whl/*.whl >/dev/null 2>&1; then
  step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
fi
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'PY' 2>&1 | tee "$OUT/env.txt"
import importlib.metadata as m, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("megatron-core", "transformer-engine", "transformer_engine_torch", "transformers", "pytest"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} MISSING")
PY

if [ -z "${SKIP_BUILD:-}" ]; then  # tools/gpu/run_all.sh builds the extension once for every script
  step build 150 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" setup.py -q build_ext --inplace
fi
step unit 60 "$PY" -m pytest -q -rfEs -p no:cacheprovider --junitxml="$OUT/unit.xml" \
  tests/unit/test_rope_frequencies.py tests/unit/test_optimizer_state_materialise.py \
  tests/unit/test_attention_kernels.py tests/unit/test_parallel_cp.py tests/plan/test_mfu.py
L=$(left); [ "$L" -gt 60 ] || L=60
step sft_checks "$L" "$PY" tools/gpu/sft_gpu_checks.py "$OUT"

echo; echo "=== summary (total $(( $(date +%s) - T0 ))s; results in $OUT/sft_gpu_checks.jsonl)"
fails=0
for i in "${!NAMES[@]}"; do
  st=ok; [ "${RCS[$i]}" = 0 ] || { st="FAILED (rc=${RCS[$i]})"; fails=$((fails + 1)); }
  [ "${RCS[$i]}" = 124 ] && st="TIMED OUT"
  printf '%-12s %-16s %5ss\n' "${NAMES[$i]}" "$st" "${SECS[$i]}"
done
grep -h "^summary:" "$OUT/sft_checks.log" 2>/dev/null
exit $fails
