"""Fidelity to the authors' runs: the engine's presets and the port of the authors' loop on the same units.

    python benchmarks/fidelity.py                                   # demo ViT and vit_tiny at 224 px
    python benchmarks/fidelity.py --models vit_atlas_demo --presets paper,paper-text,quick
    python benchmarks/fidelity.py --models vit_atlas_demo --variant tv1e-3=paper:tv=1e-3

For every model, 4 units (``--units-per-layer``) in each of its first, middle and last FFN layers are
optimized by the engine (``builder.visualize.optimize_units``, batched per layer, exactly what
``build.py visualize`` stores) with each preset, and one at a time by the port of the authors' loop
(benchmarks/authors_loop.py). Every image is quantized to uint8 as the atlas stores it and then
re-measured independently of the engine: a bare forward hook on ``blocks[i].mlp.act`` of the plain
timm model, fp32, the mean over patch tokens. Roughness is the mean absolute difference between
horizontally and vertically adjacent pixels of the [0, 1] image (all channels).

On the demo ViT the last layer's pictures are also classified by the model: the share whose class is
the unit's top dataset class (the most common label of its 16 most activating held-out shapes).

The port also runs a second time with other seeds (column ``port-seed2``): two runs of one method
differ per unit as much as their optima differ (much on random weights), and that spread is the floor
any per-unit comparison with the port can reach.

Prints a per-unit table and a summary per preset (mean roughness over the port's, median activation
ratio, share of units whose activation is at least 90% of the port's: no lower than the port's by more
than a tenth of its magnitude), writes ``fidelity.json`` and one side-by-side PNG per model (rows:
units; columns: the port, each preset, the port again) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from authors_loop import DEMO, authors_unit, normalizer

PORT_AGAIN = "port-seed2"   # the port run again with other seeds: the seed-to-seed spread of one method
SECOND_SEED = 1_000_003


@torch.no_grad()
def remeasure(model, layer: int, unit: int, image_uint8: np.ndarray) -> float:
    """The unit's activation for a stored uint8 image [H, W, 3]: bare hook, whole forward, fp32."""
    kept = {}
    prefix = getattr(model, "num_prefix_tokens", 1)
    handle = model.blocks[layer].mlp.act.register_forward_hook(lambda _m, _i, o: kept.__setitem__("t", o))
    try:
        x = torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float() / 255
        model(normalizer(model)(x))
    finally:
        handle.remove()
    return kept["t"][0, prefix:, unit].float().mean().item()


@torch.no_grad()
def demo_top_classes(model, layer: int, units: list[int], k: int = 16) -> list[int]:
    """Each unit's top dataset class on the demo's 2,000 held-out shapes (the demo atlas's probe set):
    the most common label among its k most activating images (mean patch activation, bare hook)."""
    from builder.demo.build import DEMO_IMAGES, DEMO_SEED
    from builder.demo.shapes import generate
    samples = [generate(DEMO_SEED, i) for i in range(DEMO_IMAGES)]
    labels = np.array([s.label for s in samples])
    kept, prefix = {}, getattr(model, "num_prefix_tokens", 1)
    handle = model.blocks[layer].mlp.act.register_forward_hook(lambda _m, _i, o: kept.__setitem__("t", o))
    scores = []
    try:
        for i in range(0, len(samples), 250):
            x = torch.from_numpy(np.stack([s.image for s in samples[i:i + 250]])).permute(0, 3, 1, 2).float() / 255
            model(normalizer(model)(x))
            scores.append(kept["t"][:, prefix:, units].mean(dim=1))
    finally:
        handle.remove()
    top = torch.cat(scores).topk(k, dim=0).indices.numpy()          # [k, units]
    return [int(np.bincount(labels[top[:, j]]).argmax()) for j in range(len(units))]


@torch.no_grad()
def predicted_class(model, image_uint8: np.ndarray) -> int:
    """The model's class for a stored uint8 image."""
    x = torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float() / 255
    return int(model(normalizer(model)(x)).argmax(1))


