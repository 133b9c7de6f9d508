"""The website's packed data (atlas.website.packs): unit packs, thumbnail packs and strips, made from the
atlas through the reader's bulk calls, each kept when its ``source`` digest says nothing it was made
from has changed. Worker processes build the packs (``PackBuilder``, one per process)."""
from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..format import DATASET, PICTURE_LABELS, PICTURES, RELATED, unit_id, unit_runs
from ..images import ImageError, load_rgb
from ..labels import label_file
from ..maps import map_file
from ..media import (PICTURE_EFFORT, PICTURE_QUALITY, THUMB_EFFORT, THUMB_QUALITY, TILE_EFFORT, TILE_QUALITY, model_view,
                     quantize_map, webp)
from ..reader import Atlas, ShardData
from .collect import strongest_units
from .packs import DATA, PACK_UNITS, THUMB_ROWS, PackError, build_record, read_header, thumb_pack_path, \
    unit_pack_path, write_pack
from .urls import THUMB_SIZE, TILE_SIZE, view_key, write_if_changed

RECORD_VERSION = 1           # bump when what a record holds changes: every pack is rebuilt
THUMB_VERSION = 2            # bump when how thumbnails are made changes (2: timm's own eval transform, one resampling)
TOPK_MAP_BITS = 4            # the top images' maps: 16 levels (the exact values are in the shards)
STRIP_UNITS = 10             # strongest units per layer in the strips (model pages)
SCRIPT_SUFFIX = ".js"        # a pack's script twin, for pages opened from disk


def finite(x) -> float | None:
    """A float for JSON, exactly: NaN and inf become None (shown as '–')."""
    x = float(x)
    return x if np.isfinite(x) else None


def short(x) -> float | None:
    """A float32 for JSON in the fewest digits that give back the same float32 (``finite`` otherwise):
    for the numbers a record shows but nobody compares to the last bit (losses, correlations, stats)."""
    x = np.float32(x)
    return float(np.format_float_positional(x, unique=True, trim="-")) if np.isfinite(x) else None


def digest(*parts) -> str:
    """sha256 of the JSON of ``parts``: a pack's ``source``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(a: Atlas, name: str) -> str | None:
    """The manifest's sha256 of a data file (``dataset.h5``, ``related.h5``), hashed when unlisted."""
    entry = next((e for e in (a.manifest or {}).get("files", []) if e["path"] == name), None)
    if entry:
        return entry["sha256"]
    path = a.root / name
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@dataclass(frozen=True)
class UnitPackJob:
    """One unit pack to make: units [PACK_UNITS·page, PACK_UNITS·(page+1)) of a layer, from ``shards``."""
    model: str
    site: str
    layer: int
    page: int
    shards: tuple[str, ...]
    source: str
    layer_info: dict
    count: int                      # units it holds

    @property
    def path(self) -> str:
        return unit_pack_path(self.model, self.site, self.layer, self.page * PACK_UNITS)


@dataclass(frozen=True)
class ThumbPackJob:
    """One thumbnail pack to make: the dataset ``rows`` of one bucket, as model view ``view`` sees them."""
    view: str
    bucket: int
    rows: tuple[int, ...]
    data_config: dict
    source: str

    @property
    def path(self) -> str:
        return thumb_pack_path(self.view, self.bucket * THUMB_ROWS)


def existing_source(path: Path) -> str | None:
    """The ``source`` digest of the pack at ``path``, or None when there is none or it is damaged (its
    header unreadable, or the file not as long as its header says: a write cut short)."""
    try:
        with open(path, "rb") as f:
            header = read_header(f.read(1 << 20))
            size = f.seek(0, 2)
    except (OSError, PackError):
        return None
    return header.get("source") if size == header["start"] + sum(header["lengths"]) else None


