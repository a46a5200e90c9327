#!/usr/bin/env bash
# DPO benchmark on one CUDA GPU (H100), for the lead's device run; ~3-4 minutes. From the repository root:
#   bash tools/gpu/dpo_gpu.sh            (results under $OUT, default /tmp/dpo_gpu_out)
# 1. builds megatron_align._C in place (CUDA kernels, sm_90 only to keep the build short);
# 2. loss path (tools/bench/bench_dpo.py --part memory): fused packed_sequence_logprobs vs log_softmax+gather,
#    bf16 logits, T x V up to 16384 x 152064, peak torch.cuda.max_memory_allocated above the inputs + time;
# 3. DPO step (--part step) of a ~1B Llama (hidden 2048, 16 layers, vocab 32000, bf16), our stage only (no TRL
#    here), online reference, only when megatron.core imports (megatron-core wheels carried under .whl/ are
#    installed to /tmp/site first when it does not).
# Each part continues after a failure; the summary at the end lists what ran. Logs and CSVs go to $OUT.
set -x
OUT=${OUT:-/tmp/dpo_gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
declare -A RC
T0=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" > "$OUT/torch.txt" 2>&1
git rev-parse --short HEAD > "$OUT/commit.txt" 2>/dev/null || echo unknown > "$OUT/commit.txt"

# megatron-core only if importable or carried as wheels
if ! $PY -c "import megatron.core" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# 1. the extension, CUDA kernels included
if [ -z "${SKIP_BUILD:-}" ]; then  # tools/gpu/run_all.sh builds the extension once for every script
  rm -f megatron_align/_C*.so
  ( export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
    timeout 100 $PY setup.py -q build_ext --inplace ) > "$OUT/build.log" 2>&1
  RC[build]=$?
else
  RC[build]=0
fi
$PY -c "import torch; from megatron_align.ops import available_backends, active_backend; \
print(available_backends(), active_backend(torch.device('cuda')))" > "$OUT/backends.txt" 2>&1
cat "$OUT/backends.txt"

# 2. loss path memory + time (writes docs/benchmarks/<gpu>_dpo_memory.csv; copied to $OUT)
timeout ${MEM_S:-80} $PY tools/bench/bench_dpo.py --part memory --mem-fraction 0.9 --step-timeout 40 \
  > "$OUT/memory.log" 2>&1
RC[memory]=$?

# 3. DPO step of a ~1B model, our stage only
if $PY -c "import megatron.core" > "$OUT/megatron_import.txt" 2>&1; then
  timeout ${STEP_S:-110} $PY tools/bench/bench_dpo.py --part step --model 1b --skip-trl --gbs 64 --mbs 4 --seq 1024 \
    --steps 8 --warmup 2 --repeats 1 --step-timeout 100 > "$OUT/step.log" 2>&1
  RC[step]=$?
else
  echo "megatron.core does not import: step part skipped" | tee "$OUT/step.log"
  RC[step]=skipped
fi
cp docs/benchmarks/*dpo_*.csv "$OUT/" 2>/dev/null

set +x
{
  echo "=== dpo_gpu.sh summary ($(( $(date +%s) - T0 )) s) commit $(cat "$OUT/commit.txt")"
  cat "$OUT/gpu.txt" "$OUT/torch.txt"
  for k in build memory step; do echo "$k: rc=${RC[$k]}"; done
  echo "backends: $(tail -1 "$OUT/backends.txt")"
  echo "--- memory (fused vs torch, bf16)"; grep -E "fused|torch|->|skipped|failed" "$OUT/memory.log"
  echo "--- step (1b, ours)"; grep -E "DPO step|ours|failed|skipped" "$OUT/step.log"
  [ "${RC[build]}" = 0 ] || { echo "--- build.log tail"; tail -15 "$OUT/build.log"; }
} | tee "$OUT/summary.txt"
