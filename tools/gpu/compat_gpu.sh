#!/usr/bin/env bash
# The compat lane on a GPU machine (Python 3.12, CUDA torch preinstalled, nvcc, no internet, no megatron-core),
# plus tests/gpu. Run from the repository root:  bash tools/gpu/compat_gpu.sh    (about 4-6 minutes on an H100)
#
#   1. installs the carried wheels in .whl/ (megatron-core 0.19.x cp312, see below) into /tmp/site
#   2. builds megatron_align._C in place with its CUDA kernels (sm_90 only unless TORCH_CUDA_ARCH_LIST is set)
#   3. `megatron-align info` with CUDA visible (the stack line: megatron-core + Python, tested pair or not)
#   4. tests/gpu with CUDA (the CUDA kernels against their CPU twins)
#   5. the compat lane (`pytest -m compat`, over 6 pytest-xdist workers) with CUDA hidden: the CI lane's
#      CPU/gloo semantics on this machine's Python 3.12 + CUDA build of torch (its distributed tests start 2-4 ranks; one GPU cannot
#      host those under NCCL)
#   6. the compat tests not marked distributed, with CUDA visible, if time is left (informative: those that
#      still start several ranks cannot share one GPU under NCCL and fail at set_device)
# Each step is bounded by a timeout and the script goes on after a failure; junit XML and logs go to
# $OUT (default /tmp/compat_gpu_out), and a summary table ends the output. Exit status: number of failed steps.
#
# Wheels to download into .whl/ beforehand (recipe: the device README's Notes):
#   megatron_core-0.19.2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
#   (Requires-Dist: torch>=2.6.0, numpy, packaging>=24.2: all in that machine's image)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/compat_gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}  # where the carried wheels are installed
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
T0=$(date +%s)
K=(); [ -n "${PYTEST_K:-}" ] && K=(-k "$PYTEST_K")  # PYTEST_K narrows the pytest steps (a smoke run)
declare -a NAMES RCS SECS
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  echo "=== [$name] (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  local rc=$?
  NAMES+=("$name"); RCS+=("$rc"); SECS+=($(( $(date +%s) - t )))
  echo "=== [$name] rc=$rc in $(( $(date +%s) - t ))s"
}
left() { echo $(( ${BUDGET_S:-330} - ($(date +%s) - T0) )); }

if ls .whl/*.whl >/dev/null 2>&1; then
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
else
  echo "no .whl/*.whl: megatron-core must already be importable"
fi
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'PY' 2>&1 | tee "$OUT/env.txt"
import importlib.metadata as m, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("megatron-core", "transformers", "numpy", "packaging", "safetensors", "tokenizers", "pytest"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} MISSING")
PY

if [ -z "${SKIP_BUILD:-}" ]; then  # tools/gpu/run_all.sh builds the extension (and runs tests/gpu) first
  step build 240 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" setup.py -q build_ext --inplace
fi
step info 60 "$PY" -m megatron_align info
if [ -z "${SKIP_BUILD:-}" ]; then
  step gpu_tests 120 "$PY" -m pytest tests/gpu "${K[@]}" -q -rs --junitxml="$OUT/gpu_tests.xml" -p no:cacheprovider
fi
# 16 cores there: spread the compat tests over pytest-xdist workers when it is installed (the image has it)
X=(); "$PY" -c "import xdist" 2>/dev/null && X=(-n "${XDIST_N:-6}")
L=$(left); [ "$L" -gt 200 ] || L=200
step compat_cpu "$L" env CUDA_VISIBLE_DEVICES= "$PY" -m pytest tests -m compat "${K[@]}" "${X[@]}" -q -rfEs --durations=15 \
  --junitxml="$OUT/compat_cpu.xml" -p no:cacheprovider
L=$(left)
if [ "$L" -gt 45 ]; then
  step compat_cuda_single "$L" "$PY" -m pytest tests -m "compat and not distributed" "${K[@]}" -q -rfEs \
    --junitxml="$OUT/compat_cuda_single.xml" -p no:cacheprovider
else
  echo "=== [compat_cuda_single] skipped: ${L}s left of the budget"
fi

echo; echo "=== summary (total $(( $(date +%s) - T0 ))s; logs and junit XML in $OUT)"
fails=0
for rc in "${RCS[@]}"; do [ "$rc" = 0 ] || fails=$((fails + 1)); done
for i in "${!NAMES[@]}"; do
  st=ok; [ "${RCS[$i]}" = 0 ] || st="FAILED (rc=${RCS[$i]})"
  [ "${RCS[$i]}" = 124 ] && st="TIMED OUT"
  summary=$(grep -hE "^(=+ )?[0-9]+ (passed|failed)|(passed|failed|error|skipped).* in [0-9.]+s" "$OUT/${NAMES[$i]}.log" 2>/dev/null | tail -1)
  printf '%-20s %-16s %5ss  %s\n' "${NAMES[$i]}" "$st" "${SECS[$i]}" "$summary"
done | tee "$OUT/summary.txt"
exit $fails
