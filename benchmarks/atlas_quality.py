"""Picture quality of a built atlas, read with bare h5py: per layer, how often the optimized image beats
the unit's best dataset image, and how rough the optimized images are.

    python benchmarks/atlas_quality.py atlas-demo [--model vit_atlas_demo] [--site ffn]

Firing unit: at least one probe image with a positive score (``stats/positive > 0``). Beats the data:
``viz/activation > stats/max``. Roughness: mean absolute difference of horizontally and vertically
adjacent pixels of the [0, 1] image (benchmarks/fidelity.py's measure).
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np


def roughness_of(images: np.ndarray) -> np.ndarray:
    """Roughness of each uint8 image [n, H, W, 3]."""
    x = images.astype(np.float32) / 255
    dx, dy = np.abs(np.diff(x, axis=2)), np.abs(np.diff(x, axis=1))
    per = dx[0].size + dy[0].size
    return (dx.reshape(len(x), -1).sum(1) + dy.reshape(len(x), -1).sum(1)) / per


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("atlas")
    p.add_argument("--model", default="vit_atlas_demo")
    p.add_argument("--site", default="ffn")
    p.add_argument("--part", default="viz", help="picture part: viz (the paper's) or fourier")
    args = p.parse_args()
    by_layer = defaultdict(lambda: {"firing": 0, "beat": 0, "rough": []})
    recipe = None
    for path in sorted((Path(args.atlas) / "shards" / args.model / args.site).glob("L*/U*.h5")):
        with h5py.File(path, "r") as f:
            layer = int(f.attrs["layer"])
            if f"{args.part}/image" not in f:
                continue
            recipe = recipe or f[args.part].attrs.get("recipe") or f.attrs.get("recipe")
            stats = by_layer[layer]
            stats["rough"].extend(roughness_of(f[f"{args.part}/image"][:]))
            if "stats" in f:
                firing = f["stats/positive"][:] > 0
                stats["firing"] += int(firing.sum())
                stats["beat"] += int((f[f"{args.part}/activation"][:] > f["stats/max"][:])[firing].sum())
    print(f"{args.atlas}: {args.model}/{args.site} part {args.part}, recipe {recipe}")
    print("layer  firing units  beat the data  mean roughness")
    firing = beat = 0
    rough = []
    for layer in sorted(by_layer):
        s = by_layer[layer]
        firing, beat, rough = firing + s["firing"], beat + s["beat"], rough + s["rough"]
        share = f"{s['beat'] / s['firing']:.1%}" if s["firing"] else "-"
        print(f"{layer:>5}  {s['firing']:>10}  {share:>13}  {np.mean(s['rough']):.4f}")
    print(f"  all  {firing:>10}  {beat / max(firing, 1):>13.1%}  {np.mean(rough):.4f}")


if __name__ == "__main__":
    main()
