#!/usr/bin/env bash
# Prepared GPU check of the loss kernels and the fused LM head (issue 14), for one H100/H200.
# Needs: Python with a CUDA build of torch, nvcc; NOT megatron-core. Run from the repository root:
#     OUT=/some/dir bash tools/gpu/kernels_gpu.sh
# Builds megatron_align._C in place for sm_90 (+PTX), runs tests/gpu on CUDA, compute-sanitizer
# (memcheck + racecheck) on small cases when present, the kernel benchmarks and the fused-linear
# benchmark. Every part runs under its own time limit and the script goes on after a failure; the
# summary at the end (also $OUT/summary.txt) lists each part's exit status. Budget: < 5 minutes.
set -u -o pipefail
set -x
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"9.0+PTX"}
export MAX_JOBS=${MAX_JOBS:-16}
START=$(date +%s)
declare -a SUMMARY

BUDGET_S=${BUDGET_S:-285}  # parts that would start after this many seconds are skipped (reported)

part() {  # part NAME LIMIT_S CMD...: run, log to $OUT/NAME.txt, record the status, never stop the script
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  if (( t0 - START > BUDGET_S )); then
    SUMMARY+=("$(printf '%-28s skipped: over the %ss budget' "$name" "$BUDGET_S")"); return 0
  fi
  if (( t0 - START + limit > BUDGET_S + 15 )); then limit=$(( BUDGET_S + 15 - (t0 - START) )); fi
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-28s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$OUT/$name.txt")")
  tail -n 15 "$OUT/$name.txt"
  return 0
}

part env 60 bash -c "nvidia-smi; nvcc --version; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; $PY -m pytest --version"

# 1. Build in place. ninja (torch's cpp_extension.load) compiles the units in parallel; setup.py is serial.
part build 150 $PY - <<'PYEOF'
import glob, os, shutil, sys, sysconfig, time
t0 = time.time()
from torch.utils import cpp_extension
srcs = sorted(glob.glob("csrc/**/*.cpp", recursive=True) + glob.glob("csrc/**/*.cu", recursive=True))
target = os.path.join("megatron_align", "_C" + sysconfig.get_config_var("EXT_SUFFIX"))
try:
    import ninja  # noqa: F401
    have_ninja = True
except ImportError:
    have_ninja = shutil.which("ninja") is not None
if have_ninja:
    bdir = os.path.join("build", "gpu_ext"); os.makedirs(bdir, exist_ok=True)
    cpp_extension.load(name="_C", sources=srcs, extra_include_paths=[os.path.abspath("csrc")],
                       extra_cflags=["-O3", "-std=c++17", "-DMEGATRON_ALIGN_WITH_CUDA=1"],
                       extra_cuda_cflags=["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
                                          "-DMEGATRON_ALIGN_WITH_CUDA=1"],
                       build_directory=bdir, is_python_module=False, verbose=True)
    shutil.copy(os.path.join(bdir, "_C.so"), target)
else:
    import subprocess
    subprocess.check_call([sys.executable, "setup.py", "-q", "build_ext", "--inplace"])
print(f"built {target} in {time.time() - t0:.0f}s")
PYEOF
part import_check 60 $PY -c "import torch, megatron_align._C; from megatron_align import ops; \
print('has CUDA kernels:', torch._C._dispatch_has_kernel_for_dispatch_key('megatron_align::ce_row_stats', 'CUDA')); \
print(ops.describe_backends())"

# cuobjdump: SASS for sm_90 and the PTX are both embedded
part arch_check 30 bash -c "cuobjdump --list-elf --list-ptx megatron_align/_C*.so | sort | uniq -c | head"

# 2. tests/gpu on the GPU (no megatron-core needed; the addopts of pytest.ini need pytest-timeout: dropped)
PYTEST="$PY -m pytest -o addopts= -p no:cacheprovider -q -rs"
part tests_gpu 75 $PYTEST tests/gpu -k "cuda" --junitxml="$OUT/tests_gpu.xml"

# 3. compute-sanitizer on small cases (exact allocation bounds without the caching allocator)
if command -v compute-sanitizer >/dev/null 2>&1; then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  part sanitizer_memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 9 $PYTEST tests/gpu/test_ops_cuda.py \
    -k "cuda and (values_and_grads and 2-7 or strided_unaligned and 3- or topk_kl and 50 or packed and 5-1031)"
  part sanitizer_racecheck 40 compute-sanitizer --tool racecheck --error-exitcode 9 $PYTEST tests/gpu/test_ops_cuda.py \
    -k "cuda and values_and_grads and 5-1031 and dtype1"
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
else
  SUMMARY+=("sanitizer                    skipped: compute-sanitizer not on PATH")
fi

# 4. benchmarks. Liger is not installed on this machine: the Liger comparison is skipped (bench_cross_entropy
#    tries it only when importable). The fused-linear figures first (the issue's question), then one shape of
#    the CE kernel micro-benchmark (--quick) if time is left.
part bench_fused_linear 80 $PY tools/bench/bench_fused_linear.py --tokens 16384 --vocab 152064,19008 \
  --hidden 4096 --dtype bf16 --chunk 4096 --max-gb 40 --reps 3 --out "$OUT/gpu_fused_linear.csv"
part bench_cross_entropy 60 $PY tools/bench/bench_cross_entropy.py --quick --reps 5
cp docs/benchmarks/*.csv "$OUT/" 2>/dev/null

set +x
{
  echo "kernels_gpu.sh summary ($(date -u), $(( $(date +%s) - START ))s total; rc=0 is a pass, 124 a timeout)"
  for s in "${SUMMARY[@]}"; do echo "  $s"; done
  echo "pytest results:"; grep -hE "passed|failed|error" "$OUT"/tests_*.txt "$OUT"/sanitizer_*.txt 2>/dev/null | tail -n 8
  echo "sanitizer errors:"; grep -hE "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT"/sanitizer_*.txt 2>/dev/null
  echo "fused linear (TFLOP/s = 6*T*V*h / time; % of the measured bf16 GEMM):"
  grep -hE "GEMM|^ +[0-9]+ +[0-9]+" "$OUT/bench_fused_linear.txt" 2>/dev/null
  echo "Liger fused linear CE: not installed on this machine, comparison skipped"
} | tee "$OUT/summary.txt"
