"""Packs: the website's per-unit data, in few files read by HTTP range requests (docs/FORMAT.md "Website").

A pack is one file: an 8-byte magic, a little-endian u32 header length, the header (UTF-8 JSON), then
items one after the other. The header says where they lie (``start``, the first one's offset, and
``lengths``), so a browser reads the first ``HEAD_BYTES`` of a pack (the header, usually with the start
of the tiles), then exactly the ranges it needs. Kinds:

- unit packs, ``data/<model>/<site>/L<ll>/P<pppp>.pack``: the units [256·p, 256·(p+1)) of a layer (one
  layer page); header ``{"kind": "units", "layer": {...}, "units": [...], "records": [[o, n], ...],
  "tiles": {part: [[o, n], ...]}, "source": digest}``; the tiles of each picture part lie together (a
  layer page fetches them in one range), then one record per unit (``record``);
- thumbnail packs, ``data/thumbs/<view>/T<tttt>.pack``: the dataset thumbnails of rows
  [512·t, 512·(t+1)) that some unit shows; header ``{"kind": "thumbs", "first", "rows", ...}``;
- strips packs, ``data/<model>/strips.pack``: tiles of each layer's strongest units.

A pack's address is computed from a unit id or a dataset row alone, so no index that grows with the
atlas is ever fetched. ``source`` is a digest of everything a pack was made from: a render keeps a pack
whose digest is unchanged without reading its shards.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..format import UNIT_ID, UNIT_ID_TEMPLATE, fill

MAGIC = b"VITPACK1"
HEAD_BYTES = 32 * 1024          # what a reader fetches first of a unit pack: the header and, usually, the first tiles
THUMB_HEAD_BYTES = 8 * 1024     # ... of a thumbnail pack: its header
PACK_UNITS = 256                # units per unit pack (one layer page)
THUMB_ROWS = 512                # dataset rows per thumbnail pack (its header fits in THUMB_HEAD_BYTES)
DATA = "data"                   # the packs' folder in the website (or at --data-url)
UNIT_PACK = DATA + "/{model}/{site}/L{layer:2}/P{pack:4}.pack"     # templates (atlas.format.fill) the pages'
THUMB_PACK = DATA + "/thumbs/{view}/T{bucket:4}.pack"              # script fills too (``layout``)


def unit_pack_path(model: str, site: str, layer: int, unit: int) -> str:
    """Website-relative path of the unit pack holding ``unit``."""
    return fill(UNIT_PACK, model=model, site=site, layer=layer, pack=unit // PACK_UNITS)


def thumb_pack_path(view: str, row: int) -> str:
    """Website-relative path of the thumbnail pack holding dataset ``row`` in model view ``view``."""
    return fill(THUMB_PACK, view=view, bucket=row // THUMB_ROWS)


def layout() -> dict:
    """What the pages' script needs to find any unit's data from its id alone (base.html hands it over)."""
    return {"head": HEAD_BYTES, "thumb_head": THUMB_HEAD_BYTES, "pack_units": PACK_UNITS, "thumb_rows": THUMB_ROWS,
            "unit_pack": UNIT_PACK, "thumb_pack": THUMB_PACK, "unit_id": UNIT_ID_TEMPLATE,
            "unit_id_pattern": UNIT_ID.pattern.replace("(?P<", "(?<"), "magic": MAGIC.decode()}


def build_record(meta: dict, blobs: dict[str, bytes]) -> bytes:
    """A record whose JSON has a ``blobs`` map name -> [offset, length] (from the record's start) for
    the named ``blobs``. Offsets depend on the JSON's own length: iterate until they are stable."""
    names = list(blobs)
    layout = {name: [0, len(blobs[name])] for name in names}
    for _ in range(8):
        body = json.dumps({**meta, "blobs": layout}, separators=(",", ":"), allow_nan=False).encode()
        at, new = 4 + len(body), {}
        for name in names:
            new[name] = [at, len(blobs[name])]
            at += len(blobs[name])
        if new == layout:
            return struct.pack("<I", len(body)) + body + b"".join(blobs[n] for n in names)
        layout = new
    raise RuntimeError("record layout did not settle")   # cannot happen: lengths grow by digits only


def write_pack(header: dict, items: list[bytes]) -> bytes:
    """A pack's bytes: magic, header length, header JSON, items. The items lie one after the other:
    ``header`` gets ``start`` (the absolute offset of the first) and ``lengths`` (each one's), which is
    all a reader needs to find item i (``start`` plus the lengths before it)."""
    lengths = [len(x) for x in items]
    body = b""
    for _ in range(8):     # the start depends on the header's own length: iterate until it settles
        start = len(MAGIC) + 4 + len(body)
        new = json.dumps({**header, "start": start, "lengths": lengths}, separators=(",", ":"), allow_nan=False).encode()
        if len(new) == len(body):
            return MAGIC + struct.pack("<I", len(new)) + new + b"".join(items)
        body = new
    raise RuntimeError("pack layout did not settle")


class PackError(ValueError):
    """A pack that is not of the format."""


def read_header(data: bytes) -> dict:
    """A pack's header, from its first bytes (at least ``12 + header length``)."""
    if data[:len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + 4:
        raise PackError("not a pack (no VITPACK1 magic)")
    (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    if len(data) < len(MAGIC) + 4 + n:
        raise PackError(f"its header is {n} bytes but only {len(data) - len(MAGIC) - 4} are there")
    try:
        header = json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise PackError(f"its header is not JSON ({e})") from None
    lengths = header.get("lengths") if isinstance(header, dict) else None
    if not isinstance(lengths, list) or not isinstance(header.get("start"), int) or \
            not all(isinstance(n, int) and n >= 0 for n in lengths):
        raise PackError("its header has no item lengths")
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]) + header["start"]
    header["items"] = [[int(o), int(n)] for o, n in zip(offsets[:-1], lengths)]   # absolute [offset, length]
    return header


def read_pack(path: Path) -> tuple[dict, bytes]:
    """(header, bytes) of the pack file at ``path``."""
    data = Path(path).read_bytes()
    return read_header(data), data


def item(data: bytes, header: dict, i: int) -> bytes:
    """Item ``i`` of a pack."""
    offset, length = header["items"][i]
    if offset < 0 or offset + length > len(data):
        raise PackError(f"item {i} at {offset}+{length} lies outside the pack's {len(data)} bytes")
    return data[offset:offset + length]


def read_record(data: bytes) -> tuple[dict, bytes]:
    """(meta, record bytes) of a unit record; blobs are ``data[o:o+n]`` for meta["blobs"][name]."""
    if len(data) < 4:
        raise PackError("a record shorter than its length field")
    (n,) = struct.unpack("<I", data[:4])
    try:
        meta = json.loads(data[4:4 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise PackError(f"a record whose JSON does not parse ({e})") from None
    for name, (o, length) in meta.get("blobs", {}).items():
        if o < 4 + n or o + length > len(data):
            raise PackError(f"record blob {name} lies outside the record")
    return meta, data


def read_unit(site_dir: Path, model: str, site: str, layer: int, unit: int) -> tuple[dict, dict, bytes]:
    """(layer header, record meta, record bytes) of one unit of a rendered website, read the way the
    browser reads it; PackError when its pack holds no record of it."""
    header, data = read_pack(Path(site_dir) / unit_pack_path(model, site, layer, unit))
    if unit not in header["units"]:
        raise PackError(f"{unit_pack_path(model, site, layer, unit)} holds no record of unit {unit}")
    meta, record = read_record(item(data, header, header["records"][header["units"].index(unit)]))
    return header, meta, record
