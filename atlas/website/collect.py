"""Collecting what the website shows, before anything is written: per-layer summaries read in bulk,
the atlas's description, the dataset thumbnails to make."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..flags import FLAG_NAMES, flag_values, flags_of
from ..format import PICTURES, AtlasError
from ..reader import Atlas
from .urls import view_key


@dataclass
class LayerSummary:
    """What layer pages, strips and search need of every unit of a layer, read in bulk."""
    model: str
    site: str
    layer: int
    units: np.ndarray          # unit indices present
    activation: np.ndarray     # optimized image's activation (nan without viz)
    data_max: np.ndarray       # dataset max score (nan without probe)
    dead: np.ndarray           # bool
    top_class: list            # (name, count, k) or None per unit
    shard_of: list             # (shard path, row) per unit
    pictures: dict             # picture part -> bool [units]: which units have that picture
    flags: list                # per unit: the names of its flags (atlas.flags.FLAG_NAMES), [] without a probe
    extent: np.ndarray         # per unit: its spatial extent (nan without a probe)

    def beats_dataset(self) -> tuple[int, int]:
        """(units whose optimized image activates them more than their best dataset image does,
        live units having both numbers): how far the optimization got beyond the data."""
        both = np.isfinite(self.activation) & np.isfinite(self.data_max) & ~self.dead
        return int((self.activation[both] > self.data_max[both]).sum()), int(both.sum())


def top_classes(indices: np.ndarray, labels: np.ndarray, names: list[str]) -> list[tuple[str, int]]:
    valid = indices[indices >= 0]
    if not len(valid) or not names:
        return []
    counts = Counter(int(labels[i]) for i in valid if labels[i] >= 0)
    return [(names[c], n) for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def summarize_layer(a: Atlas, model: str, site: str, layer: int) -> LayerSummary:
    """Bulk-read a layer's shards into a LayerSummary."""
    refs = a.shards(model, site, layer)
    units, act, dmax, dead, top, where = [], [], [], [], [], []
    pictures = {part: [] for part in PICTURES}
    flags, extents = [], []
    dataset = dataset_or_none(a)
    for ref in refs:
        f = a.file(ref.path)
        n = ref.unit_stop - ref.unit_start
        units.append(np.arange(ref.unit_start, ref.unit_stop))
        act.append(f["viz/activation"][()] if "viz" in ref.parts else np.full(n, np.nan))
        for part, has in pictures.items():
            has.append(np.full(n, part in ref.parts))
        if "probe" in ref.parts:
            dmax.append(f["stats/max"][()])
            dead.append(f["stats/positive"][()] == 0)
            index = f["topk/index"][()]
            positive = f["stats/positive"][()]
            if "flags/extent" in f:
                values = {n: f[f"flags/{n}"][()] for n in ("class", "class_share", "extent", "concentration")}
            else:  # an atlas from before stored flags: derived from its top-k data
                values = flag_values(index, f["topk/map"][()], dataset.labels if dataset else None)
            for r in range(n):
                on = flags_of({k: v[r] for k, v in values.items()}, float(positive[r]))
                flags.append([name for name in FLAG_NAMES if on[name]])
            extents.append(values["extent"])
            for row in index:
                classes = top_classes(row, dataset.labels, dataset.class_names) if dataset else []
                top.append((classes[0][0], classes[0][1], int((row >= 0).sum())) if classes else None)
        else:
            dmax.append(np.full(n, np.nan))
            dead.append(np.zeros(n, bool))
            top += [None] * n
            flags += [[] for _ in range(n)]
            extents.append(np.full(n, np.nan, np.float32))
        where += [(ref.path, r) for r in range(n)]
    return LayerSummary(model, site, layer, np.concatenate(units), np.concatenate(act), np.concatenate(dmax),
                        np.concatenate(dead), top, where,
                        {part: np.concatenate(has) for part, has in pictures.items() if np.concatenate(has).any()},
                        flags, np.concatenate(extents))


def dataset_or_none(a: Atlas):
    """The atlas's dataset index, None before any probe; a damaged one is an AtlasError."""
    return a.dataset if a.has_dataset else None


def atlas_info(a: Atlas) -> dict:
    """The atlas's name, version and description (manifest "atlas", with defaults)."""
    info = dict((a.manifest or {}).get("atlas") or {})
    info.setdefault("name", a.root.resolve().name)
    info.setdefault("version", "1")
    info.setdefault("description", "")
    info.setdefault("authors", [])
    info.setdefault("license", "")
    info.setdefault("url", "")
    return info


@dataclass(frozen=True)
class ThumbnailJob:
    """One dataset thumbnail to make: a dataset row as a model's eval transform sees it."""
    row: int
    source: str          # the image file
    target: str          # the thumbnail's path in the website
    data_config: dict    # the model's resize and crop


def thumbnail_jobs(a: Atlas, layer_attrs, images_root: Path | None, site_dir: Path) -> list[ThumbnailJob]:
    """One job per (view, dataset row) that some unit of a probed model shows; ``layer_attrs(model,
    site, layer)`` gives a layer's shard attributes."""
    dataset = dataset_or_none(a)
    if not dataset or images_root is None:
        return []
    used: dict[str, set[int]] = {}
    configs: dict[str, dict] = {}
    for m in a.models:
        for s in a.sites(m):
            for layer in a.layers(m, s):
                probe = layer_attrs(m, s, layer).get("probe")
                if not probe:
                    continue
                key = view_key(probe["data_config"])
                configs[key] = probe["data_config"]
                for ref in a.shards(m, s, layer):
                    if "probe" in ref.parts:
                        rows = np.unique(a.file(ref.path)["topk/index"][()])
                        used.setdefault(key, set()).update(int(i) for i in rows if i >= 0)
    return [ThumbnailJob(row, str(images_root / dataset.paths[row]), str(site_dir / f"img/data/{key}/{row}.webp"),
                         configs[key])
            for key in sorted(used) for row in sorted(used[key])]


def strongest(summ: LayerSummary) -> np.ndarray:
    """A layer's units, strongest first: by the optimized image's activation, else the dataset max."""
    strength = np.where(np.isfinite(summ.activation), summ.activation, summ.data_max)
    return np.argsort(-np.nan_to_num(strength, nan=-np.inf), kind="stable")
