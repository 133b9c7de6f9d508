"""Checking a rendered website (`build.py verify`), as one mechanism:

1. every file in the website is one the render recorded (``.vit-atlas-website``, atlas.website.listing)
   with the sha256 it recorded; no file is missing, unlisted or a symbolic link; script twins hold
   exactly their pack (as ``script_twin`` writes it);
2. every pack parses and its index is consistent; every unit of the atlas has its record, in its own
   pack, under its own id;
3. every pack holds what the atlas's shards give: each is made again from the atlas, in memory, and
   compared item by item (records exactly; pictures, tiles and thumbnails by their pixels, within what
   two WebP encoders of the same pixels differ by), so a pack edited with its listing updated to match is
   still found.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..format import command
from ..images import ImageError
from ..manifest import sha256_file
from ..reader import Atlas
from .collect import summarize_layer
from .context import dataset_images
from .data import (SCRIPT_SUFFIX, PackBuilder, existing_source, script_twin, strip_layers, strips_pack, thumb_pack_jobs,
                   unit_pack_jobs)
from .listing import read_listing
from .packs import DATA, PACK_UNITS, THUMB_ROWS, PackError, item, read_header, read_record, unit_pack_path
from .urls import MARKER

PACK_LIST = f"{DATA}/packs.json"     # every pack of the website: bytes, sha256, source (written by render)
PIXEL_TOLERANCE = 4.0                # mean |difference| (of 255) between two encodings of the same picture


def check_website(root: Path, site_dir: Path) -> list[tuple[str, str]]:
    """(file, problem) pairs for the website at ``site_dir`` of the atlas at ``root``; empty when intact
    (or when there is no website)."""
    if not (site_dir / MARKER).is_file():
        return []
    shown = lambda rel: f"{site_dir.name}/{rel}"    # noqa: E731
    listing = read_listing(site_dir)
    if listing is None:
        return [(shown(MARKER), "records no files: the website was rendered before format 1.8, or someone "
                                f"edited its record; run `{command('render')}` again")]
    problems = [(shown(rel), why) for rel, why in _check_files(site_dir, listing)]
    if problems:
        return problems          # the contents of files that are not what the render wrote are not worth reading
    try:
        listed = json.loads((site_dir / PACK_LIST).read_text(encoding="utf-8")) if PACK_LIST in listing else {}
    except (OSError, ValueError, RecursionError) as e:
        return [(shown(PACK_LIST), f"not JSON ({str(e)[:80]})")]
    if not isinstance(listed, dict) or not set(listed) <= set(listing):
        return [(shown(PACK_LIST), "lists packs the render did not record")]
    units_seen: dict = {}
    for path in sorted(listed):
        data = (site_dir / path).read_bytes()
        try:
            problems += [(shown(path), p) for p in _check_pack(path, read_header(data), data, units_seen)]
        except PackError as e:
            problems.append((shown(path), str(e)))
    with Atlas(root) as a:
        for m in a.models:
            for s in a.sites(m):
                for layer in a.layers(m, s):
                    for ref in a.shards(m, s, layer):
                        for u in range(ref.unit_start, ref.unit_stop):
                            if (m, s, layer, u) not in units_seen:
                                problems.append((shown(unit_pack_path(m, s, layer, u)),
                                                 f"holds no record of unit {m}/{s}/L{layer:02d}/U{u:04d}"))
                                break
    if not problems:
        problems += [(shown(rel), why) for rel, why in _check_contents(root, site_dir, set(listed))]
    return problems


def _check_files(site_dir: Path, listing: dict[str, str]) -> list[tuple[str, str]]:
    """Files missing, unlisted, changed or links; script twins that are not exactly their pack."""
    problems, on_disk = [], set()
    for folder, dirs, files in os.walk(site_dir):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(site_dir).as_posix()
            if path.is_symlink():
                problems.append((rel, "a symbolic link: a website holds only the files its render wrote"))
            elif name in files and rel != MARKER:
                on_disk.add(rel)
    problems += [(rel, "not written by the render (not in its record): remove it, or render again")
                 for rel in sorted(on_disk - set(listing))]
    problems += [(rel, "missing (the render recorded it)") for rel in sorted(set(listing) - on_disk)]
    for rel in sorted(on_disk & set(listing)):
        if sha256_file(site_dir / rel) != listing[rel]:
            problems.append((rel, "its sha256 differs from the render's record (changed or damaged)"))
        elif rel.endswith(".pack" + SCRIPT_SUFFIX):
            pack = rel[:-len(SCRIPT_SUFFIX)]
            if not (site_dir / pack).is_file() or \
                    (site_dir / rel).read_bytes() != script_twin(pack, (site_dir / pack).read_bytes()).encode():
                problems.append((rel, "its script twin is not exactly its pack as a script"))
    return problems


def _check_pack(path: str, header: dict, data: bytes, units_seen: dict) -> list[str]:
    items = header["items"]
    if any(not (isinstance(o, int) and isinstance(n, int) and o >= 0 and o + n <= len(data)) for o, n in items):
        return ["an item lies outside the pack"]
    if header.get("kind") == "thumbs":
        rows, first = header.get("rows", []), header.get("first", -1)
        if len(rows) != len(items) or rows != sorted(rows) or any(not first <= r < first + THUMB_ROWS for r in rows):
            return ["its thumbnail rows do not match its items or its bucket"]
        return []
    if header.get("kind") == "strips":
        return []
    units, records, info = header.get("units", []), header.get("records", []), header.get("layer", {})
    problems = []
    if len(records) != len(units) or units != sorted(units):
        problems.append("its units and records do not match")
    if unit_pack_path(info.get("model"), info.get("site"), int(info.get("layer", -1)), units[0] if units else 0) != path:
        problems.append("its layer and units do not belong at its path")
    for part, column in header.get("tiles", {}).items():
        if len(column) != len(units) or any(i >= len(items) for i in column):
            problems.append(f"its {part} tiles do not match its units")
    for u, i in zip(units, records):
        if not units[0] // PACK_UNITS == u // PACK_UNITS:
            problems.append(f"unit {u} does not belong in this pack")
            continue
        o, n = items[i]
        try:
            meta, _ = read_record(data[o:o + n])
        except PackError as e:
            problems.append(f"the record of unit {u}: {e}")
            continue
        uid = f"{info['model']}/{info['site']}/L{int(info['layer']):02d}/U{u:04d}"
        if meta.get("id") != uid:
            problems.append(f"the record of unit {u} is that of {meta.get('id')!r}")
        units_seen[(info["model"], info["site"], int(info["layer"]), u)] = path
    return problems


# -- contents against the shards --------------------------------------------------------------------

def _check_contents(root: Path, site_dir: Path, packs: set[str]) -> list[tuple[str, str]]:
    """Every pack of the website made again from the atlas and compared with the website's."""
    skip = frozenset(Atlas(root).damaged_shards())       # the render left these out too
    builder = PackBuilder(root, site_dir, skip, None, False)
    a = builder.atlas
    summaries = {(m, s, layer): summarize_layer(a, m, s, layer)
                 for m in a.models for s in a.sites(m) for layer in a.layers(m, s)}
    problems, made = [], {}
    for job in unit_pack_jobs(a, summaries):
        made[job.path] = builder.make_unit_pack(job)
    for m, layers in strip_layers(summaries).items():
        rel, data = strips_pack(made.__getitem__, m, layers)
        made[rel] = data
    if builder.dataset is not None:
        builder.images_root = dataset_images(root, builder.dataset)
        if builder.images_root.is_dir():      # thumbnails are checked where the dataset's images are at hand
            for job in thumb_pack_jobs(a, summaries):
                data, missing = builder.make_thumb_pack(job)
                if not missing:
                    made[job.path] = data
    problems += [(rel, "missing: the atlas has this pack's units") for rel in sorted(set(made) - packs)]
    for rel in sorted(set(made) & packs):
        have = (site_dir / rel).read_bytes()
        why = compare_packs(have, made[rel])
        if why:
            stale = existing_source(site_dir / rel) != read_header(made[rel]).get("source")
            problems.append((rel, f"{why}: it does not hold what the atlas's shards give (" +
                             ("made from another state of the atlas" if stale else "edited or damaged") +
                             f"; `{command('render')}` makes it again)"))
    return problems


