"""Probe throughput vs decode-only throughput with the same loader and workers.

    python benchmarks/probe.py                                  # CPU, demo-size ViT, generated JPEGs
    python benchmarks/probe.py --model vit_base_patch16_224 --images /data/imagenet/val --device cuda

Decode-only iterates the probe's own DataLoader (decode, timm eval transform, collate) and drops
the batches; the probe is `run_probe` into a temporary atlas, timed over its pass over the images
only (``stats["scan_seconds"]``: not the device's start-up, which an untimed probe of a few images
pays first, nor the shard writes and related-units matrix that follow the pass). The goal is probe
>= 80% of decode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from builder.dataset import ImageDataset, collate, scan_images
from builder.models import ModelSource, load_model
from builder.probe import ProbeJob, run_probe


def make_jpegs(folder: Path, n: int, seed: int = 0) -> Path:
    """ImageNet-like JPEGs: 500x375, smooth colour fields with noise (decode cost like photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        base = np.stack([np.sin(xx / rng.uniform(5, 60) + c) * np.cos(yy / rng.uniform(5, 60)) for c in range(3)], -1)
        img = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--model-args", default=json.dumps(dict(img_size=64, patch_size=8, embed_dim=64, depth=6,
                                                            num_heads=4, num_classes=10)))
    p.add_argument("--images", help="image folder (default: generate --n JPEGs)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else make_jpegs(Path(tmp) / "images", args.n)
        index = scan_images(folder)
        lm = load_model(ModelSource(args.model, random_init=True), **json.loads(args.model_args))
        loader = torch.utils.data.DataLoader(ImageDataset(index, lm.eval_transform()), batch_size=args.batch_size,
                                             num_workers=args.workers, collate_fn=collate)
        t0 = time.perf_counter()
        for _ in loader:
            pass
        decode = len(index.paths) / (time.perf_counter() - t0)
        warm = scan_images(make_jpegs(Path(tmp) / "warm-up", min(2 * args.batch_size, 64), seed=1))
        run_probe(lm, warm, ProbeJob(out=Path(tmp) / "warm-up-atlas", name="bench", batch_size=args.batch_size,
                                     workers=0, device=args.device, precision=args.precision, progress=False))
        job = ProbeJob(out=Path(tmp) / "atlas", name="bench", batch_size=args.batch_size, workers=args.workers,
                       device=args.device, precision=args.precision, progress=False)
        run_probe(lm, index, job)
        probe = len(index.paths) / job.stats["scan_seconds"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" \
        else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    print(f"device: {device}; model {args.model} {args.model_args}; {len(index.paths)} images; "
          f"batch {args.batch_size}; workers {args.workers}")
    print(f"decode only: {decode:.1f} images/s")
    print(f"probe:       {probe:.1f} images/s over the pass (all {job.stats['layers']} layers, k=16; "
          f"precision {job.precision})")
    print(f"ratio:       {100 * probe / decode:.0f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "decode_images_per_s": decode,
                                               "probe_images_per_s": probe, "images": len(index.paths)}, indent=1))


if __name__ == "__main__":
    main()
