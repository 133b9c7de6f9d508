#!/usr/bin/env bash
# The first-GPU check (at most 5 minutes): recompiles, graph breaks and CUDA-graph skips of a
# compiled sweep, a forced out-of-memory with the batch halving, bf16 against fp32 for the same
# seeds (benchmarks/gpu_check.py says what each part shows). Run it before benchmarks/gpu.sh.
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
$PY - ${#DRY[@]} <<'PY' || exit 1
import sys
try:
    import atlas, builder, timm, torch
except ImportError as e:
    sys.exit(f"ViT Atlas is not installed for {sys.executable} ({e}): run `pip install -e .` in the repository")
if sys.argv[1] == "0" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device (check CUDA_VISIBLE_DEVICES and the driver); on a machine without one, "
             "--dry-run walks the commands")
PY
rm -rf "$OUT"
mkdir -p "$OUT"
if [ ${#DRY[@]} = 0 ]; then
  MODEL=(--model vit_base_patch16_224 --random-init --layers 0,11 --units 0-127 --steps 20)
else
  MODEL=(--model vit_tiny_patch16_224 --random-init --model-args
         '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 5}'
         --layers 0,2 --units 0-3 --steps 2 --device cpu)
fi
# part 1: a compiled sweep, every recompile, graph break and CUDA-graph skip logged
TORCH_LOGS=recompiles,graph_breaks,cudagraphs $PY build.py visualize "${MODEL[@]}" --out "$OUT/sweep" \
  2> >(tee "$OUT/torch_logs.txt" >&2)
# parts 2 and 3, and the table
$PY benchmarks/gpu_check.py --out "$OUT" --torch-log "$OUT/torch_logs.txt" "${DRY[@]}"