def compare_packs(have: bytes, want: bytes) -> str | None:
    """None when the pack ``have`` holds what ``want`` (made from the atlas) holds; else what differs.
    Records and maps must be equal; pictures may differ by what two WebP encoders of the same pixels do."""
    if have == want:
        return None
    try:
        h, w = read_header(have), read_header(want)
    except PackError as e:
        return str(e)
    # the source digest says what a pack was made from, not what it holds: a pack made before an edit that
    # changed nothing it shows (a moved dataset folder) still holds what the shards give
    plain = lambda header: {k: v for k, v in header.items() if k not in ("start", "lengths", "items", "source")}  # noqa: E731
    if plain(h) != plain(w) or len(h["items"]) != len(w["items"]):
        return "its header differs"
    records = set(w.get("records", []))
    for i in range(len(w["items"])):
        try:
            a, b = item(have, h, i), item(want, w, i)
        except PackError as e:
            return str(e)
        if a == b:
            continue
        if i not in records:
            if not _same_picture(a, b):
                return f"picture {i} differs"
            continue
        try:
            (ma, _), (mb, _) = read_record(a), read_record(b)
        except PackError as e:
            return str(e)
        if {k: v for k, v in ma.items() if k != "blobs"} != {k: v for k, v in mb.items() if k != "blobs"} \
                or set(ma.get("blobs", {})) != set(mb["blobs"]):
            return f"the record of {mb.get('id')} differs"
        for name, (o, n) in mb["blobs"].items():
            oa, na = ma["blobs"][name]
            blob_a, blob_b = a[oa:oa + na], b[o:o + n]
            if blob_a != blob_b and (not name.endswith("/image") or not _same_picture(blob_a, blob_b)):
                return f"the {name} of {mb.get('id')} differs"
    return None


def _same_picture(a: bytes, b: bytes) -> bool:
    """Whether two encoded pictures show the same pixels, up to encoder differences."""
    try:
        pa, pb = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), np.float32) for x in (a, b))
    except (OSError, ValueError, ImageError, Image.DecompressionBombError):
        return False
    return pa.shape == pb.shape and float(np.abs(pa - pb).mean()) <= PIXEL_TOLERANCE
