"""Concept sets the label sources read.

- ``Broden``: a pixel-concept dataset in Broden's layout, as NetDissect-Lite reads it: ``index.csv`` (columns
  image, split, ih, iw, sh, sw, then one per category listing the image's mask files, ';'-separated, each
  a PNG whose label number is R + 256·G, or whole-image label numbers), ``category.csv`` (name, ...),
  ``label.csv`` (number, name, ...) and ``c_<category>.csv`` (code, number, name, frequency, coverage);
  a label's primary category is the one where it covers most (NetDissect-Lite's ``labelcat``).
- ``class_concepts``: image-level concepts from the dataset's classes, widened by a hierarchy (every
  ancestor of an image's class is a concept of the image too); for ImageNet the WordNet 3.0 tree shipped
  in ``imagenet_wordnet.json`` (scripts/imagenet_hierarchy.py).
- ``attribute_concepts``: image-level concepts from a table (``relative_path`` and one column per category,
  each cell ';'-separated concept names).
- ``words``: an open vocabulary, a file of one concept per line, or the most frequent English words
  (the ``wordfreq`` package, in the ``labels`` extra).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from atlas.format import AtlasError

from ..checkpoints import read_capped

CSV_CAP = 256 * 2**20          # bytes of a concept table read at most
IMAGENET_HIERARCHY = "imagenet_wordnet.json"


def _rows(path: Path, what: str) -> list[dict]:
    text = read_capped(path, CSV_CAP, what, "a concept table")
    try:
        return list(csv.DictReader(text.decode("utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as e:
        raise AtlasError(f"{what} {path}: not a CSV table ({e})") from None


def _plain(rel: str, root: Path, what: str) -> Path:
    """``root / rel`` for a plain relative file name read from a table (never outside ``root``)."""
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)*", rel) or ".." in rel.split("/"):
        raise AtlasError(f"{what}: {rel[:80]!r} is not a plain relative file name; the concept dataset is damaged")
    return root / rel


@dataclass
class BrodenImage:
    """One image of a Broden-layout dataset: its file, its mask files by category, its whole-image labels."""
    image: Path
    masks: list[Path]              # each a PNG of label numbers R + 256·G
    scalars: list[int]             # labels of the whole image (scene, texture in Broden)
    mask_size: tuple[int, int]     # (sh, sw)


class Broden:
    """A concept dataset in Broden's layout (see the module docstring)."""

    META = ("image", "split", "ih", "iw", "sh", "sw")

    def __init__(self, root: str | Path, categories: list[str] | None = None):
        self.root = Path(root)
        if not (self.root / "index.csv").is_file():
            raise AtlasError(f"--broden {self.root}: no index.csv; give a folder in Broden's layout (index.csv, "
                             "category.csv, label.csv, c_<category>.csv, images/)")
        cats = [r["name"] for r in _rows(self.root / "category.csv", "category.csv")]
        self.categories = [c for c in cats if categories is None or c in categories]
        labels = _rows(self.root / "label.csv", "label.csv")
        try:
            numbers = [int(r["number"]) for r in labels]
        except (KeyError, ValueError):
            raise AtlasError(f"{self.root / 'label.csv'}: its rows need a whole-number 'number' column") from None
        if not numbers or min(numbers) < 0 or max(numbers) > 2**16:
            raise AtlasError(f"{self.root / 'label.csv'}: label numbers must lie in 0..65536")
        self.names = [""] * (max(numbers) + 1)
        for r, n in zip(labels, numbers):
            self.names[n] = r.get("name", "")
        coverage = np.zeros((len(self.names), len(self.categories)))
        for k, cat in enumerate(self.categories):
            for r in _rows(self.root / f"c_{cat}.csv", f"c_{cat}.csv"):
                try:
                    n, cov = int(r["number"]), float(r.get("coverage") or 0)
                except (KeyError, ValueError):
                    continue
                if 0 < n < len(self.names):
                    coverage[n, k] = max(coverage[n, k], cov) if cov > 0 else max(coverage[n, k], 1e-12)
        # a label's primary category: where it covers most (NetDissect-Lite); labels in no kept category: none
        self.present = coverage.max(1) > 0
        self.primary = coverage.argmax(1)
        self.images = []
        for i, row in enumerate(_rows(self.root / "index.csv", "index.csv")):
            try:
                masks, scalars = [], []
                for cat in self.categories:
                    for item in filter(None, (row.get(cat) or "").split(";")):
                        if item.strip().isdigit():
                            scalars.append(int(item))
                        else:
                            masks.append(_plain(item.strip(), self.root / "images", f"index.csv row {i + 2}"))
                self.images.append(BrodenImage(_plain(row["image"], self.root / "images", f"index.csv row {i + 2}"),
                                               masks, [s for s in scalars if s < len(self.names)],
                                               (int(row["sh"]), int(row["sw"]))))
            except (KeyError, ValueError):
                raise AtlasError(f"{self.root / 'index.csv'} row {i + 2}: needs image, sh, sw and category columns") from None
        if not self.images:
            raise AtlasError(f"{self.root / 'index.csv'} lists no images")

    @property
    def concepts(self) -> tuple[list[str], list[str]]:
        """(name, category) of every label number (number 0 and labels of no kept category: empty names)."""
        return ([n if self.present[i] else "" for i, n in enumerate(self.names)],
                [self.categories[self.primary[i]] if self.present[i] else "" for i in range(len(self.names))])

    def sha256(self) -> str:
        """Identity of the concept set: index, label and category tables."""
        h = hashlib.sha256()
        for name in ("index.csv", "label.csv", "category.csv", *(f"c_{c}.csv" for c in self.categories)):
            h.update((self.root / name).read_bytes())
        return h.hexdigest()


