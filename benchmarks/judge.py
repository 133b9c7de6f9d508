"""Can a person read the demo's pictures? An independent judge's answer, per layer (issue 35).

The judge is the demo ResNet (``resnet_atlas_demo``, trained on the same shapes as the demo ViT, never on
its pictures). For every class-selective unit of the chosen layers (the probe's flag: most of its top
images are of one class), it classifies the unit's optimized picture(s), the unit's best dataset image,
and a uniform-noise image (seeded per unit): how often it names the unit's class is how often the
picture shows what the unit responds to, against the chance level noise gets.

    python benchmarks/judge.py atlas-demo [--layers 4,5] [--json out.json]

Also per layer and picture part: the share of firing units whose picture beats their best dataset image,
the median ratio of the picture's activation to that image's, and the mean roughness (mean absolute
difference of adjacent pixels on [0, 1], benchmarks/atlas_quality.py's measure).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import atlas  # noqa: E402
from atlas.images import load_rgb  # noqa: E402
from benchmarks.atlas_quality import roughness_of  # noqa: E402

JUDGE = "resnet_atlas_demo"


def load_judge():
    """The demo ResNet with its committed weights, in eval mode, and its class names."""
    import builder.demo.models  # noqa: F401  (registers the demo models with timm)
    from builder.models import ModelSource, load_model
    from builder.demo.models import weights_file
    lm = load_model(ModelSource(JUDGE, str(weights_file(JUDGE))))
    return lm.model.eval(), list(lm.model.pretrained_cfg["label_names"]), lm


@torch.no_grad()
def judged(model, lm, images: np.ndarray) -> np.ndarray:
    """The judge's class index for each uint8 image [n, H, W, 3] at the model's input size."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    size = tuple(lm.input_size)
    if x.shape[-2:] != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(lm.mean).view(1, 3, 1, 1), torch.tensor(lm.std).view(1, 3, 1, 1)
    return model((x - mean) / std).argmax(1).numpy()


def measure(root: str, model_name: str = "vit_atlas_demo", site: str = "ffn", layers: list[int] | None = None,
            seed: int = 0) -> dict:
    """The judge's figures for an atlas, per layer and picture part (and 'all' over the chosen layers)."""
    judge, classes, lm = load_judge()
    rows = {}
    with atlas.open(root) as a:
        layers = layers or a.layers(model_name, site)[-2:]
        for layer in layers:
            units = [a.unit(model_name, layer, u, site=site) for u in a.units(model_name, layer, site)]
            selective = [u for u in units if "probe" in u.parts and "class_selective" in u.flags.names]
            want = np.array([classes.index(u.flags.top_class) for u in selective])
            best = np.stack([np.asarray(load_rgb(a.dataset.root / a.dataset.paths[u.topk[0].index]).resize(
                tuple(lm.input_size[::-1]))) for u in selective]) if selective else np.zeros((0, 1, 1, 3), np.uint8)
            rng = np.random.default_rng(seed + layer)
            noise = rng.integers(0, 256, (len(selective), *lm.input_size, 3), dtype=np.uint8)
            firing = [u for u in units if "probe" in u.parts and u.stats.positive > 0]
            row = {"units": len(units), "class_selective": len(selective),
                   "best_image": float((judged(judge, lm, best) == want).mean()) if selective else None,
                   "noise": float((judged(judge, lm, noise) == want).mean()) if selective else None, "parts": {}}
            for part in ("viz", "fourier"):            # (units without that picture are left out of its figures)
                drawn = [u for u in units if part in u.pictures]
                chosen = [(u, w) for u, w in zip(selective, want) if part in u.pictures]
                if not drawn:
                    continue
                alive = [u for u in firing if part in u.pictures]
                ratio = [u.picture(part).activation / u.stats.max for u in alive if u.stats.max > 0]
                pics = np.stack([u.picture(part).image for u, _ in chosen]) if chosen else None
                row["parts"][part] = {
                    "units": len(drawn), "class_selective": len(chosen),
                    "judge": float((judged(judge, lm, pics) == np.array([w for _, w in chosen])).mean()) if chosen else None,
                    "beats": float(np.mean([u.picture(part).activation > u.stats.max for u in alive])) if alive else None,
                    "activation_ratio": float(np.median(ratio)) if ratio else None,
                    "roughness": float(roughness_of(np.stack([u.picture(part).image for u in drawn])).mean())}
            rows[layer] = row
    total = sum(r["class_selective"] for r in rows.values())
    summary = {"class_selective": total}
    for key in ("best_image", "noise"):
        summary[key] = sum((r[key] or 0) * r["class_selective"] for r in rows.values()) / max(total, 1)
    for part in ("viz", "fourier"):
        if all(part in r["parts"] for r in rows.values()):
            n = sum(r["parts"][part]["class_selective"] for r in rows.values())
            summary[part] = sum((r["parts"][part]["judge"] or 0) * r["parts"][part]["class_selective"]
                                for r in rows.values()) / max(n, 1)
    return {"atlas": str(root), "model": model_name, "site": site, "judge": JUDGE, "layers": rows, "all": summary}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("atlas")
    p.add_argument("--model", default="vit_atlas_demo")
    p.add_argument("--site", default="ffn")
    p.add_argument("--layers", help="comma-separated layers (default: the last two)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    result = measure(args.atlas, args.model, args.site, layers)
    print(f"{args.atlas}: {args.model}/{args.site}, judge {JUDGE}")
    print("| layer | class-selective | judge: paper picture | judge: Fourier | judge: best image | judge: noise | "
          "beats best image (paper / Fourier) | activation / best image (median) | roughness (paper / Fourier) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer, r in result["layers"].items():
        v, f = r["parts"].get("viz", {}), r["parts"].get("fourier", {})
        pct = lambda x: "–" if x is None else f"{x:.0%}"  # noqa: E731
        print(f"| {layer} | {r['class_selective']} of {r['units']} | {pct(v.get('judge'))} | {pct(f.get('judge'))} | "
              f"{pct(r['best_image'])} | {pct(r['noise'])} | {pct(v.get('beats'))} / {pct(f.get('beats'))} | "
              f"{v.get('activation_ratio', 0):.2f} / {f.get('activation_ratio', 0):.2f} | "
              f"{v.get('roughness', 0):.3f} / {f.get('roughness', 0):.3f} |")
    s = result["all"]
    print(f"all: {s['class_selective']} class-selective units; judge names their class in "
          + ", ".join(f"{k} {s[k]:.0%}" for k in ("viz", "fourier", "best_image", "noise") if k in s))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
