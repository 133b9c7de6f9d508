"""Unit labels: the concepts a unit is described by, with where each came from and how strongly
(docs/FORMAT.md "Labels"). Written by `vit-atlas label` (builder.labels), one file per model and site:
``labels/<model>.<site>.h5``, a group per source:

    netdissect    pixel concepts (Network Dissection): score = IoU of the unit's thresholded maps with the
                  concept's masks over a concept dataset; ``extra`` = the unit's activation threshold
    invert        image-level concepts (INVERT): score = AUC of the unit's image scores for the concept;
                  ``extra`` = the two-sided Mann-Whitney p-value; plus the best OR of up to three concepts
    clip-dissect  open vocabulary (CLIP-Dissect): score = soft-WPMI of the concept's image-text similarities
                  with the unit's most activating images; ``extra`` = NaN

Each group holds, for N units (``layer``, ``unit``) and its concept set (``names``, ``categories``), the K
best concepts per unit by score (``concept`` [N, K] indices, -1 for none; ``score``, ``extra`` [N, K]), and
in its attributes the concept set's name and sha256 and the constants the scores used.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .format import LABELS, AtlasError, check_model_name
from .shard import attr_value, new_h5, read_attrs

SOURCES = {"netdissect": "IoU", "invert": "AUC", "clip-dissect": "soft-WPMI"}    # each source and its score
SOURCE_TITLES = {"netdissect": "Pixel concepts (Network Dissection)", "invert": "Image-level concepts (INVERT)",
                 "clip-dissect": "Open vocabulary (CLIP-Dissect)"}
CATEGORIES = ("color", "object", "part", "material", "scene", "texture")           # Broden's concept categories
LABEL_FILE = LABELS + "/{model}.{site}.h5"


def label_file(model: str, site: str) -> str:
    """Atlas-relative path of the labels of (model, site)."""
    return LABEL_FILE.format(model=check_model_name(model), site=site)


@dataclass(frozen=True)
class Label:
    """One concept a unit is described by."""
    source: str            # one of SOURCES
    concept: str           # the concept's name ("stripes", "dog", "red OR orange" for a composition)
    category: str          # its category ("texture", "object", "class", "word", "formula", ...)
    score: float           # IoU, AUC or soft-WPMI (SOURCES), higher is better
    p_value: float | None = None     # invert: the two-sided Mann-Whitney p-value
    threshold: float | None = None   # netdissect: the unit's activation threshold
    rank: int = 0          # 0 for the unit's best concept of this source

    @property
    def measure(self) -> str:
        """What ``score`` is: IoU, AUC or soft-WPMI."""
        return SOURCES.get(self.source, "score")


def write_labels(root: Path, model: str, site: str, source: str, table: dict, attrs: dict) -> Path:
    """Write (or replace) one source's labels of (model, site) into its label file, atomically; ``table``:
    ``layer``, ``unit`` [N], ``concept`` [N, K] int (-1 none), ``score``, ``extra`` [N, K], ``names``,
    ``categories`` [C], optionally ``formula`` [N] str and ``formula_score`` [N]. Returns the file's path."""
    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}")
    path = Path(root) / label_file(model, site)
    existing = path.read_bytes() if path.exists() else None
    with new_h5(path, existing) as f:
        f.attrs["model"], f.attrs["site"] = model, site
        if source in f:
            del f[source]
        g = f.create_group(source)
        for key, value in {**attrs, "score": SOURCES[source]}.items():
            g.attrs[key] = attr_value(value)
        for name in ("layer", "unit", "concept", "score", "extra", "formula_score"):
            if name in table:
                g.create_dataset(name, data=np.asarray(table[name]), track_times=False)
        for name in ("names", "categories", "formula"):
            if name in table:
                g.create_dataset(name, data=np.asarray([str(x) for x in table[name]], dtype=h5py.string_dtype()),
                                 track_times=False)
    return path


def read_label_file(path: Path) -> dict[str, dict]:
    """A label file read whole and checked: per source, its arrays and attributes; AtlasError naming what
    is wrong otherwise (shapes that disagree, concept indices outside the set, numbers that are not)."""
    try:
        with h5py.File(path, "r") as f:
            out = {}
            for source in f:
                if source not in SOURCES:
                    continue
                g = f[source]
                data = {name: g[name][()] for name in g}
                data["attrs"] = read_attrs(g)
                out[source] = _checked(source, data)
            return out
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise AtlasError(f"{path} is not a label file ({str(e).splitlines()[0][:120]})") from None


def _checked(source: str, data: dict) -> dict:
    n = len(data.get("layer", []))
    concept = np.asarray(data.get("concept", np.zeros((0, 0), np.int64)))
    names = [x.decode() if isinstance(x, bytes) else str(x) for x in data.get("names", [])]
    categories = [x.decode() if isinstance(x, bytes) else str(x) for x in data.get("categories", [])]
    if concept.ndim != 2 or concept.shape[0] != n or len(data.get("unit", [])) != n or len(names) != len(categories) \
            or data["score"].shape != concept.shape or data["extra"].shape != concept.shape:
        raise ValueError(f"its {source} arrays do not agree in shape")
    if concept.size and (concept.min() < -1 or concept.max() >= len(names)):
        raise ValueError(f"its {source} concept indices lie outside its {len(names)} concepts")
    data["names"], data["categories"] = names, categories
    if "formula" in data:
        data["formula"] = [x.decode() if isinstance(x, bytes) else str(x) for x in data["formula"]]
    data["index"] = {(int(layer), int(unit)): i for i, (layer, unit) in enumerate(zip(data["layer"], data["unit"]))}
    return data


def unit_labels(sources: dict[str, dict], layer: int, unit: int) -> list[Label]:
    """The labels of one unit from a label file's ``sources`` (``read_label_file``): per source its concepts,
    best first, then the best OR-composition (invert) when it beats the best single concept."""
    found = []
    for source, data in sources.items():
        i = data["index"].get((layer, unit))
        if i is None:
            continue
        for rank, (c, score, extra) in enumerate(zip(data["concept"][i], data["score"][i], data["extra"][i])):
            if c < 0 or not math.isfinite(float(score)):
                continue
            found.append(Label(source, data["names"][c], data["categories"][c], float(score),
                               float(extra) if source == "invert" and math.isfinite(float(extra)) else None,
                               float(extra) if source == "netdissect" and math.isfinite(float(extra)) else None, rank))
        if "formula" in data and data["formula"][i] and " OR " in data["formula"][i]:
            best = max((x.score for x in found if x.source == source), default=-math.inf)
            if float(data["formula_score"][i]) > best:
                found.append(Label(source, data["formula"][i], "formula", float(data["formula_score"][i]), rank=-1))
    return sorted(found, key=lambda x: (list(SOURCES).index(x.source), x.rank))


def concept_set_record(name: str, names: list[str], categories: list[str]) -> dict:
    """The attributes naming a concept set: its name and the sha256 of its (name, category) list."""
    import hashlib
    text = json.dumps(list(zip(names, categories)), ensure_ascii=False)
    return {"concept_set": name, "concept_set_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "concepts": len(names)}
