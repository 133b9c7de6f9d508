"""Checking a rendered website's packs (`build.py verify`): every pack listed in ``data/packs.json`` is
there with its size and sha256, parses, and its index is consistent; every unit of the atlas has its
record, in its own pack, under its own id; script twins hold the same bytes as their packs."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from ..reader import Atlas
from .packs import DATA, PACK_UNITS, THUMB_ROWS, PackError, read_header, read_record, unit_pack_path
from .urls import MARKER

PACK_LIST = f"{DATA}/packs.json"     # every pack of the website: bytes, sha256, source (written by render)


def check_website(root: Path, site_dir: Path) -> list[tuple[str, str]]:
    """(file, problem) pairs for the website at ``site_dir`` of the atlas at ``root``; empty when intact
    (or when there is no website)."""
    if not (site_dir / MARKER).is_file():
        return []
    rel = lambda p: p.relative_to(root).as_posix() if root in p.parents else str(p)  # noqa: E731
    listed_path = site_dir / PACK_LIST
    if not listed_path.is_file():
        return [(rel(listed_path), "missing: the website was rendered before format 1.4, or its render was "
                                   "killed; run `build.py render` again")]
    try:
        listed = json.loads(listed_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [(rel(listed_path), f"not JSON ({e})")]
    problems, units_seen = [], {}
    on_disk = {p.relative_to(site_dir).as_posix() for p in (site_dir / DATA).rglob("*.pack")}
    problems += [(f"site/{p}", "a pack not listed in data/packs.json (render again)") for p in sorted(on_disk - set(listed))]
    for path, entry in sorted(listed.items()):
        file = site_dir / path
        if not file.is_file():
            problems.append((f"site/{path}", "missing (listed in data/packs.json)"))
            continue
        data = file.read_bytes()
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            problems.append((f"site/{path}", "size or sha256 differs from data/packs.json (changed or damaged)"))
            continue
        try:
            header = read_header(data)
            problems += [(f"site/{path}", p) for p in _check_pack(path, header, data, units_seen)]
        except PackError as e:
            problems.append((f"site/{path}", str(e)))
        twin = file.with_name(file.name + ".js")
        if twin.is_file():
            text = twin.read_text(encoding="utf-8")
            start = text.find('", "') + 4
            if base64.b64decode(text[start:text.rfind('"')]) != data:
                problems.append((f"site/{path}.js", "its script twin does not hold the pack's bytes"))
    with Atlas(root) as a:
        for m in a.models:
            for s in a.sites(m):
                for layer in a.layers(m, s):
                    for ref in a.shards(m, s, layer):
                        for u in range(ref.unit_start, ref.unit_stop):
                            if (m, s, layer, u) not in units_seen:
                                problems.append((f"site/{unit_pack_path(m, s, layer, u)}",
                                                 f"holds no record of unit {m}/{s}/L{layer:02d}/U{u:04d}"))
                                break
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