def read_mask(path: Path) -> np.ndarray:
    """A Broden mask: label numbers R + 256·G, int32 [h, w]."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1]


@dataclass
class ImageConcepts:
    """Image-level concepts: which of C named concepts each of N images has."""
    names: list[str]
    categories: list[str]
    members: np.ndarray           # bool [N, C]
    name: str                     # the concept set's name (recorded with the labels)


def class_concepts(class_names: list[str], image_classes: np.ndarray, hierarchy: str | Path | None) -> ImageConcepts:
    """The images' classes as concepts, each class's ancestors in ``hierarchy`` too: ``imagenet`` (the shipped
    WordNet tree; the dataset's classes are ImageNet wnids or their names), a JSON file {class: [parents]}
    (names), or None (the classes alone)."""
    parents: dict[str, list[str]] = {}
    names_of = {}
    set_name = "classes"
    if hierarchy == "imagenet":
        data = json.loads((resources.files("builder.labels") / IMAGENET_HIERARCHY).read_text(encoding="utf-8"))
        names_of = {wnid: s["name"] for wnid, s in data["synsets"].items()}
        parents = {wnid: s["parents"] for wnid, s in data["synsets"].items()}
        by_name = {s["name"]: wnid for wnid, s in data["synsets"].items()}
        keys = [c if c in parents else by_name.get(c.split(",")[0].strip().lower(), c) for c in class_names]
        set_name = "classes + WordNet 3.0 hypernyms"
    elif hierarchy:
        try:
            parents = json.loads(Path(hierarchy).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AtlasError(f"--hierarchy {hierarchy}: not a JSON object of class -> parents ({e})") from None
        if not isinstance(parents, dict) or not all(isinstance(v, list) for v in parents.values()):
            raise AtlasError(f"--hierarchy {hierarchy}: not a JSON object of class -> [parent, ...]")
        keys = list(class_names)
        set_name = f"classes + {Path(hierarchy).name}"
    else:
        keys = list(class_names)
    concepts: dict[str, int] = {}
    ancestry = []
    for key in keys:
        seen, todo = [], [key]
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.append(k)
            todo += parents.get(k, [])
        ancestry.append(seen)
        for k in seen:
            concepts.setdefault(k, len(concepts))
    members = np.zeros((len(image_classes), len(concepts)), bool)
    for i, c in enumerate(np.asarray(image_classes)):
        if c >= 0:
            members[i, [concepts[k] for k in ancestry[c]]] = True
    names = [names_of.get(k, k) for k in concepts]
    return ImageConcepts(names, ["object"] * len(names), members, set_name)


def attribute_concepts(table: str | Path, paths: list[str]) -> ImageConcepts:
    """Image-level concepts from a table: ``relative_path`` and one column per category (its name), each cell
    a ';'-separated list of the image's concepts; images the table does not list have none."""
    rows = _rows(Path(table), "attribute table")
    if not rows or "relative_path" not in rows[0]:
        raise AtlasError(f"--attributes {table}: needs a relative_path column and one column per category")
    row_of = {p: i for i, p in enumerate(paths)}
    concepts: dict[tuple[str, str], int] = {}
    cells = []
    for r in rows:
        i = row_of.get(r["relative_path"])
        for cat, value in r.items():
            if cat == "relative_path" or i is None:
                continue
            for name in filter(None, (v.strip() for v in (value or "").split(";"))):
                cells.append((i, concepts.setdefault((name, cat), len(concepts))))
    members = np.zeros((len(paths), len(concepts)), bool)
    for i, c in cells:
        members[i, c] = True
    return ImageConcepts([n for n, _ in concepts], [c for _, c in concepts], members, Path(table).name)


def merge_concepts(sets: list[ImageConcepts]) -> ImageConcepts:
    """Several image-level concept sets over the same images as one (classes and attributes together)."""
    if len(sets) == 1:
        return sets[0]
    return ImageConcepts([n for c in sets for n in c.names], [k for c in sets for k in c.categories],
                         np.concatenate([c.members for c in sets], axis=1), " + ".join(c.name for c in sets))


def words(path: str | Path | None, count: int = 20000) -> tuple[list[str], str]:
    """An open vocabulary and its name: the lines of ``path``, else wordfreq's ``count`` most frequent
    English words of three letters or more."""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AtlasError(f"--words {path}: cannot be read ({e})") from None
        found = list(dict.fromkeys(w.strip() for w in text.splitlines() if w.strip()))
        if not found:
            raise AtlasError(f"--words {path}: holds no words (one concept per line)")
        return found, Path(path).name
    try:
        import wordfreq
    except ImportError:
        raise AtlasError("open-vocabulary labels need a word list: pass --words FILE, or install the labels extra "
                         "(pip install 'vit-atlas[labels]') for wordfreq's English words") from None
    found = [w for w in wordfreq.top_n_list("en", count * 2) if w.isalpha() and len(w) >= 3][:count]
    return found, f"wordfreq {wordfreq.__version__ if hasattr(wordfreq, '__version__') else ''} en top {count}".strip()
