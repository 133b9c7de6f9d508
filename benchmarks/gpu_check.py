"""The first five minutes on a GPU: whether every GPU figure afterwards can be trusted.

    python benchmarks/gpu_check.py --out /tmp/vit-atlas-check     (benchmarks/gpu_check.sh runs it)

1. A compiled sweep of two ViT-B/16 layers (random weights), run by ``build.py visualize`` with
   ``TORCH_LOGS=recompiles,graph_breaks,cudagraphs`` (by gpu_check.sh): recompiles, graph breaks and
   CUDA-graph skips are counted from that log, graphs from the shards' build-log lines.
2. A forced out-of-memory: the process may use only the memory of about 20 units (the batch trial
   measures a unit; ``torch.cuda.set_per_process_memory_fraction``) while asked for batches of 64;
   the batch must halve until it fits and the layer finish, compiled, its graphs replaying after.
3. bf16 against fp32 for the same units and seeds: the optimized images' measured (fp32) activations
   and the unit maps of one forward of the same images.

With ``--dry-run`` every part runs on the CPU at tiny sizes (part 2 is skipped: no CUDA memory to
limit); CI runs it so a broken flag or path fails there. Prints one Markdown table.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # build.py, the command line check 2 drives
import build  # noqa: E402
from benchmarks.preflight import TINY_VIT  # noqa: E402
from atlas.log import read_logs
from builder.device import exact_fp32
from builder.forward import unit_forward
from builder.models import ModelSource, load_model
from builder.recipe import resolve_recipe, unit_seed
from builder.sites import find_layers, run_to
from builder.objective import unit_maps
from builder.schedule import auto_batch_units
from builder.visualize import optimize_units

VIT_B = ["--model", "vit_base_patch16_224", "--random-init"]


def torch_log_counts(path: Path) -> dict:
    """Recompiles, graph breaks and CUDA-graph skips in a TORCH_LOGS capture."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return {"recompiles": len(re.findall(r"Recompiling function", text)),
            "graph breaks": len(re.findall(r"Graph break", text)),
            "cudagraph skips": len(re.findall(r"skipping cudagraphs", text))}


def visualize_lines(out: Path) -> list[dict]:
    return [line for line in read_logs(out) if line.get("stage") == "visualize"]


def forced_out_of_memory(out: Path) -> str:
    """Check 2: the process may use only the memory of about 20 units of ViT-B/16 layer 6 (measured by
    the batch trial) while asked for batches of 64: the batch must halve (64 -> 32 -> 16) and the
    layer finish, compiled, with its graphs replaying."""
    lm = load_model(ModelSource("vit_base_patch16_224", random_init=True))
    device = torch.device("cuda")
    layer = find_layers(lm.model, "ffn", lm.input_size)[6]
    recipe = resolve_recipe("paper", steps=8)
    fit = auto_batch_units(lm, layer, recipe, device, "bf16", unit_forward(lm, layer, torch.bfloat16, device))
    per_unit = 0.8 * torch.cuda.mem_get_info(device)[0] / fit
    total = torch.cuda.get_device_properties(0).total_memory
    limit = torch.cuda.memory_allocated(device) + 20 * per_unit
    del lm
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
    torch._dynamo.utils.counters.clear()
    t0 = time.time()
    code = build.main(["visualize", *VIT_B, "--layers", "6", "--units", "0-63", "--steps", "8", "--batch-units", "64",
                       "--out", str(out)])
    lines = visualize_lines(out)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch.cuda.set_per_process_memory_fraction(1.0)
    if code != 0 or not lines:
        return f"FAILED (exit {code}; {fit} units fit in all memory, limit {limit / 2**30:.1f} GiB)"
    return (f"{fit} units fit in all memory; limited to {limit / 2**30:.1f} GiB (about 20 units), asked for 64: "
            f"finished {sum(line['units'] for line in lines)} units in {time.time() - t0:.0f} s at "
            f"{sorted({line['batch_units'] for line in lines})} units per batch; {graphs} graphs compiled; "
            f"compile: {sorted({line['compile'] for line in lines})}")


def precision_gap(dry: bool) -> tuple[str, str]:
    """Check 3: bf16 vs fp32 for the same units and seeds."""
    kwargs = TINY_VIT if dry else {}
    lm = load_model(ModelSource("vit_tiny_patch16_224" if dry else "vit_base_patch16_224", random_init=True), **kwargs)
    device = torch.device("cpu" if dry else "cuda")
    lm.model.to(device)
    layer = find_layers(lm.model, "ffn", lm.input_size)[len(lm.model.blocks) // 2]
    units = list(range(4 if dry else 32))
    seeds = [unit_seed("check", "ffn", layer.index, u, 0) for u in units]
    recipe = resolve_recipe("paper", steps=2 if dry else 50)
    fp32 = optimize_units(lm, layer, units, seeds, recipe, device, "fp32")
    bf16 = optimize_units(lm, layer, units, seeds, recipe, device, "bf16")
    rel = np.abs(bf16.activation - fp32.activation) / np.maximum(np.abs(fp32.activation), 1e-6)
    optimized = (f"median {np.median(rel):.3f}, max {rel.max():.3f} relative difference of the measured activations "
                 f"({len(units)} units, {recipe.steps} steps); fp32 mean {fp32.activation.mean():.3f}, "
                 f"bf16 mean {bf16.activation.mean():.3f}")
    pixels = torch.from_numpy(fp32.image).permute(0, 3, 1, 2).to(device).float() / 255
    channels = torch.tensor(units, device=device)
    with torch.no_grad(), exact_fp32():
        (grid,) = run_to(lm.model, lm.normalize(pixels), [layer])
        exact = unit_maps(grid.float(), channels)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            (grid,) = run_to(lm.cast(torch.bfloat16, device), lm.normalize(pixels), [layer])
        low = unit_maps(grid.float(), channels)
    err = ((low - exact).norm() / exact.norm()).item()
    return optimized, f"{err:.4f} relative error (L2) of bf16 unit maps of the same images"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--torch-log", help="the TORCH_LOGS capture of part 1 (gpu_check.sh writes it)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    sweep = out / "sweep"
    lines = visualize_lines(sweep) if sweep.exists() else []
    counts = torch_log_counts(Path(args.torch_log)) if args.torch_log else {}
    rows.append(("compiled sweep (part 1)", f"{sum(line['units'] for line in lines)} units in {len(lines)} shards; "
                 f"compile: {sorted({line['compile'] for line in lines})}; " + ", ".join(f"{v} {k}" for k, v in counts.items())))
    if args.dry_run or not torch.cuda.is_available():
        rows.append(("forced out-of-memory (part 2)", "skipped: no CUDA device"))
    else:
        rows.append(("forced out-of-memory (part 2)", forced_out_of_memory(out / "oom")))
    optimized, forward = precision_gap(args.dry_run)
    rows.append(("bf16 vs fp32, optimized images (part 3)", optimized))
    rows.append(("bf16 vs fp32, one forward (part 3)", forward))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "CPU (dry run)"
    print("\n| device | check | result |\n|---|---|---|")
    for check, result in rows:
        print(f"| {device} | {check} | {result.replace('|', '/')} |")
    (out / "check.json").write_text(json.dumps(dict(rows), indent=1))


if __name__ == "__main__":
    sys.exit(main())
