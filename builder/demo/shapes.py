"""The demo dataset: coloured shapes on textured backgrounds, deterministic from a seed.

Each image (64x64 RGB) has one main object whose shape is its class, drawn over a textured
background (stripes at an angle, checkers, dots, a gradient, smooth noise or a plain colour) with
up to three small distractors (dots, bars, squares). The main object's bounding box is known
exactly: pixels that differ between the image drawn with and without the object all lie inside
it. Image ``i`` of a dataset with seed ``s`` comes from ``numpy.random.default_rng([s, i])``, so any
image can be regenerated alone.

``make_dataset`` writes an ordinary ImageFolder (``<class>/<i>.png``) plus ``boxes.csv``
(``relative_path,x0,y0,x1,y1`` in pixels, x1/y1 exclusive, ``label``), so it flows through the
normal probe code.
"""
from __future__ import annotations

import csv
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from atlas.folder import own_folder
from atlas.format import AtlasError

SIZE = 64
CLASSES = ("circle", "square", "triangle", "star", "ring", "cross", "crescent", "heart")
TEXTURES = ("stripes", "checkers", "dots", "gradient", "noise", "plain")
GENERATOR_VERSION = 1
_SCALE = 2  # drawn at twice the size, then downsampled: smooth edges
MASK_SIZE = SIZE // 2   # concept masks at half the image's side, as Broden's (112 for 224 images)

# Saturated colours for objects; backgrounds are drawn from the muted versions of random hues.
COLOURS = {
    "red": (220, 40, 40), "orange": (240, 140, 20), "yellow": (240, 220, 40), "green": (40, 180, 60),
    "cyan": (40, 200, 220), "blue": (40, 70, 220), "purple": (150, 60, 200), "magenta": (230, 60, 180),
    "white": (245, 245, 245), "black": (20, 20, 20),
}


DISTRACTORS = ("dot", "bar", "block")   # the small things drawn over the background (a block: a small square)


@dataclass
class Sample:
    """One generated image with its class and the main object's box."""
    image: np.ndarray            # uint8 [64, 64, 3]
    label: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    colour: str
    texture: str
    distractors: tuple[str, ...] = ()        # kinds drawn, in order (DISTRACTORS)
    masks: dict | None = None    # with_masks: bool [MASK_SIZE]^2 per thing: "object", "background", each distractor kind


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rotate(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]
    if shape == "square":
        return rotate([(-r * 0.8, -r * 0.8), (r * 0.8, -r * 0.8), (r * 0.8, r * 0.8), (-r * 0.8, r * 0.8)])
    if shape == "triangle":
        return rotate([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if shape == "star":
        return rotate([((r if i % 2 == 0 else r * 0.42) * math.cos(-math.pi / 2 + i * math.pi / 5),
                        (r if i % 2 == 0 else r * 0.42) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)])
    if shape == "cross":
        a, b = r, r * 0.33
        return rotate([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                       (-a, -b), (-b, -b)])
    if shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 17, (y + 2) * r / 17))
        return rotate(pts)
    raise ValueError(shape)


def _draw_shape(mask: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    if shape == "circle":
        mask.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        mask.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        mask.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)
    elif shape == "crescent":
        mask.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = r * 0.55 * math.cos(angle), r * 0.55 * math.sin(angle)
        mask.ellipse([cx + ox - r * 0.85, cy + oy - r * 0.85, cx + ox + r * 0.85, cy + oy + r * 0.85], fill=0)
    else:
        mask.polygon(_shape_polygon(shape, cx, cy, r, angle), fill=255)


