"""A synthetic atlas of a given shape, written through the atlas's own writers, for website benchmarks.

    python benchmarks/synthetic_atlas.py --out /tmp/vitb-shaped            # ViT-B/16-shaped: 36,864 units
    python benchmarks/synthetic_atlas.py --out /tmp/small --layers 2 --width 512 --images 2000

ViT-B/16 on ImageNet val, in shape: 12 FFN layers of 3,072 units, 224 px pictures of both parts (paper and
Fourier), 14 x 14 maps, k = 16, a probe of 50,000 photo-like 500 x 375 JPEGs, flags, related units.

Trained-like pictures: no pretrained weights can be had here, so the pictures are drawn to match the
statistics of pictures the authors' recipe makes on a trained ViT, as far as this project has measured
them: a smooth 1/f^alpha colour field plus a pattern repeating with the 16 px patch grid, scaled so
that the mean absolute difference of neighbouring pixels ("roughness", benchmarks/fidelity.py) is
about 0.08 for the paper picture (the port of the authors' loop on the trained demo ViT: 0.080) and
0.06 for the Fourier one (0.045 there: these are rougher, so larger). ``--noise`` draws uniform noise
instead: the worst case for any image codec (a random-init model's pictures look like it). Photos are
500 distinct colour fields with natural images' 1/f amplitude spectrum, linked under 50,000 names
(each is decoded and encoded separately, as real ones would be); their 128 px thumbnails are about
4.9 kB at WebP quality 60, the size photos' thumbnails have (no ImageNet image could be measured here).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas.dataset import write_dataset  # noqa: E402
from atlas.format import SCORES, shard_path  # noqa: E402
from atlas.manifest import write_manifest  # noqa: E402
from atlas.shard import new_h5, write_part  # noqa: E402
from builder.probe import hist_edges  # noqa: E402
from builder.related import rebuild_related  # noqa: E402

MODEL = "vit_base_patch16_224"


def field(rng, n: int, size: int, alpha: float) -> np.ndarray:
    """n random colour fields [n, size, size, 3] with a 1/f^alpha spectrum, zero mean, unit std."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None]
    f = np.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1
    spec = (rng.normal(size=(n, 3, size, size // 2 + 1)) + 1j * rng.normal(size=(n, 3, size, size // 2 + 1))) / f ** alpha
    x = np.fft.irfft2(spec, s=(size, size))
    x = (x - x.mean((2, 3), keepdims=True)) / x.std((2, 3), keepdims=True)
    return np.transpose(x, (0, 2, 3, 1)).astype(np.float32)


def roughness(img: np.ndarray) -> float:
    """Mean absolute difference of neighbouring pixels of a uint8 image, on [0, 1]."""
    x = img.astype(np.float32) / 255
    return float((np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2)


class Pictures:
    """Trained-like pictures from a bank of fields: each picture mixes two of them, flipped and
    colour-permuted, plus a patch-periodic pattern (see the module docstring)."""

    def __init__(self, rng, size: int, alpha: float, pattern: float, bank: int = 256, noise: bool = False):
        self.rng, self.size, self.noise = rng, size, noise
        self.bank = field(rng, bank, size, alpha)
        self.tiles = field(rng, bank, 16, 1.0)
        self.pattern = pattern

    def draw(self, n: int) -> np.ndarray:
        if self.noise:
            return self.rng.integers(0, 256, (n, self.size, self.size, 3), dtype=np.uint8)
        i, j = self.rng.integers(0, len(self.bank), (2, n))
        w = self.rng.uniform(0.3, 0.7, (n, 1, 1, 1)).astype(np.float32)
        x = w * self.bank[i] + (1 - w) * self.bank[j][:, ::-1]
        x = x[..., self.rng.permutation(3)]
        reps = self.size // 16
        x = x + self.pattern * np.tile(self.tiles[self.rng.integers(0, len(self.tiles), n)], (1, reps, reps, 1))
        return (255 / (1 + np.exp(-1.2 * x))).round().astype(np.uint8)


def photos(folder: Path, n: int, rng) -> list[str]:
    """``n`` photo-like JPEGs (500 x 375) with the amplitude spectrum of natural images (1/f): 500 distinct
    ones, linked under the other names."""
    folder.mkdir(parents=True, exist_ok=True)
    distinct = min(n, 500)
    fields = field(rng, distinct, 512, 1.0)
    names = []
    for k in range(n):
        name = f"n{k % 1000:04d}/{k:06d}.JPEG"
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            if k < distinct:
                base = fields[k][:375, :500]
                img = (128 + 50 * base).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(path, quality=90)
            else:
                os.link(folder / names[k % distinct], path)
        names.append(name)
    return names


def smooth_maps(rng, shape: tuple, grid: int) -> np.ndarray:
    """Positive-ish activation maps on the patch grid."""
    m = rng.normal(size=(*shape, grid, grid)).astype(np.float32)
    m = (m + np.roll(m, 1, -1) + np.roll(m, 1, -2)) / 3
    return np.maximum(m, 0).astype(np.float16)


def make(out: Path, layers: int, width: int, images: int, k: int, size: int, grid: int, noise: bool, seed: int) -> Path:
    """Write the synthetic atlas into ``out`` (a new folder); returns it."""
    rng = np.random.default_rng(seed)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=False)
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    class_names = [info.index_to_description(i) for i in range(1000)]
    names = photos(out / "images", images, rng)
    labels = np.array([i % 1000 for i in range(images)], np.int64)
    write_dataset(out / "dataset.h5", out / "images", names, labels, class_names, [],
                  {"layout": "imagenet-folders", "class_ids": [], "candidates_sha256": "synthetic"})
    paper = Pictures(rng, size, 1.5, 0.4, noise=noise)
    fourier = Pictures(rng, size, 2.0, 0.3, noise=noise)
    data_config = {"input_size": [3, size, size], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
                   "mean": [0.5] * 3, "std": [0.5] * 3}
    edges = hist_edges()
    rough = []
    for layer in range(layers):
        for start in range(0, width, 256):
            stop = min(width, start + 256)
            n = stop - start
            attrs = {"model": MODEL, "arch": MODEL, "weights": "synthetic", "site": "ffn", "layer": layer,
                     "layer_units": width, "grid": [grid, grid], "module": f"blocks.{layer}.mlp.act", "module_call": 0,
                     "image_size": [size, size], "mean": [0.5] * 3, "std": [0.5] * 3,
                     "unit_start": start, "unit_stop": stop}
            path = out / shard_path(MODEL, "ffn", layer, start, stop)
            for part, pics in (("viz", paper), ("fourier", fourier)):
                images_ = pics.draw(n)
                rough.append(roughness(images_[0]))
                recipe = {"preset": "paper" if part == "viz" else "fourier", "steps": 400, "batch_copies": 8}
                write_part(path, attrs, part, {
                    f"{part}/image": images_, f"{part}/activation": rng.gamma(2, 1, n).astype(np.float32) + 2,
                    f"{part}/map": smooth_maps(rng, (n,), grid), f"{part}/seed": rng.integers(0, 2**62, n),
                    f"{part}/loss": -np.sort(rng.gamma(2, 1, (n, 16)), 1).astype(np.float32)},
                    {"recipe": recipe, "seed": 0, "loss_steps": list(range(0, 400, 25))})
            scores = np.sort(rng.gamma(2, 0.5, (n, k)), 1)[:, ::-1].astype(np.float32)
            topk = np.stack([rng.choice(images, k, replace=False) for _ in range(n)]).astype(np.int64)
            hist = np.zeros((n, len(edges) - 1), np.int64)
            for r in range(n):
                hist[r] = np.bincount(np.clip(np.searchsorted(edges, rng.normal(0.1, 0.5, 200), "right") - 1, 0,
                                              len(edges) - 2), minlength=len(edges) - 1)
            from atlas.flags import THRESHOLDS, flag_values
            maps = smooth_maps(rng, (n, k), grid)
            flags = flag_values(topk, maps, labels)
            write_part(path, attrs, "probe", {
                **{f"flags/{name}": v for name, v in flags.items()},
                "topk/index": topk, "topk/score": scores, "topk/map": maps,
                "stats/mean": rng.normal(0.1, 0.05, n).astype(np.float32), "stats/max": scores[:, 0].copy(),
                "stats/positive": rng.uniform(0.05, 0.9, n).astype(np.float32), "stats/hist": hist,
                "stats/hist_edges": edges},
                {"k": k, "images": images, "transform": "synthetic", "flag_thresholds": THRESHOLDS,
                 "data_config": data_config, "precision": "fp32", "dataset_paths_sha256": "synthetic"})
        print(f"layer {layer}: {time.time() - t0:.0f} s", flush=True)
    # related units from a small sketch score file (the real writer ranks them)
    from atlas.dataset import Dataset
    d = 64
    sketch = rng.normal(size=(layers * width, d)).astype(np.float32)
    sketch /= np.linalg.norm(sketch, axis=1, keepdims=True)
    with new_h5(out / SCORES / f"{MODEL}-ffn.h5") as f:
        f.attrs.update({"format_version": "1.4", "mode": "sketch", "images": images, "model": MODEL, "site": "ffn",
                        "dataset_paths_sha256": Dataset(out / "dataset.h5").attrs["paths_sha256"], "d": d})
        f["layer"] = np.repeat(np.arange(layers), width).astype(np.int16)
        f["unit"] = np.tile(np.arange(width), layers).astype(np.int32)
        f["sketch"], f["mean"], f["std"] = sketch, np.zeros(layers * width, np.float32), np.ones(layers * width, np.float32)
    rebuild_related(out, 8)
    write_manifest(out, "python benchmarks/synthetic_atlas.py", {"atlas": {"name": "vit-b-shaped", "version": "1"}})
    print(f"{layers * width:,} units, {images:,} images in {time.time() - t0:.0f} s; paper picture roughness "
          f"{np.mean(rough[0::2]):.3f}, Fourier {np.mean(rough[1::2]):.3f}")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=3072)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--grid", type=int, default=14)
    p.add_argument("--noise", action="store_true", help="uniform-noise pictures (the codec's worst case)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    make(Path(a.out), a.layers, a.width, a.images, a.k, a.size, a.grid, a.noise, a.seed)


if __name__ == "__main__":
    main()
