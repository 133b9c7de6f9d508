#!/usr/bin/env bash
# Every GPU figure docs/benchmarks.md promises, in one command (under 10 minutes on an H100), printed
# as a Markdown table to paste there. Run from anywhere, in an environment where ViT Atlas is
# installed (`pip install -e .`); pretrained weights are not needed (random weights, same speed).
#
#   bash benchmarks/gpu.sh                 # figures into $OUT (default /tmp/vit-atlas-gpu) and a table
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/vit-atlas-gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# 1. the engine on ViT-B/16, paper preset, defaults on CUDA (bf16, compiled with CUDA graphs), first,
#    middle and last layer, 40 of the 400 steps (rates scale with steps), against the naive loop
$PY benchmarks/engine.py --model vit_base_patch16_224 --steps 40 --against naive --json "$OUT/engine.json" \
  | tee "$OUT/engine.txt"
# 2. the same, eager (what --compile off gives), to show what compiling buys
$PY benchmarks/engine.py --model vit_base_patch16_224 --steps 40 --compile off --against naive \
  --json "$OUT/engine_eager.json" | tee "$OUT/engine_eager.txt"
# 3. the probe against decode-only, ViT-B/16 at 224 px, 5,000 generated photo-sized JPEGs
$PY benchmarks/probe.py --model vit_base_patch16_224 --model-args '{}' --n 5000 --batch-size 256 \
  --json "$OUT/probe.json" | tee "$OUT/probe.txt"
# 4. plan's calibration of the ViT-B/16 ImageNet build (plan uses random weights; no images needed)
$PY build.py plan examples/vit_b16_imagenet.toml | tee "$OUT/plan.txt"

$PY - "$OUT" <<'PY'
import json, sys, datetime, pathlib
out = pathlib.Path(sys.argv[1])
gpu = (out / "gpu.txt").read_text().strip()
e, eager, probe = (json.loads((out / n).read_text()) for n in ("engine.json", "engine_eager.json", "probe.json"))
plan = [l for l in (out / "plan.txt").read_text().splitlines() if l.startswith("calibration")]
day = datetime.date.today().isoformat()
print(f"\n| date | GPU | figure | value |\n|---|---|---|---|")
print(f"| {day} | {gpu} | engine, ViT-B/16 paper preset, bf16, compiled | {e['engine_units_per_s']:.3f} units/s at {e['steps']} steps; {e['tflops']:.0f} TFLOP/s = {100 * e.get('peak_share', 0):.1f}% of bf16 peak; projected {e['projected_hours']:.2f} h for {e['total_units']:,} units |")
print(f"| {day} | {gpu} | engine vs naive one-unit loop | {e['engine_units_per_s'] / e['naive_units_per_s']:.1f}x |")
print(f"| {day} | {gpu} | engine eager (--compile off) | {eager['engine_units_per_s']:.3f} units/s; compiled is {e['engine_units_per_s'] / eager['engine_units_per_s']:.2f}x |")
print(f"| {day} | {gpu} | probe vs decode-only, ViT-B/16 | {probe['probe_images_per_s']:.0f} vs {probe['decode_images_per_s']:.0f} img/s = {100 * probe['probe_images_per_s'] / probe['decode_images_per_s']:.0f}% |")
print(f"| {day} | {gpu} | plan calibration | {plan[0] if plan else 'n/a'} |")
PY
