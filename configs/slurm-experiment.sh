#!/bin/bash
# The compute-matched experiment on a Slurm cluster: each (method, seed) is one job of an array.
#
#   bash configs/slurm-experiment.sh configs/benchmark.yaml runs/benchmark
#
# 1. the shared data stages (screen, collect, prefixes) once, in one job;
# 2. an array with one job per run (`prefixrl experiment CONFIG --list` numbers them), after 1;
# 3. the report from the finished run folders, after every job of 2.
# A job that is killed resumes from its last checkpoint when resubmitted (scontrol requeue, or
# sbatch --array=I ... for the runs --list still shows "to run"). RUN_OPTS goes to every job (GPUs,
# partition, time); TRAIN_LAUNCH wraps a run's training, e.g. for 8 GPUs:
#   TRAIN_LAUNCH="accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m prefixrl.cli"
set -euo pipefail
CONFIG=${1:?usage: slurm-experiment.sh CONFIG OUT}
OUT=${2:?usage: slurm-experiment.sh CONFIG OUT}
RUN_OPTS=${RUN_OPTS:---gres=gpu:8 --cpus-per-task=32 --time=48:00:00}
TRAIN_LAUNCH=${TRAIN_LAUNCH:-prefixrl}
mkdir -p "$OUT/slurm"
N=$(prefixrl experiment "$CONFIG" --out "$OUT" --list | grep -c -P '^\d+\t')

prepare=$(sbatch --parsable $RUN_OPTS --job-name=prefixrl-data --output="$OUT/slurm/data-%j.log" \
  --wrap="prefixrl experiment $CONFIG --out $OUT --prepare --quiet")
runs=$(sbatch --parsable $RUN_OPTS --job-name=prefixrl-run --array=0-$((N - 1)) \
  --dependency=afterok:$prepare --output="$OUT/slurm/run-%a-%j.log" \
  --wrap="$TRAIN_LAUNCH experiment $CONFIG --out $OUT --run \$SLURM_ARRAY_TASK_ID --quiet")
report=$(sbatch --parsable $RUN_OPTS --job-name=prefixrl-report --dependency=afterok:$runs \
  --output="$OUT/slurm/report-%j.log" --wrap="prefixrl experiment $CONFIG --out $OUT --report-only --quiet")
echo "submitted: data stages $prepare, $N runs $runs (array 0-$((N - 1))), report $report"
