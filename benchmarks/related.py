"""Related units: the sketch's recall against exact correlations, and its cost at ImageNet scale.

    python benchmarks/related.py atlas-demo              # recall@8 of sketches vs the exact result
    python benchmarks/related.py --scale                 # time and memory per 10,000 units (synthetic)

Recall: the atlas must hold exact score files (the demo does). For each sketch size d, related.h5 is
rebuilt from sketches of the stored scores (the same image signs the probe uses) in a copy of the
atlas, and recall@k is the mean share of each unit's exact k related units (per scope) that the sketch
also finds. Scale: a probe of N images over U units is simulated with correlated random scores; the
sketch's accumulation time per image, its memory, and rebuilding related units are measured.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from builder.related import SCOPES, ScoreStore, rebuild_related, top_related


def recall(atlas: Path, dims: list[int], k: int) -> None:
    with h5py.File(atlas / "related.h5") as f:
        assert f.attrs["method"] == "exact", "the atlas's related units must be exact (probe with --related exact)"
        exact = f["related/row"][()]
    print(f"{atlas}: {len(exact):,} units; recall@{k} of sketches against exact, by scope")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "atlas"
        shutil.copytree(atlas, copy, ignore=shutil.ignore_patterns("site", "shards", "images", "logs"))
        for d in dims:
            t0 = time.perf_counter()
            rebuild_related(copy, k, force_sketch=d)
            seconds = time.perf_counter() - t0
            with h5py.File(copy / "related.h5") as f:
                sketch = f["related/row"][()]
            line = []
            for scope, name in enumerate(SCOPES):
                have = [i for i in range(len(exact)) if (exact[i, scope] >= 0).any()]
                if have:
                    r = np.mean([len(set(exact[i, scope][exact[i, scope] >= 0]) & set(sketch[i, scope]))
                                 / (exact[i, scope] >= 0).sum() for i in have])
                    line.append(f"{name} {r:.3f}")
            print(f"  d={d:<5} " + ", ".join(line) + f"   (rebuilt in {seconds:.1f} s)")


def scale(units: int, images: int, d: int, batch: int) -> None:
    torch.manual_seed(0)
    store = ScoreStore([units], images, "sketch", d, Path("/nonexistent"), torch.device("cpu"))
    factors = torch.randn(32, units)                      # correlated units: 32 shared factors
    accumulate = 0.0                                      # the sketch's own time, not the scores' generation
    for start in range(0, images, batch):
        n = min(batch, images - start)
        scores = (torch.randn(n, 32) @ factors + torch.randn(n, units)).T.contiguous()
        t1 = time.perf_counter()
        store.update(0, scores, torch.arange(start, start + n))
        accumulate += time.perf_counter() - t1
    memory = sum(t.numel() * t.element_size() for t in (store.proj, store.sum, store.sq, store.signs))
    mean = store.sum / images
    sketch = store.proj - mean[:, None] * store.signs[None]
    vectors = (sketch / sketch.norm(dim=1, keepdim=True)).float()
    keys = torch.stack([torch.zeros(units, dtype=torch.long), torch.zeros(units, dtype=torch.long),
                        torch.arange(units) // 3072, torch.arange(units) % 3072], 1)   # ViT-B-like layers
    t1 = time.perf_counter()
    top_related(vectors, keys, 8)
    ranking = time.perf_counter() - t1
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; {units:,} units, "
          f"{images:,} images, d={d}")
    print(f"  sketch accumulation: {accumulate:.1f} s ({accumulate / images * 1e3:.2f} ms per image); "
          f"memory {memory / 2**20:.0f} MiB; per 10,000 units: {accumulate * 1e4 / units:.1f} s for these images, "
          f"{memory * 1e4 / units / 2**20:.0f} MiB")
    print(f"  related units from the sketches: {ranking:.1f} s for {units:,} units (grows with units squared: "
          f"{ranking * (36_864 / units) ** 2 / 60:.0f} min for ViT-B/16's 36,864 on this machine)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("atlas", nargs="?")
    p.add_argument("--dims", default="64,128,256,512,1024")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--scale", action="store_true")
    p.add_argument("--units", type=int, default=10_000)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    if args.atlas:
        recall(Path(args.atlas), [int(d) for d in args.dims.split(",")], args.k)
    if args.scale:
        scale(args.units, args.images, args.d, args.batch)


if __name__ == "__main__":
    main()
