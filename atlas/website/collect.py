"""Collecting what the website's pages show, before anything is written: per-layer summaries read in
bulk through the reader (``Atlas.shard_data``), the atlas's description."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..format import PICTURES
from ..reader import Atlas
from .urls import PAGE_UNITS


@dataclass
class LayerSummary:
    """What layer pages, strips and search need of every unit of a layer, read in bulk."""
    model: str
    site: str
    layer: int
    units: np.ndarray          # unit indices present
    activation: np.ndarray     # the paper picture's activation (nan without viz)
    data_max: np.ndarray       # dataset max score (nan without probe)
    dead: np.ndarray           # bool
    top_class: list            # per unit: (class name, share of its top-k images) or None
    pictures: dict             # picture part -> bool [units]: which units have that picture
    flags: list                # per unit: the names of its flags (atlas.flags.FLAG_NAMES), [] without a probe
    extent: np.ndarray         # per unit: its spatial extent (nan without a probe)
    shards: list               # the layer's ShardInfo, by unit range
    labels: list = field(default_factory=list)   # per unit: its labels (atlas.labels.Label); [] for none at all

    def best_labels(self, i: int) -> list:
        """Unit ``i``'s best single concept from each label source (compositions left out)."""
        return [x for x in self.labels[i] if x.rank == 0] if self.labels else []

    def beats_dataset(self) -> tuple[int, int]:
        """(units whose optimized image activates them more than their best dataset image does,
        firing units having both numbers): how far the optimization got beyond the data."""
        both = np.isfinite(self.activation) & np.isfinite(self.data_max) & ~self.dead
        return int((self.activation[both] > self.data_max[both]).sum()), int(both.sum())

    def pages(self) -> list[int]:
        """The layer pages (1-based) that hold some of its units."""
        return sorted({int(u) // PAGE_UNITS + 1 for u in self.units})

    def on_page(self, page: int) -> np.ndarray:
        """Positions (into ``units``) of the units layer page ``page`` shows."""
        return np.flatnonzero(self.units // PAGE_UNITS == page - 1)


def summarize_layer(a: Atlas, model: str, site: str, layer: int) -> LayerSummary:
    """Bulk-read a layer's shards into a LayerSummary (no pictures are read)."""
    refs = a.shards(model, site, layer)
    units, act, dmax, dead, top, flags, extents = [], [], [], [], [], [], []
    pictures = {part: [] for part in PICTURES}
    names = a.dataset.class_names if a.has_dataset else []
    for ref in refs:
        sd = a.shard_data(ref)
        n = len(sd.units)
        units.append(sd.units)
        act.append(sd.activation("viz"))
        for part, has in pictures.items():
            has.append(np.full(n, part in ref.parts))
        if sd.probed:
            values, _ = sd.flag_values
            dmax.append(sd.stats["max"])
            dead.append(sd.stats["positive"] == 0)
            flags += sd.flags
            extents.append(values["extent"])
            top += [(names[int(c)], float(s)) if 0 <= int(c) < len(names) else None
                    for c, s in zip(values["class"], values["class_share"])]
        else:
            dmax.append(np.full(n, np.nan))
            dead.append(np.zeros(n, bool))
            top += [None] * n
            flags += [[] for _ in range(n)]
            extents.append(np.full(n, np.nan, np.float32))
    units = np.concatenate(units)
    labels = a.layer_labels(model, site, layer)
    return LayerSummary(model, site, layer, units, np.concatenate(act), np.concatenate(dmax),
                        np.concatenate(dead), top,
                        {part: np.concatenate(has) for part, has in pictures.items() if np.concatenate(has).any()},
                        flags, np.concatenate(extents), refs, [labels.get(int(u), []) for u in units])


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


def strongest(summ: LayerSummary) -> np.ndarray:
    """A layer's units, strongest first: by the optimized image's activation, else the dataset max."""
    strength = np.where(np.isfinite(summ.activation), summ.activation, summ.data_max)
    return np.argsort(-np.nan_to_num(strength, nan=-np.inf), kind="stable")


def strongest_units(summ: LayerSummary, n: int) -> list[int]:
    """Positions (into ``summ.units``) of a layer's ``n`` strongest units that have a picture."""
    has = np.zeros(len(summ.units), bool)
    for column in summ.pictures.values():
        has |= column
    return [int(i) for i in strongest(summ) if has[i]][:n]