def layer_info(a: Atlas, model: str, site: str, layer: int, summ) -> dict:
    """What the unit view needs of a layer besides each unit's record (every unit pack carries it)."""
    attrs = a.shard_attrs(model, layer, site)
    probed = next((ref for ref in summ.shards if "probe" in ref.parts), None)
    models = (a.manifest or {}).get("models") or a.models_info
    info = (models.get(model, {}).get("sites", {}).get(site, {}).get(f"{layer:02d}", {}))
    parts = {}
    for part in PICTURES:
        if part in attrs:
            rec = attrs[part].get("recipe") or attrs.get("recipe") or {}
            parts[part] = {"label": PICTURE_LABELS.get(part, part), "recipe": rec,
                           "seed": attrs[part].get("seed", attrs.get("seed")),
                           "loss_steps": list(attrs[part].get("loss_steps", []))}
    probe = attrs.get("probe")
    return {"model": model, "site": site, "layer": layer, "arch": attrs.get("arch"), "weights": attrs.get("weights"),
            "module": attrs.get("module"), "grid": attrs.get("grid"), "image_size": attrs.get("image_size"),
            "sae": attrs.get("sae"),
            "width": info.get("units") or attrs.get("layer_units"),
            "runs": [list(r) for r in unit_runs([int(u) for u in summ.units])], "parts": parts,
            "probe": None if not probe or probed is None else {
                "k": probe.get("k"), "images": probe.get("images"), "precision": probe.get("precision"),
                "view": view_key(probe["data_config"]), "thresholds": probe.get("flag_thresholds"),
                "hist_edges": [float(x) for x in a.shard_data(probed).stats["hist_edges"]]}}


def label_record(a: Atlas, model: str, site: str) -> dict | None:
    """What the unit view says of a site's label sources (each one's score, concept set and its sha256; the
    label file's sha256 makes a changed labelling remake the packs), None without labels."""
    sources = a.label_sources(model, site)
    if not sources:
        return None
    keep = ("score", "concept_set", "concept_set_sha256", "concepts", "quantile", "iou_threshold", "model", "images")
    return {"file": file_sha256(a, label_file(model, site)),
            "sources": {name: {k: data["attrs"][k] for k in keep if k in data["attrs"]} for name, data in sources.items()}}


