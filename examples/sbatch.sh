#!/bin/bash
# One GPU per array task; each task takes its share of the shard list from SLURM_ARRAY_TASK_ID and
# SLURM_ARRAY_TASK_COUNT. The last task to finish writes the manifest and renders the website.
#   sbatch --array=0-7 examples/sbatch.sh examples/vit_b16_imagenet.toml
#SBATCH --job-name=vit-atlas
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --requeue
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
.venv/bin/python build.py run "$1"
