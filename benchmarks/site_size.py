"""Bytes per unit of a rendered site, by kind of file, and a projection for ViT-B/16 on ImageNet.

    python benchmarks/site_size.py atlas-demo            # measure a rendered atlas
    python benchmarks/site_size.py --project-vitb        # build a small ViT-B-shaped sample and project

The projection renders a sample shaped like ViT-B/16 on ImageNet (224 px optimized images with a
14x14 grid, k = 16, ImageNet-like 500x375 JPEG photos) and scales each kind of file to 36,864 units
and 50,000 validation images: unit pages, optimized images and tiles per unit; dataset thumbnails
once per image used, which for 36,864 x 16 top-k slots over 50,000 images is nearly every image.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VITB_UNITS = 36_864
IMAGENET_VAL = 50_000


def kind(rel: str) -> str:
    if rel.startswith("img/viz/"):
        return "tiles" if rel.endswith("_t.webp") else "optimized images"
    if rel.startswith("img/data/"):
        return "dataset thumbnails"
    if rel.startswith("search/"):
        return "search index"
    if rel.startswith("assets/"):
        return "assets"
    name = rel.rsplit("/", 1)[-1]
    if name.startswith("U") and name.endswith(".html"):
        return "unit pages"
    return "other pages"


def measure(site: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Total bytes and file counts per kind of file."""
    sizes, counts = defaultdict(int), defaultdict(int)
    for p in site.rglob("*"):
        if p.is_file():
            k = kind(p.relative_to(site).as_posix())
            sizes[k] += p.stat().st_size
            counts[k] += 1
    return sizes, counts


def report(site: Path) -> dict:
    sizes, counts = measure(site)
    units = counts["unit pages"]
    total = sum(sizes.values())
    print(f"{site}: {units} units, {total / 1e6:.1f} MB, {total / units / 1e3:.1f} kB per unit")
    for k in sorted(sizes, key=lambda k: -sizes[k]):
        print(f"  {k:20s} {counts[k]:7d} files {sizes[k] / 1e6:8.2f} MB  {sizes[k] / units / 1e3:6.2f} kB/unit")
    return {"units": units, "sizes": dict(sizes), "counts": dict(counts)}


def project_vitb() -> None:
    import build
    from benchmarks.probe import make_jpegs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = make_jpegs(tmp / "images", 400)
        model = ["--model", "vit_tiny_patch16_224", "--random-init", "--model-args", json.dumps({"num_classes": 10})]
        out = tmp / "atlas"
        build.main(["visualize", *model, "--preset", "quick", "--steps", "16", "--layers", "0,11", "--units", "0-31",
                    "--out", str(out)])
        build.main(["probe", *model, "--images", str(images), "--layers", "0,11", "--units", "0-31", "--k", "16",
                    "--out", str(out)])
        build.main(["render", str(out)])
        m = report(out / "site")
    per_unit = {k: m["sizes"].get(k, 0) / m["units"] for k in ("unit pages", "optimized images", "tiles")}
    thumb = m["sizes"]["dataset thumbnails"] / m["counts"]["dataset thumbnails"]
    thumbs = min(IMAGENET_VAL, VITB_UNITS * 16) * thumb / VITB_UNITS
    layer_pages = m["sizes"]["other pages"] / m["units"]  # an upper bound: the sample's fixed pages spread over few units
    total = sum(per_unit.values()) + thumbs + layer_pages
    print("\nprojection for ViT-B/16 on ImageNet val (36,864 units, 50,000 images):")
    for k, v in per_unit.items():
        print(f"  {k:20s} {v / 1e3:6.2f} kB/unit")
    print(f"  {'dataset thumbnails':20s} {thumbs / 1e3:6.2f} kB/unit ({thumb / 1e3:.1f} kB each, every val image used)")
    print(f"  {'other pages':20s} {layer_pages / 1e3:6.2f} kB/unit (upper bound)")
    print(f"  total                {total / 1e3:6.2f} kB/unit = {total * VITB_UNITS / 1e9:.2f} GB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("atlas", nargs="?", help="a rendered atlas folder")
    p.add_argument("--project-vitb", action="store_true")
    args = p.parse_args()
    if args.atlas:
        report(Path(args.atlas) / "site")
    if args.project_vitb:
        project_vitb()


if __name__ == "__main__":
    main()