class PackBuilder:
    """Makes packs of one atlas into one website (a worker process holds one)."""

    def __init__(self, root: Path, site_dir: Path, skip: frozenset[str], images_root: Path | None, offline: bool,
                 recorded: dict[str, str] | None = None):
        self.atlas = Atlas(root, skip)
        self.site_dir, self.images_root, self.offline = site_dir, images_root, offline
        self.recorded = recorded or {}       # what the last render wrote: path -> sha256 (atlas.website.listing)
        self.dataset = self.atlas.dataset if self.atlas.has_dataset else None

    def _kept(self, rel: str, source: str) -> bool:
        """Whether the pack at ``rel`` can stay as it is: its header's source digest is ``source`` and its
        bytes still hash to what the last render recorded (a pack damaged or edited since is made again);
        its script twin is brought in line with it."""
        target = self.site_dir / rel
        if rel not in self.recorded or existing_source(target) != source:
            return False
        data = target.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.recorded[rel]:
            return False
        if self.offline:
            write_if_changed(_twin(target), script_twin(rel, data))
        return True

    # -- unit packs ------------------------------------------------------------------------------

    def unit_pack(self, job: UnitPackJob) -> int:
        """Write (or keep, when its source is unchanged) one unit pack; returns how many units it holds."""
        if self._kept(job.path, job.source):
            return -1
        self._write(self.site_dir / job.path, self.make_unit_pack(job))
        return job.count

    def make_unit_pack(self, job: UnitPackJob) -> bytes:
        """The bytes of one unit pack, made from the atlas (what `verify` compares a website's pack with)."""
        refs = [r for r in self.atlas.shards(job.model, job.site, job.layer) if r.path in job.shards]
        lo, hi = job.page * PACK_UNITS, (job.page + 1) * PACK_UNITS
        units, records, tiles = [], [], {part: [] for part in PICTURES}
        for ref in refs:
            sd = self.atlas.shard_data(ref)
            pictures = {part: sd.picture(part) for part in PICTURES if part in ref.parts}
            for r, u in enumerate(sd.units.tolist()):
                if not lo <= u < hi:
                    continue
                units.append(u)
                record, unit_tiles = self.record(sd, r, pictures)
                records.append(record)
                for part in PICTURES:
                    tiles[part].append(unit_tiles.get(part))
        order = np.argsort(units, kind="stable")
        units = [units[i] for i in order]
        items, header_tiles = [], {}
        for part in PICTURES:
            column = [tiles[part][i] for i in order]
            if any(t is not None for t in column):
                header_tiles[part] = []
                for t in column:
                    header_tiles[part].append(len(items) if t is not None else -1)
                    if t is not None:
                        items.append(t)
        first_record = len(items)
        items += [records[i] for i in order]
        header = {"kind": "units", "format": RECORD_VERSION, "source": job.source, "layer": job.layer_info,
                  "units": units, "tiles": header_tiles, "records": list(range(first_record, len(items)))}
        return write_pack(header, items)

    def record(self, sd: ShardData, r: int, pictures: dict) -> tuple[bytes, dict[str, bytes]]:
        """One unit's record (atlas.website.packs) and its tiles by picture part."""
        ref, u = sd.ref, int(sd.units[r])
        model, site, layer = sd.attrs["model"], sd.attrs["site"], int(sd.attrs["layer"])
        meta = {"id": unit_id(model, site, layer, u), "unit": u, "shard": ref.path, "row": r, "pictures": []}
        blobs, tiles = {}, {}
        for part, rows in pictures.items():
            image = rows.image[r]
            small = max(image.shape[:2]) <= TILE_SIZE
            tiles[part] = webp(image, TILE_SIZE, *((PICTURE_QUALITY, PICTURE_EFFORT) if small else (TILE_QUALITY, TILE_EFFORT)))
            if not small:
                blobs[f"{part}/image"] = webp(image)
            amap = rows.map[r].astype(np.float32)
            scale = float(np.nanmax(amap)) if amap.size and np.isfinite(amap).any() else 0.0
            blobs[f"{part}/map"] = quantize_map(amap, scale)
            meta["pictures"].append({"part": part, "activation": finite(rows.activation[r]), "seed": int(rows.seed[r]),
                                     "loss": [short(x) for x in rows.loss[r]], "map_scale": finite(scale),
                                     "image_is_tile": small})
        if sd.probed:
            meta["probe"] = self.probe_meta(sd, r, blobs)
        meta["related"] = [[x.scope, x.id, short(x.corr)] for x in self.atlas.related_units(model, site, layer, u)]
        found = self.atlas.layer_map(model, site, layer)
        meta["map"] = found.position(u) if found is not None else None
        meta["labels"] = [[x.source, x.concept, x.category, short(x.score), x.rank,
                           short(x.p_value) if x.p_value is not None else short(x.threshold) if x.threshold is not None
                           else None] for x in self.atlas.unit_labels(model, site, layer, u)]
        return build_record(meta, blobs), tiles

    def probe_meta(self, sd: ShardData, r: int, blobs: dict) -> dict:
        """The probe's part of a record: top images (rows, scores, paths, classes, maps), statistics,
        flags and the classes of the top images."""
        index, score = sd.topk_index[r], sd.topk_score[r]
        keep = index >= 0
        rows = [int(i) for i in index[keep]]
        maps = sd.topk_map[r][keep].astype(np.float32)
        scale = float(np.nanmax(maps)) if maps.size and np.isfinite(maps).any() else 0.0
        blobs["topk/maps"] = quantize_map(maps, scale, TOPK_MAP_BITS)
        d = self.dataset
        labels = [int(d.labels[i]) for i in rows] if d else []
        hist = sd.stats["hist"][r]
        values, _ = sd.flag_values
        cls = int(values["class"][r])
        return {"topk": [[i, finite(s)] for i, s in zip(rows, score[keep])],
                "paths": [d.paths[i] for i in rows] if d else [],
                "classes": [d.class_name(x) for x in labels] if d else [],
                "maps_scale": finite(scale), "maps_bits": TOPK_MAP_BITS,
                "top_classes": [[d.class_name(c), n] for c, n in Counter(x for x in labels if x >= 0).most_common(5)]
                if d else [],
                "stats": {"mean": short(sd.stats["mean"][r]), "max": finite(sd.stats["max"][r]),
                          "positive": short(sd.stats["positive"][r]), "images": int(hist.sum()),
                          "hist": [[int(b), int(hist[b])] for b in np.flatnonzero(hist)]},
                "flags": {"names": sd.flags[r], "class": cls, "class_name": d.class_name(cls) if d and cls >= 0 else None,
                          "class_share": short(values["class_share"][r]), "extent": short(values["extent"][r]),
                          "concentration": short(values["concentration"][r])}}

    # -- thumbnails ------------------------------------------------------------------------------

    def thumb_pack(self, job: ThumbPackJob) -> tuple[int, list[int]]:
        """Write (or keep) one thumbnail pack; returns (rows done, rows whose image could not be read)."""
        if self._kept(job.path, job.source):
            return len(job.rows), []
        data, missing = self.make_thumb_pack(job)
        self._write(self.site_dir / job.path, data)
        return len(job.rows), missing

    def make_thumb_pack(self, job: ThumbPackJob) -> tuple[bytes, list[int]]:
        """The bytes of one thumbnail pack, and the rows whose image could not be read."""
        rows, items, missing = [], [], []
        for row in job.rows:
            try:
                view = model_view(load_rgb(self.images_root / self.dataset.paths[row]), job.data_config, THUMB_SIZE)
            except (ImageError, OSError):
                missing.append(row)
                continue
            rows.append(row)
            items.append(webp(view, None, THUMB_QUALITY, THUMB_EFFORT))
        header = {"kind": "thumbs", "format": RECORD_VERSION, "source": job.source, "view": job.view,
                  "first": job.bucket * THUMB_ROWS, "rows": rows}
        return write_pack(header, items), missing

    def _write(self, target: Path, data: bytes) -> None:
        write_if_changed(target, data)
        if self.offline:
            write_if_changed(_twin(target), script_twin(target.relative_to(self.site_dir).as_posix(), data))