def roughness(image_uint8: np.ndarray) -> float:
    """Mean absolute difference of horizontally and vertically adjacent pixels, image in [0, 1]."""
    x = image_uint8.astype(np.float64) / 255
    dx, dy = np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0))
    return float((dx.sum() + dy.sum()) / (dx.size + dy.size))


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> uint8 [H, W, 3], as the atlas stores it."""
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def parse_variants(presets: str, variants: list[str]) -> dict[str, tuple[str, dict]]:
    """Columns to run: preset names, and NAME=PRESET:key=value,key=value recipe overrides."""
    chosen = {p: (p, {}) for p in presets.split(",") if p}
    for text in variants:
        name, _, rest = text.partition("=")
        preset, _, overrides = rest.partition(":")
        changes = {}
        for item in filter(None, overrides.split(",")):
            key, _, value = item.partition("=")
            changes[key] = json.loads(value) if value[:1] in "-0123456789[{tf" and value not in ("pixel", "channel") \
                else value
        chosen[name] = (preset, changes)
    return chosen


def run_model(name: str, args, columns: dict[str, tuple[str, dict]], out: Path) -> list[dict]:
    """Every column on the chosen units of one model; returns one row per unit."""
    from builder.models import ModelSource, load_model
    from builder.recipe import resolve_recipe, unit_seed
    from builder.sites import find_layers
    from builder.visualize import optimize_units

    from builder.demo.models import weights_file

    demo = name == DEMO
    lm = load_model(ModelSource(name, checkpoint=str(weights_file(DEMO)) if demo else None, random_init=not demo,
                                init_seed=args.init_seed))
    model, size = lm.model, lm.input_size  # the plain timm module: the port and the re-measurement use it bare
    device = torch.device("cpu")
    layers = find_layers(lm.model, "ffn", lm.input_size)
    depth = len(layers)
    chosen_layers = sorted({0, (depth - 1) // 2, depth - 1})
    rows, tiles = [], []
    for index in chosen_layers:
        layer = layers[index]
        width = layer.units
        n = args.units_per_layer
        units = [round((i + 0.5) * width / n) for i in range(n)]
        images = {}
        for column, (preset, changes) in columns.items():
            recipe = resolve_recipe(preset, steps=args.steps, **changes)
            seeds = [unit_seed(name, "ffn", index, u, 0) for u in units]
            t0 = time.perf_counter()
            result = optimize_units(lm, layer, units, seeds, recipe, device)
            seconds = time.perf_counter() - t0
            images[column] = [(to_uint8(result.pixels[i]), seconds / len(units)) for i in range(len(units))]
            print(f"  {name} L{index} {column}: {len(units)} units in {seconds:.1f} s", flush=True)
        port = []
        for u in units:
            t0 = time.perf_counter()
            pixels = authors_unit(model, index, u, size, seed=u, steps=args.steps or 400)
            port.append((to_uint8(pixels), time.perf_counter() - t0))
        print(f"  {name} L{index} port: {len(units)} units in {sum(s for _, s in port):.1f} s", flush=True)
        if args.port_again:  # the port with other seeds: how far two runs of one method differ
            again = []
            for u in units:
                t0 = time.perf_counter()
                pixels = authors_unit(model, index, u, size, seed=u + SECOND_SEED, steps=args.steps or 400)
                again.append((to_uint8(pixels), time.perf_counter() - t0))
            images[PORT_AGAIN] = again
        for i, u in enumerate(units):
            row = {"model": name, "layer": index, "unit": u,
                   "port": {"activation": remeasure(model, index, u, port[i][0]),
                            "roughness": roughness(port[i][0]), "seconds": port[i][1]}}
            for column in images:
                image, seconds = images[column][i]
                row[column] = {"activation": remeasure(model, index, u, image), "roughness": roughness(image),
                               "seconds": seconds}

            rows.append(row)
            tiles.append([port[i][0]] + [images[c][i][0] for c in images])
    if demo and args.classify_units:
        classify(lm, layers[-1], columns, args, rows)
    side_by_side(tiles, ["port"] + list(images), [f"L{r['layer']} U{r['unit']}" for r in rows if "layer" in r],
                 out / f"fidelity-{name}.png")
    return rows


def classify(lm, layer, columns: dict, args, rows: list[dict]) -> None:
    """For ``--classify-units`` units of the last layer, evenly spaced: each preset's picture, and
    whether the model classifies it as the unit's top dataset class. Adds a row "classification"."""
    from builder.recipe import resolve_recipe, unit_seed
    from builder.visualize import optimize_units
    n = args.classify_units
    units = [round((i + 0.5) * layer.units / n) for i in range(n)]
    top = demo_top_classes(lm.model, layer.index, units)
    result = {"units": units, "top_class": top}
    for column, (preset, changes) in columns.items():
        seeds = [unit_seed(lm.source.name, "ffn", layer.index, u, 0) for u in units]
        images = optimize_units(lm, layer, units, seeds, resolve_recipe(preset, steps=args.steps, **changes),
                                torch.device("cpu")).image
        result[column] = [predicted_class(lm.model, im) for im in images]
        print(f"  classification L{layer.index} {column}: {sum(p == t for p, t in zip(result[column], top))}/{n} "
              "pictures classified as their unit's top dataset class", flush=True)
    rows.append({"classification": result})


