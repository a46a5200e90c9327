#!/bin/bash
# Thin wrapper around sbatch for examples/slurm/train.sbatch: creates the log directory (Slurm does not), names the
# job after the config when no -J is given, and prints where the log and the run directory are.
#
#   examples/slurm/submit.sh [--stage=STAGE] [sbatch options] CONFIG [dotted overrides ...]
#   examples/slurm/submit.sh -J llama3-70b-sft --nodes=8 examples/configs/llama3_70b.yaml data.path=...
#
# --stage: the megatron_align command to run (default sft). Everything else before the first argument ending
# in .yaml/.yml is passed to sbatch; the rest to the script.
# Run it from the repository root (the submit directory is the job's working directory).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sbatch_opts=()
stage=sft
while [[ $# -gt 0 && ! $1 =~ \.ya?ml$ ]]; do
    case $1 in
        --stage=*) stage=${1#--stage=} ;;
        *) sbatch_opts+=("$1") ;;
    esac
    shift
done
if [[ $# -lt 1 ]]; then
    echo "usage: $0 [--stage=STAGE] [sbatch options] CONFIG.yaml [dotted overrides ...]" >&2
    exit 2
fi
config=$1
name=""
for o in ${sbatch_opts[@]+"${sbatch_opts[@]}"}; do
    case $o in -J?*|--job-name=*) name=${o#-J}; name=${name#--job-name=} ;; esac
done
if [[ -z $name ]]; then
    prev=""
    for o in ${sbatch_opts[@]+"${sbatch_opts[@]}"}; do
        [[ $prev == -J || $prev == --job-name ]] && name=$o
        prev=$o
    done
fi
if [[ -z $name ]]; then
    name=$(basename "$config"); name=${name%.y*ml}
    sbatch_opts+=(--job-name="$name")
fi
mkdir -p logs
job=$(sbatch --parsable ${sbatch_opts[@]+"${sbatch_opts[@]}"} "$here/train.sbatch" "$stage" "$@")
job=${job%%;*}
echo "submitted $stage job $job ($name): log logs/$name-$job.out, run directory runs/$name (unless output_dir=... is given)"
