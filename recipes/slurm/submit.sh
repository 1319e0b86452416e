#!/usr/bin/env bash
# Submits a sharded eval and its merge: N array tasks, then the merge once all of them succeeded.
#   SHARDS=8 BASE=/shared/llama-3.1-8b FINETUNED=/shared/my-lora RUNS=/shared/runs/exp1 \
#   EVAL_ARGS="--probes /shared/probes.jsonl --weights-dtype int8" recipes/slurm/submit.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${SHARDS:?set SHARDS, the number of shards}"
: "${RUNS:?set RUNS, the folder on shared storage for the run folders}"
mkdir -p "$RUNS"
array=$(sbatch --parsable --array="0-$((SHARDS - 1))" --export=ALL "$here/eval-shard.sbatch")
array=${array%%;*} # "jobid;cluster" on federated clusters
sbatch --parsable --dependency="afterok:$array" --export=ALL "$here/merge.sbatch"
