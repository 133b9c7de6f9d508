#!/usr/bin/env bash
# Every GPU figure docs/benchmarks.md promises, in one command, printed as a Markdown table to paste
# there. The work per figure is fixed (units, steps, images), not sized by the GPU's memory, so it
# takes under 10 minutes on any one GPU from 24 GB to 141 GB (the first GPU visible to torch; set
# CUDA_VISIBLE_DEVICES to choose). Run `bash benchmarks/gpu_check.sh` first: it tells whether these
# figures can be trusted. Pretrained weights are not needed (random weights, same speed).
#
#   bash benchmarks/gpu.sh              # figures into $OUT (default /tmp/vit-atlas-gpu) and a table
#   bash benchmarks/gpu.sh --dry-run    # every command with tiny sizes on the CPU (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/vit-atlas-gpu}
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu.sh [--dry-run]" >&2; exit 2 ;;
esac
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
# preconditions, and the device line of the table: ViT Atlas installed, CUDA visible (not for --dry-run)
$PY benchmarks/preflight.py check $DRY > "$OUT/gpu.txt" || exit 1
if [ $DRY = 0 ]; then
  MODEL=(--model vit_base_patch16_224 --model-args '{}')
  ENGINE=(--steps 20 --units 32 --batch-units 32)
  PROBE=(--n 5000 --batch-size 256)
  SPEC=examples/vit_b16_imagenet.toml
else
  MODEL=(--model vit_tiny_patch16_224 --model-args "$($PY benchmarks/preflight.py model-args)" --device cpu)
  ENGINE=(--steps 2 --units 2 --batch-units 2 --layers 0,2)
  PROBE=(--n 8 --batch-size 4 --workers 0)
  SPEC=$OUT/tiny.toml
  $PY benchmarks/preflight.py spec "$OUT" > "$SPEC"
fi

# 1. the engine on ViT-B/16, paper preset, defaults on CUDA (bf16, compiled with CUDA graphs), first,
#    middle and last layer, 32 units per layer in batches of 32, 20 of the 400 steps (rates scale
#    with steps), against the naive one-unit loop
$PY benchmarks/engine.py "${MODEL[@]}" "${ENGINE[@]}" --against naive --json "$OUT/engine.json" | tee "$OUT/engine.txt"
# 2. the same, eager (what --compile off gives), to show what compiling buys
$PY benchmarks/engine.py "${MODEL[@]}" "${ENGINE[@]}" --compile off --against naive --json "$OUT/engine_eager.json" \
  | tee "$OUT/engine_eager.txt"
# 3. the probe's pass against decode-only, 5,000 generated photo-sized JPEGs
$PY benchmarks/probe.py "${MODEL[@]}" "${PROBE[@]}" --json "$OUT/probe.json" | tee "$OUT/probe.txt"
# 4. plan's calibration of the ViT-B/16 ImageNet build (random weights; no images needed)
$PY build.py plan "$SPEC" | tee "$OUT/plan.txt"

$PY - "$OUT" <<'PY'
import datetime, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
gpu = (out / "gpu.txt").read_text().strip().replace("|", "/")
e, eager, probe = (json.loads((out / n).read_text()) for n in ("engine.json", "engine_eager.json", "probe.json"))
plan = [l for l in (out / "plan.txt").read_text().splitlines() if l.startswith("calibration")]
day = datetime.date.today().isoformat()
rows = [
    ("engine, ViT-B/16 paper preset, default precision and compile",
     f"{e['engine_units_per_s']:.3f} units/s at {e['steps']} steps ({e['precision']}, compile {e['compile']}); "
     f"{e['tflops']:.1f} TFLOP/s = {100 * e.get('peak_share', 0):.1f}% of bf16 peak; "
     f"projected {e['projected_hours']:.2f} h for {e['total_units']:,} units"),
    ("engine vs naive one-unit loop", f"{e['engine_units_per_s'] / e['naive_units_per_s']:.1f}x"),
    ("engine eager (--compile off)", f"{eager['engine_units_per_s']:.3f} units/s; compiled is "
                                     f"{e['engine_units_per_s'] / eager['engine_units_per_s']:.2f}x"),
    ("probe pass vs decode-only", f"{probe['probe_images_per_s']:.0f} vs {probe['decode_images_per_s']:.0f} img/s = "
                                  f"{100 * probe['probe_images_per_s'] / probe['decode_images_per_s']:.0f}%"),
    ("plan calibration", plan[0] if plan else "n/a"),
]
print("\n| date | device | figure | value |\n|---|---|---|---|")
for figure, value in rows:
    print(f"| {day} | {gpu} | {figure} | {value.replace('|', '/')} |")
PY
