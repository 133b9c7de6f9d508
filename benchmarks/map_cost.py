"""What `vit-atlas map` costs at ViT-B/16's size (issue 33): 12 layers of 3,072 units from a sketched probe
(d = 1,024, the probe's default beyond its exact budget), with structure (each layer's units drawn around
48 centres, so that a map has neighbourhoods to keep). Prints the wall clock, the one-time compile (a first
layout of 8 points) and each layer's trustworthiness.

    python benchmarks/map_cost.py [--layers 12] [--width 3072] [--d 1024] [--out /tmp/map-cost]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from atlas.format import score_file  # noqa: E402
from atlas.manifest import write_manifest  # noqa: E402
from atlas.shard import new_h5  # noqa: E402
from builder.maps import map_points, run_maps  # noqa: E402

MODEL = "vit_base_patch16_224"


def write_sketches(out: Path, layers: int, width: int, d: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(layers):
        centres = rng.normal(size=(48, d))
        rows.append(centres[rng.integers(0, 48, width)] + 0.8 * rng.normal(size=(width, d)))
    sketch = np.concatenate(rows).astype(np.float32)
    sketch /= np.linalg.norm(sketch, axis=1, keepdims=True)
    with new_h5(out / score_file(MODEL, "ffn")) as f:
        f.attrs.update({"format_version": "1.9", "mode": "sketch", "images": 50_000, "model": MODEL, "site": "ffn",
                        "dataset_paths_sha256": "synthetic", "d": d})
        f["layer"] = np.repeat(np.arange(layers), width).astype(np.int16)
        f["unit"] = np.tile(np.arange(width), layers).astype(np.int32)
        f["sketch"] = sketch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=3072)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--out", default="/tmp/map-cost")
    a = p.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_sketches(out, a.layers, a.width, a.d)
    write_manifest(out, "python benchmarks/map_cost.py")
    t = time.time()
    map_points(np.eye(8), 0)                                    # numba's one-time compile of UMAP, per process
    compile_s = time.time() - t
    t = time.time()
    trust = run_maps(out, MODEL, "ffn", progress=True)
    total = time.time() - t
    print(json.dumps({"units": a.layers * a.width, "d": a.d, "compile_s": round(compile_s, 1),
                      "layouts_s": round(total, 1), "trustworthiness": {k: round(v, 3) for k, v in trust.items()},
                      "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
