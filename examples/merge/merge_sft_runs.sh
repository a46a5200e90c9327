#!/usr/bin/env bash
# Merge two SFT runs of the tiny model and compare their eval loss per category (CPU, a minute or two).
#
#   bash examples/merge/merge_sft_runs.sh            # OUT=runs/merge_recipe STEPS=30
#
# 1. a parent SFT run; 2. two children fine-tuned from it on different data orders (data.seed), i.e.
# different subsets of the training set within STEPS steps; 3. merges of the children (linear; task
# arithmetic and Model Stock with the parent as base); 4. eval loss of everything on the bundled eval set,
# overall and per category, in one table (stderr) and one JSON line per checkpoint (stdout).
set -euo pipefail
OUT=${OUT:-runs/merge_recipe}
STEPS=${STEPS:-30}
PY=${PYTHON:-python}
CFG=${CFG:-examples/configs/tiny_cpu.yaml}
COMMON=(parallel.tp=1 model.num_layers=2 data.seq_length=128 train.global_batch_size=8 train.eval_interval=0
        output.tensorboard=false output.progress_bar=false optim.warmup_steps=0 optim.lr=1e-3)

$PY -m megatron_align sft --config "$CFG" "${COMMON[@]}" train.max_steps="$STEPS" output_dir="$OUT/parent"
for seed in 1 2; do
  $PY -m megatron_align sft --config "$CFG" "${COMMON[@]}" train.max_steps="$STEPS" data.seed=$seed \
      train.load="$OUT/parent" train.finetune=true output_dir="$OUT/child$seed"
done

$PY -m megatron_align merge --method linear --models "$OUT/child1" "$OUT/child2" --force "$OUT/linear"
$PY -m megatron_align merge --method task_arithmetic --models "$OUT/child1" "$OUT/child2" --base "$OUT/parent" \
    --weights 0.5 0.5 --to hf --force "$OUT/task_arithmetic"   # an HF directory: transformers loads it
$PY -m megatron_align merge --method model_stock --models "$OUT/child1" "$OUT/child2" --base "$OUT/parent" \
    --force "$OUT/model_stock"

$PY -m megatron_align evaluate --config "$CFG" "${COMMON[@]}" \
    --load "$OUT/parent" "$OUT/child1" "$OUT/child2" "$OUT/linear" "$OUT/task_arithmetic" "$OUT/model_stock" \
    | tee "$OUT/eval.jsonl"
