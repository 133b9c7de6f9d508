#!/usr/bin/env bash
# The first-GPU check (at most 5 minutes): recompiles, graph breaks and CUDA-graph skips of a
# compiled sweep, a forced out-of-memory with the batch halving, bf16 against fp32 for the same
# seeds (benchmarks/gpu_check.py says what each check shows). Run it before benchmarks/gpu.sh.
#
#   bash benchmarks/gpu_check.sh             # on a GPU; results in $OUT (default /tmp/vit-atlas-check)
#   bash benchmarks/gpu_check.sh --dry-run   # every command with tiny sizes on the CPU (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/vit-atlas-check}
DRY=()
case "${1:-}" in
  --dry-run) DRY=(--dry-run) ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1
$PY benchmarks/preflight.py check "$([ ${#DRY[@]} = 0 ] && echo 0 || echo 1)" > /dev/null || exit 1
rm -rf "$OUT"
mkdir -p "$OUT"
if [ ${#DRY[@]} = 0 ]; then
  MODEL=(--model vit_base_patch16_224 --random-init --layers 0,11 --units 0-127 --steps 20)
else
  MODEL=(--model vit_tiny_patch16_224 --random-init --model-args "$($PY benchmarks/preflight.py model-args)"
         --layers 0,2 --units 0-3 --steps 2 --device cpu)
fi
# check 1: a compiled sweep, every recompile, graph break and CUDA-graph skip logged
TORCH_LOGS=recompiles,graph_breaks,cudagraphs $PY build.py visualize "${MODEL[@]}" --out "$OUT/sweep" \
  2> >(tee "$OUT/torch_logs.txt" >&2)
# checks 2 and 3, and the table
$PY benchmarks/gpu_check.py --out "$OUT" --torch-log "$OUT/torch_logs.txt" "${DRY[@]}"