def side_by_side(tiles: list[list[np.ndarray]], columns: list[str], labels: list[str], path: Path) -> None:
    """One PNG: a row per unit, a column per method, images shown at >= 128 px."""
    h, w = tiles[0][0].shape[:2]
    scale = max(1, 128 // h)
    th, tw, pad, top, left = h * scale, w * scale, 4, 18, 70
    sheet = Image.new("RGB", (left + len(columns) * (tw + pad), top + len(tiles) * (th + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((left + c * (tw + pad) + 2, 3), name, fill="black")
    for r, row in enumerate(tiles):
        draw.text((3, top + r * (th + pad) + th // 2 - 5), labels[r], fill="black")
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize((tw, th), Image.NEAREST)
            sheet.paste(tile, (left + c * (tw + pad), top + r * (th + pad)))
    sheet.save(path)


def at_least_90_percent(ours: float, port: float) -> bool:
    """Whether ``ours`` is at least 90% of the port's activation: no lower than it by more than a tenth of
    its magnitude (for a positive port value exactly 0.9x; also meaningful where the port stayed negative)."""
    return ours >= port - 0.1 * abs(port)


def summarize(rows: list[dict], columns: list[str]) -> dict:
    """Per column: mean roughness / the port's, median activation ratio, share of units >= 90% of the port's;
    with a classification row, the share of last-layer pictures classified as their unit's top class."""
    classification = next((r["classification"] for r in rows if "classification" in r), None)
    rows = [r for r in rows if "classification" not in r]
    port_rough = statistics.mean(r["port"]["roughness"] for r in rows)
    summary = {"port": {"roughness": port_rough,
                        "activation_median": statistics.median(r["port"]["activation"] for r in rows),
                        "seconds_per_unit": statistics.mean(r["port"]["seconds"] for r in rows)}}
    for c in columns:
        ratios = [r[c]["activation"] / r["port"]["activation"] if r["port"]["activation"] > 0 else float("nan")
                  for r in rows]
        rough = statistics.mean(r[c]["roughness"] for r in rows)
        summary[c] = {"roughness": rough, "roughness_vs_port": rough / port_rough,
                      "activation_median": statistics.median(r[c]["activation"] for r in rows),
                      "activation_ratio_median": statistics.median(x for x in ratios if x == x),
                      "share_at_90pct": sum(at_least_90_percent(r[c]["activation"], r["port"]["activation"])
                                            for r in rows) / len(rows),
                      "seconds_per_unit": statistics.mean(r[c]["seconds"] for r in rows)}
        if classification and c in classification:
            hits = [p == t for p, t in zip(classification[c], classification["top_class"])]
            summary[c]["top_class_share"] = sum(hits) / len(hits)
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=f"{DEMO},vit_tiny_patch16_224")
    p.add_argument("--presets", default="paper,paper-text,fourier", help="comma-separated engine presets")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PRESET:key=value,...",
                   help="an extra engine column: a preset with recipe overrides (repeatable)")
    p.add_argument("--units-per-layer", type=int, default=4)
    p.add_argument("--steps", type=int, help="override every recipe's steps (quick looks only)")
    p.add_argument("--init-seed", type=int, default=0, help="random weights of models other than the demo's")
    p.add_argument("--classify-units", type=int, default=32,
                   help="demo ViT: last-layer units whose pictures are classified (0: skip)")
    p.add_argument("--no-port-again", dest="port_again", action="store_false",
                   help=f"skip the second run of the port with other seeds (column {PORT_AGAIN!r})")
    p.add_argument("--out", default="fidelity-out")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = parse_variants(args.presets, args.variant)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", "columns": columns, "models": {}}
    for name in args.models.split(","):
        rows = run_model(name, args, columns, out)
        summary = summarize(rows, list(columns) + ([PORT_AGAIN] if args.port_again else []))
        report["models"][name] = {"rows": rows, "summary": summary}
        print(f"\n{name}: per unit (activation re-measured with a bare hook / roughness)")
        shown = ["port", *columns] + ([PORT_AGAIN] if args.port_again else [])
        print("unit        " + "".join(f"{c:>22}" for c in shown))
        for r in (r for r in rows if "classification" not in r):
            print(f"L{r['layer']:02d} U{r['unit']:04d}  " + "".join(
                f"{r[c]['activation']:>13.3f} /{r[c]['roughness']:.3f}" for c in shown))
        print(f"\n{name}: summary")
        for c, s in summary.items():
            extra = "" if c == "port" else (f"  roughness/port {s['roughness_vs_port']:.2f}  activation/port median "
                                            f"{s['activation_ratio_median']:.2f}  >=90% of port: {s['share_at_90pct']:.0%}")
            if "top_class_share" in s:
                extra += f"  last layer classified as the unit's top class: {s['top_class_share']:.0%}"
            print(f"  {c:>12}: roughness {s['roughness']:.4f}  median activation {s['activation_median']:.3f}  "
                  f"{s['seconds_per_unit']:.2f} s/unit{extra}")
    (out / "fidelity.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}/fidelity.json and the side-by-side PNGs")


if __name__ == "__main__":
    main()