def _texture(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """A [n, n, 3] float background in [0, 255]."""
    hues = rng.uniform(0, 1, 2)
    base = [np.array(_hsv(h, rng.uniform(0.15, 0.55), rng.uniform(0.3, 0.85))) for h in hues]
    yy, xx = np.mgrid[0:n, 0:n] / n
    if kind == "stripes":
        a = rng.uniform(0, math.pi)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi * rng.uniform(3, 9)) > 0)[..., None]
    elif kind == "checkers":
        k = rng.integers(3, 9)
        t = (((xx * k).astype(int) + (yy * k).astype(int)) % 2)[..., None]
    elif kind == "dots":
        k = rng.uniform(4, 9)
        t = ((np.sin(xx * k * 2 * math.pi) * np.sin(yy * k * 2 * math.pi)) > 0.6)[..., None]
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)[..., None]
    elif kind == "noise":
        coarse = rng.uniform(0, 1, (6, 6))
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((n, n), Image.BICUBIC))[..., None] / 255
    else:
        t = np.zeros((n, n, 1))
    return base[0] * (1 - t) + base[1] * t


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys
    return tuple(255 * c for c in colorsys.hsv_to_rgb(h, s, v))


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def generate(seed: int, index: int, with_object: bool = True, with_masks: bool = False) -> Sample:
    """Image ``index`` of the dataset with ``seed`` (``with_object=False``: the same scene without
    its main object, for checking boxes; ``with_masks``: each thing's pixels too, drawn apart at the same
    places, the image unchanged: a pixel belongs to what covers at least half of it, the object over
    distractors over the background)."""
    rng = np.random.default_rng([seed, index])
    label = index % len(CLASSES)
    n = SIZE * _SCALE
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    background = _texture(rng, texture, n)
    mean_bg = background.reshape(-1, 3).mean(0)
    names = [c for c in COLOURS if _distance(COLOURS[c], mean_bg) > 120] or list(COLOURS)
    colour = names[rng.integers(len(names))]
    r = rng.uniform(11, 22) * _SCALE
    cx, cy = rng.uniform(r + 2, n - r - 2, 2)
    angle = rng.uniform(0, 2 * math.pi)
    canvas = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    kinds, layers = [], {k: Image.new("L", (n, n)) for k in DISTRACTORS} if with_masks else {}
    for _ in range(rng.integers(0, 4)):  # distractors: small dots, bars and squares
        kind, dx, dy = rng.integers(3), *rng.uniform(0, n, 2)
        s = rng.uniform(2, 5) * _SCALE
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        tilt = rng.uniform(-s, s) if kind == 1 else 0.0          # a bar's end (drawn after its fill, as always)
        kinds.append(DISTRACTORS[kind])
        targets = [(draw, fill)] + ([(ImageDraw.Draw(layers[DISTRACTORS[kind]]), 255)] if with_masks else [])
        if with_masks:          # a later distractor covers an earlier one: clear it from the other layers
            covered = Image.new("L", (n, n))
            targets.append((ImageDraw.Draw(covered), 255))
        for d, f in targets:
            if kind == 0:
                d.ellipse([dx - s, dy - s, dx + s, dy + s], fill=f)
            elif kind == 1:
                d.line([dx - 2 * s, dy, dx + 2 * s, dy + tilt], fill=f, width=int(_SCALE * 1.5))
            else:
                d.rectangle([dx - s, dy - s, dx + s, dy + s], fill=f)
        if with_masks:
            for other in DISTRACTORS:
                if other != DISTRACTORS[kind]:
                    layers[other].paste(0, mask=covered)
    mask = Image.new("L", (n, n))
    _draw_shape(ImageDraw.Draw(mask), CLASSES[label], cx, cy, r, angle)
    if with_object:
        shade = np.clip(np.asarray(COLOURS[colour]) + rng.integers(-25, 26, 3), 0, 255)
        canvas.paste(tuple(int(v) for v in shade), mask=mask)
    image = np.asarray(canvas.resize((SIZE, SIZE), Image.BOX))
    small = np.asarray(mask.resize((SIZE, SIZE), Image.BOX))
    ys, xs = np.nonzero(small)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    masks = None
    if with_masks:
        half = lambda layer: np.asarray(layer.resize((MASK_SIZE, MASK_SIZE), Image.BOX)) >= 128    # noqa: E731
        obj = half(mask) if with_object else np.zeros((MASK_SIZE, MASK_SIZE), bool)
        masks = {"object": obj}
        for k in DISTRACTORS:
            masks[k] = half(layers[k]) & ~obj
        masks["background"] = ~obj & ~np.any([masks[k] for k in DISTRACTORS], axis=0)
    return Sample(image, label, box, colour, texture, tuple(kinds), masks)