def _twin(path: Path) -> Path:
    return path.with_name(path.name + SCRIPT_SUFFIX)


def script_twin(rel: str, data: bytes) -> str:
    """A pack as a script (for pages opened from disk, where browsers refuse fetch()): it hands the
    pack's bytes, base64, to ``AtlasPacks.add`` under its website-relative path."""
    return f"AtlasPacks.add({json.dumps(rel)}, \"{base64.b64encode(data).decode()}\");\n"


def unit_pack_jobs(a: Atlas, summaries: dict) -> list[UnitPackJob]:
    """One job per unit pack of every layer, with the digest of what it is made from: the shards of its
    units (their sha256 in the manifest), related.h5, dataset.h5, the layer's metadata, the qualities."""
    entries = {e["path"]: e.get("sha256") for e in a.shard_entries}
    shared = (RECORD_VERSION, TOPK_MAP_BITS, PICTURE_QUALITY, PICTURE_EFFORT, TILE_QUALITY, TILE_EFFORT, TILE_SIZE,
              file_sha256(a, RELATED), file_sha256(a, DATASET))
    jobs = []
    for (m, s, layer), summ in summaries.items():
        info = {**layer_info(a, m, s, layer, summ), "labels": label_record(a, m, s),
                "map": file_sha256(a, map_file(m, s))}       # a new map remakes the packs (records hold positions)
        for page in sorted({int(u) // PACK_UNITS for u in summ.units}):
            lo, hi = page * PACK_UNITS, (page + 1) * PACK_UNITS
            refs = tuple(r.path for r in summ.shards if r.unit_start < hi and r.unit_stop > lo)
            source = digest(shared, info, [(p, entries.get(p)) for p in refs])
            count = int(((summ.units >= lo) & (summ.units < hi)).sum())
            jobs.append(UnitPackJob(m, s, layer, page, refs, source, info, count))
    return jobs


def thumb_pack_jobs(a: Atlas, summaries: dict) -> list[ThumbPackJob]:
    """One job per thumbnail pack: for each model view, the dataset rows some unit shows, by bucket."""
    if not a.has_dataset:
        return []
    used: dict[str, set[int]] = {}
    configs: dict[str, dict] = {}
    for (m, s, layer), summ in summaries.items():
        probe = a.shard_attrs(m, layer, s).get("probe")
        if not probe:
            continue
        key = view_key(probe["data_config"])
        configs[key] = probe["data_config"]
        for ref in summ.shards:
            if "probe" in ref.parts:
                index = a.shard_data(ref).topk_index
                used.setdefault(key, set()).update(int(i) for i in np.unique(index) if i >= 0)
    paths = a.dataset.attrs.get("paths_sha256")
    jobs = []
    for key in sorted(used):
        buckets: dict[int, list[int]] = {}
        for row in sorted(used[key]):
            buckets.setdefault(row // THUMB_ROWS, []).append(row)
        for bucket, rows in sorted(buckets.items()):
            source = digest(THUMB_VERSION, THUMB_SIZE, THUMB_QUALITY, THUMB_EFFORT, configs[key], paths, rows)
            jobs.append(ThumbPackJob(key, bucket, tuple(rows), configs[key], source))
    return jobs


def strips_pack(read_pack, model: str, layers: list[tuple[str, int, list[int], bool]]) -> tuple[str, bytes]:
    """``data/<model>/strips.pack``: the paper-picture tiles of each layer's strongest units, copied out of
    the unit packs (``read_pack(path) -> bytes``; nothing is encoded again), layer by layer; ``layers`` =
    (site, layer, units, featured). Featured layers' strongest tiles come first, together (the index
    page fetches them in one range). Returns the pack's website-relative path and its bytes."""
    headers: dict[str, tuple[dict, bytes]] = {}

    def tile(site: str, layer: int, u: int) -> bytes | None:
        rel = unit_pack_path(model, site, layer, u)
        if rel not in headers:
            data = read_pack(rel)
            headers[rel] = (read_header(data), data)
        header, data = headers[rel]
        part = "viz" if "viz" in header["tiles"] else next(iter(header["tiles"]), None)
        if part is None or u not in header["units"]:
            return None
        i = header["tiles"][part][header["units"].index(u)]
        if i < 0:
            return None
        o, n = header["items"][i]
        return data[o:o + n]

    items, featured, strips = [], [], []
    for site, layer, units, is_featured in layers:
        if is_featured and units:
            t = tile(site, layer, units[0])
            if t is not None:
                featured.append([site, layer, units[0], len(items)])
                items.append(t)
    for site, layer, units, _ in layers:
        entry = {"site": site, "layer": layer, "units": [], "items": []}
        for u in units:
            t = tile(site, layer, u)
            if t is not None:
                entry["units"].append(u)
                entry["items"].append(len(items))
                items.append(t)
        strips.append(entry)
    data = write_pack({"kind": "strips", "format": RECORD_VERSION, "model": model, "featured": featured,
                       "strips": strips}, items)
    return f"{DATA}/{model}/strips.pack", data


def strip_layers(summaries: dict) -> dict[str, list[tuple[str, int, list[int], bool]]]:
    """Per model, what its strips pack holds: (site, layer, its strongest units, featured), FFN layers
    first (they are the featured ones)."""
    by_model: dict[str, list] = {}
    for (m, s, layer), summ in sorted(summaries.items(), key=lambda kv: (kv[0][0], kv[0][1] != "ffn", kv[0])):
        units = [int(summ.units[i]) for i in strongest_units(summ, STRIP_UNITS)]
        by_model.setdefault(m, []).append((s, layer, units, s == "ffn"))
    return by_model


def pack_files(site_dir: Path) -> list[Path]:
    """Every pack file of a website."""
    base = site_dir / DATA
    return sorted(base.rglob("*.pack")) if base.is_dir() else []
