"""What netdissect's pass costs for ViT-B/16 over a Broden-sized concept dataset (issue 31), from measured
figures: the work each step of `builder.labels.label_netdissect` does per image (counted from the shapes it
runs on), its time on this CPU (measured on random weights and Broden-shaped masks), and the projection to
one H100 from that counted work and the H100's published peaks at a stated efficiency.

    python benchmarks/netdissect_cost.py [--images 63305] [--batch 8] [--concepts-per-batch 300]

Broden (broden1_224): 63,305 images, masks 112 x 112, 1,197 concepts; a batch of 64 images holds a few hundred
distinct concepts (the bmm's last dimension). ViT-B/16: 12 FFN layers of 3,072 units on a 14 x 14 grid.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from builder.labels.scores import IoUTally  # noqa: E402

H100 = {"bf16_dense_tflops": 989, "fp32_tflops": 67, "hbm_tb_s": 3.35, "pcie_gb_s": 25}   # SXM5 data sheet
EFFICIENCY = 0.3      # share of peak assumed reached (a pessimistic, round figure; measured nowhere here)


def measure(images: int, batch: int, q: int, layers: int = 12, units: int = 3072, grid: int = 14, side: int = 112):
    torch.manual_seed(0)
    import timm
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        model(x)
        forward = (time.perf_counter() - t) / batch
    maps = torch.randn(batch, units, grid, grid)
    thr = torch.full((units,), 2.5)
    rng = np.random.default_rng(0)
    codes = rng.choice(np.arange(1, 1198), q, replace=False)
    masks = codes[rng.integers(0, q, (batch, 2, side // 8, side // 8))].repeat(8, 2).repeat(8, 3)  # blocky masks
    tally = IoUTally(units, 1198, rng.integers(0, 6, 1198), 6)
    t = time.perf_counter()
    up = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False) > thr[None, :, None, None]
    upsample = (time.perf_counter() - t) / batch
    t = time.perf_counter()
    tally.add_batch(up, masks, [[] for _ in range(batch)])
    count = (time.perf_counter() - t) / batch
    p = side * side
    work = {                                   # per image, one layer unless said
        "forward_gflop_all_layers": 2 * 17.6,  # ViT-B/16 at 224: 17.6 GMAC; two passes (thresholds, tally)
        "upsample_gbyte": units * p * 5 / 1e9, # float32 written and read once, bool written
        "bmm_gflop": 2 * units * p * q / 1e9,  # activated pixels x each concept present in the batch
        "to_host_gbyte": units * q * 8 / 1e9,  # the [U, Q] intersections, float64
    }
    cpu = {"forward_s_per_image_one_pass": forward, "upsample_s_per_image_layer": upsample,
           "tally_s_per_image_layer": count}
    cpu_total_h = images * (2 * forward + layers * (upsample + count)) / 3600
    eff = EFFICIENCY
    h100 = {
        "forward_s": images * work["forward_gflop_all_layers"] * 1e9 / (H100["bf16_dense_tflops"] * 1e12 * eff),
        "upsample_s": images * layers * work["upsample_gbyte"] * 1e9 / (H100["hbm_tb_s"] * 1e12 * eff),
        "bmm_fp32_s": images * layers * work["bmm_gflop"] * 1e9 / (H100["fp32_tflops"] * 1e12 * eff),
        "bmm_bf16_s": images * layers * work["bmm_gflop"] * 1e9 / (H100["bf16_dense_tflops"] * 1e12 * eff),
        "to_host_s": images * layers * work["to_host_gbyte"] * 1e9 / (H100["pcie_gb_s"] * 1e9 * eff),
    }
    h100["total_fp32_h"] = (h100["forward_s"] + h100["upsample_s"] + h100["bmm_fp32_s"] + h100["to_host_s"]) / 3600
    h100["total_bf16_h"] = (h100["forward_s"] + h100["upsample_s"] + h100["bmm_bf16_s"] + h100["to_host_s"]) / 3600
    return {"images": images, "batch": batch, "concepts_per_batch": q, "work_per_image": work, "cpu": cpu,
            "cpu_projected_h": cpu_total_h, "h100_projected": h100, "h100_peaks": H100, "efficiency": eff,
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=63305)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--concepts-per-batch", type=int, default=300)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.images, args.batch, args.concepts_per_batch), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