# The demo's concepts, in Broden's categories: each thing the generator draws, with a label number (0: none)
CONCEPTS = [*((c, "object") for c in CLASSES), *((d, "object") for d in DISTRACTORS),
            *((c, "color") for c in COLOURS), *((t, "texture") for t in TEXTURES)]
CONCEPT_NUMBER = {(name, cat): i + 1 for i, (name, cat) in enumerate(CONCEPTS)}


def make_dataset(out: str | Path, n: int, seed: int, concepts: str | Path | None = None,
                 concept_images: int | None = None) -> Path:
    """Write ``n`` images as an ImageFolder under ``out`` with ``boxes.csv`` and ``dataset.json``; with
    ``concepts``, also ``out/attributes.csv`` (each image's object, distractors, colour and texture, for
    image-level labels) and the concept dataset of the first ``concept_images`` (default all) in Broden's
    layout there (``write_concept_tables``: each image's object, distractor, colour and texture masks).

    Skips the work when ``out`` already holds the same dataset (same n, seed and generator version).
    """
    out = Path(out)
    info = {"generator": "vit-atlas shapes", "version": GENERATOR_VERSION, "n": n, "seed": seed,
            "size": SIZE, "classes": list(CLASSES)}
    marker = out / "dataset.json"
    previous = _generated(marker)
    concept_images = n if concept_images is None else concept_images
    wanted = {**info, "concepts": True} if concepts else info
    concept_info = {**info, "n": concept_images, "of": n}
    if previous in (info, wanted) and (not concepts or _generated(Path(concepts) / "dataset.json") == concept_info):
        return out
    if concepts and not 1 <= concept_images <= n:
        raise AtlasError(f"the concept dataset's images must be 1 to {n} (the dataset's), not {concept_images}")
    if n < 1:
        raise AtlasError(f"--n must be at least 1, not {n}")
    own_folder(out, "--out", lambda folder: previous is not None,
               "is not empty and holds no generated dataset; give a new or empty folder")
    if concepts:
        own_folder(concepts, "--concepts", lambda folder: _generated(folder / "dataset.json") is not None,
                   "is not empty and holds no generated concept dataset; give a new or empty folder")
        (Path(concepts) / "images").mkdir(exist_ok=True)
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    # every image depends on (seed, i) alone, so processes share the work and the files are the same
    workers = min(os.cpu_count() or 1, 8)
    jobs = [(out, seed, i, concepts and Path(concepts), i < concept_images) for i in range(n)]
    if workers > 1 and n >= 64:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_write_sample, jobs, chunksize=max(1, n // (8 * workers))))
    else:
        rows = [_write_sample(job) for job in jobs]
    with open(out / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["relative_path", "x0", "y0", "x1", "y1", "label"])
        writer.writerows(row[:6] for row in rows)
    if concepts:
        write_concept_tables(Path(concepts), out, [row[6] for row in rows], concept_images)
        (Path(concepts) / "dataset.json").write_text(json.dumps(concept_info, indent=1) + "\n")
    marker.write_text(json.dumps(wanted, indent=1) + "\n")
    return out


def _write_sample(job: tuple) -> list:
    """Generate and save image ``i`` of the dataset of ``seed`` into ``out`` (and its masks into the concept
    dataset when there is one); its boxes.csv row, then what the concept tables need of it."""
    out, seed, i, concepts, with_masks = job
    sample = generate(seed, i, with_masks=concepts is not None)
    rel = f"{CLASSES[sample.label]}/{i:05d}.png"
    Image.fromarray(sample.image).save(out / rel)
    row = [rel, *sample.box, sample.label, None]
    if concepts is not None:
        row[6] = _write_masks(concepts / "images", i, sample, rel, with_masks)
    return row


def _write_masks(folder: Path, i: int, sample: Sample, rel: str, write: bool) -> dict:
    """One image's Broden files (``write``): the image, its ``object`` mask (shape and distractors), ``color``
    mask (the object's colour) and ``texture`` mask (the background), label numbers as R + 256·G; what the
    tables need of it either way."""
    if write:
        Image.fromarray(sample.image).save(folder / f"{i:05d}.png")
    m = sample.masks
    layers = {cat: np.zeros((MASK_SIZE, MASK_SIZE), np.int32) for cat in ("object", "color", "texture")}
    layers["object"][m["object"]] = CONCEPT_NUMBER[(CLASSES[sample.label], "object")]
    for kind in DISTRACTORS:
        layers["object"][m[kind]] = CONCEPT_NUMBER[(kind, "object")]
    layers["color"][m["object"]] = CONCEPT_NUMBER[(sample.colour, "color")]
    layers["texture"][m["background"]] = CONCEPT_NUMBER[(sample.texture, "texture")]
    for cat, layer in layers.items() if write else ():
        rgb = np.stack([layer % 256, layer // 256, np.zeros_like(layer)], -1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:05d}_{cat}.png")
    counts = {cat: np.bincount(layer.ravel(), minlength=len(CONCEPTS) + 1) for cat, layer in layers.items()}
    return {"i": i, "rel": rel, "object": CLASSES[sample.label], "distractors": sorted(set(sample.distractors)),
            "colour": sample.colour, "texture": sample.texture, "counts": counts}


def write_concept_tables(folder: Path, images: Path, rows: list[dict], concept_images: int) -> None:
    """The concept dataset's tables in Broden's layout for its first ``concept_images`` rows (index.csv,
    category.csv, label.csv, c_<category>.csv; frequency: images with the concept, coverage: its pixels in
    units of whole images) and the image-level ``attributes.csv`` of all rows beside the images."""
    rows, attribute_rows = rows[:concept_images], rows
    cats = ("color", "object", "texture")
    freq = np.zeros(len(CONCEPTS) + 1)
    cover = np.zeros(len(CONCEPTS) + 1)
    for r in rows:
        total = sum(r["counts"].values())
        freq += total > 0
        cover += total / (MASK_SIZE * MASK_SIZE)
    with open(folder / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part", "material", "scene", "texture"])
        for r in rows:
            i = r["i"]
            w.writerow([f"{i:05d}.png", "train", SIZE, SIZE, MASK_SIZE, MASK_SIZE, f"{i:05d}_color.png", f"{i:05d}_object.png",
                        "", "", "", f"{i:05d}_texture.png"])
    with open(folder / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for cat in cats:
            numbers = [CONCEPT_NUMBER[c] for c in CONCEPTS if c[1] == cat]
            w.writerow([cat, min(numbers), max(numbers), len(numbers), len(rows)])
    with open(folder / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerow([0, "-", "", 0, 0, ""])
        for (name, cat), number in CONCEPT_NUMBER.items():
            w.writerow([number, name, f"{cat}(1)", int(freq[number]), f"{cover[number]:.4f}", ""])
    for cat in cats:
        with open(folder / f"c_{cat}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, ((name, c), number) in enumerate(((k, v) for k, v in CONCEPT_NUMBER.items() if k[1] == cat), 1):
                w.writerow([code, number, name, int(freq[number]), f"{cover[number]:.4f}"])
    with open(images / "attributes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["relative_path", "object", "color", "texture"])
        for r in attribute_rows:
            w.writerow([r["rel"], ";".join([r["object"], *r["distractors"]]), r["colour"], r["texture"]])


def _generated(marker: Path) -> dict | None:
    """The description of a dataset this generator wrote (its dataset.json), else None."""
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == "vit-atlas shapes" else None


def read_boxes(path: str | Path) -> dict[str, tuple[int, int, int, int]]:
    """``boxes.csv`` as {relative path: (x0, y0, x1, y1)}."""
    with open(path, newline="") as f:
        return {row["relative_path"]: tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
                for row in csv.DictReader(f)}
