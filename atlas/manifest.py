"""manifest.json: what an atlas holds, with the size and sha256 of every file (docs/FORMAT.md)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from pathlib import Path

from . import __version__
from .format import (ANALYSES, BLOCKS, DATA_PATH, DATASET, FORMAT_VERSION, LABELS, LIVE, MAPS, MANIFEST, MAX_UNITS,
                     MODEL_NAME, PARTS, RELATED, SCORES, SHARD_PATH, SHARDS, AtlasError, data_path, command)
from .folder import remove_recorded
from .locks import Lock, lock_path
from .quarantine import quarantine
from .shard import read_shard_header, write_atomically

_HASH_CACHE = ".cache/sha256.json"
# Files other than shards that the manifest covers, relative to the atlas root.
DATA_FILES = (DATASET, RELATED, SCORES, LABELS, MAPS, ANALYSES, LIVE)


BLOCK = 32 * 1024          # bytes per hashed block of a shard (remote readers verify each block they fetch)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_with_blocks(path: Path) -> tuple[str, bytes]:
    """The file's sha256 (hex) and the sha256 of each BLOCK-sized block (raw digests, concatenated)."""
    whole, blocks = hashlib.sha256(), []
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            whole.update(block)
            blocks.append(hashlib.sha256(block).digest())
    return whole.hexdigest(), b"".join(blocks)


class _HashCache:
    """sha256 by (size, mtime); a manifest rewrite rehashes only files that changed."""

    def __init__(self, root: Path):
        self.path = root / _HASH_CACHE
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError, RecursionError):
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    def sha256(self, root: Path, rel: str) -> tuple[int, str]:
        st = (root / rel).stat()
        key = [st.st_size, st.st_mtime_ns]
        hit = self.entries.get(rel)
        if hit and hit[:2] == key:
            return st.st_size, hit[2]
        digest = sha256_file(root / rel)
        self.entries[rel] = [*key, digest]
        return st.st_size, digest

    def with_blocks(self, root: Path, rel: str) -> tuple[int, str, dict]:
        """(size, sha256, blocks entry) of a shard, writing ``blocks/<rel>`` when the shard changed."""
        st = (root / rel).stat()
        key = [st.st_size, st.st_mtime_ns]
        hit = self.entries.get(rel)
        target = root / BLOCKS / f"{rel}.sha256"
        entry = {"path": f"{BLOCKS}/{rel}.sha256", "size": BLOCK}
        if hit and hit[:2] == key and len(hit) == 4 and target.is_file():
            return st.st_size, hit[2], {**entry, "sha256": hit[3]}
        digest, blocks = hash_with_blocks(root / rel)
        write_atomically(target, blocks)
        blocks_digest = hashlib.sha256(blocks).hexdigest()
        self.entries[rel] = [*key, digest, blocks_digest]
        return st.st_size, digest, {**entry, "sha256": blocks_digest}

    def block_files(self) -> set[str]:
        """The block-hash files this cache says were written (``blocks/<shard>.sha256``), for names that
        are shard paths (the cache is read from disk: anything else is ignored)."""
        return {f"{BLOCKS}/{rel}.sha256" for rel, hit in self.entries.items()
                if isinstance(hit, list) and len(hit) == 4 and isinstance(rel, str) and SHARD_PATH.fullmatch(rel)
                and ".." not in rel.split("/")}

    def save(self, keep: set[str]) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k in keep}
        self.path.parent.mkdir(exist_ok=True)
        write_json(self.path, self.entries)


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_atomically(path, (json.dumps(data, indent=1, sort_keys=False) + "\n").encode("utf-8"))


def shard_files(root: Path) -> list[str]:
    """Relative paths of the complete shards under an atlas, sorted."""
    base = root / SHARDS
    if not base.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in base.rglob("*.h5"))


def data_files(root: Path) -> list[str]:
    """Relative paths of the atlas's non-shard data files (dataset index, scores, related units,
    analyses), sorted: only files named by the format's rules (anything else is not data)."""
    found = []
    for name in DATA_FILES:
        p = root / name
        if p.is_file():
            found.append(name)
        elif p.is_dir():
            found += [q.relative_to(root).as_posix() for q in p.rglob("*") if q.is_file()]
    return sorted(rel for rel in found if DATA_PATH.fullmatch(rel))


def scan_shards(root: Path, quarantine_damaged: bool = True) -> list[dict]:
    """Attributes and parts of every complete shard under an atlas (no hashing), sorted by path.

    A shard that cannot be read is moved to the quarantine (writers: the next run recomputes it), or
    with ``quarantine_damaged=False`` (readers) left where it is and skipped with a warning.
    """
    found = []
    for rel in shard_files(root):
        try:
            found.append({"path": rel, **read_shard_header(root / rel)})
        except AtlasError as e:
            if quarantine_damaged:
                quarantine(root, rel, str(e).split(" is not a readable shard ")[-1].strip("()"))
            else:
                print(f"warning: skipping {rel}: {e} (run `{command(f'verify {root}')}`)")
    return found


def describe_shards(root: Path, cache: _HashCache | None = None,
                    quarantine_damaged: bool = True) -> tuple[list[dict], dict]:
    """One manifest entry per shard, and the models section gathered from their attributes. With a
    ``cache`` (the manifest writer) each shard's block hashes are written too; readers pass none."""
    writer, cache = cache is not None, cache or _HashCache(root)
    entries, models = [], {}
    for shard in scan_shards(root, quarantine_damaged):
        attrs, parts, rel = shard["attrs"], shard["parts"], shard["path"]
        entry = {"path": rel, "model": attrs["model"], "site": attrs["site"], "layer": int(attrs["layer"]),
                 "unit_start": int(attrs["unit_start"]), "unit_stop": int(attrs["unit_stop"]), "parts": parts}
        if writer:
            entry["bytes"], entry["sha256"], entry["blocks"] = cache.with_blocks(root, rel)
        else:
            entry["bytes"], entry["sha256"] = cache.sha256(root, rel)
        entries.append(entry)
        model = models.setdefault(attrs["model"], {
            "arch": attrs.get("arch"), "weights": attrs.get("weights"),
            "image_size": attrs.get("image_size"), "sites": {}})
        layer = model["sites"].setdefault(attrs["site"], {}).setdefault(f"{int(attrs['layer']):02d}", {
            "units": attrs.get("layer_units"), "grid": attrs.get("grid"), "module": attrs.get("module"),
            "parts": []})
        layer["parts"] = sorted(set(layer["parts"]) | set(parts))
    for model in models.values():
        model["sites"] = {s: dict(sorted(layers.items())) for s, layers in sorted(model["sites"].items())}
    return entries, models


def read_manifest(root: Path) -> dict | None:
    """The atlas's manifest, or None when it has none yet."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise AtlasError(f"{path} is not valid JSON ({e}); rebuild it with `{command(f'finalize {root}')}`")
    except OSError as e:
        raise AtlasError(f"cannot read {path}: {e.strerror}")
    if not isinstance(data, dict) or "format_version" not in data:
        raise AtlasError(f"{path} is not an atlas manifest (no format_version); {root} is not an atlas, "
                         "or its manifest was replaced: use another folder, or move that file away")
    if str(data.get("format_version", "")).split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise AtlasError(f"{path} has format version {data.get('format_version')}; "
                         f"this reader understands {FORMAT_VERSION}")
    return check_manifest(data, str(path))


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest(data: dict, where: str) -> dict:
    """``data`` if every manifest field a reader or writer relies on has the type and the names the
    format gives it (docs/FORMAT.md), else AtlasError naming the field: paths are the format's own
    (inside the atlas, ``atlas.format.data_path``), unit ranges are ranges, sizes are sizes. A manifest
    read from disk or from a server is checked before anything in it is used."""
    def fail(field: str, value, why: str):
        raise AtlasError(f"{where}: {field} is {str(value)[:80]!r}: {why}; the manifest is damaged or hostile "
                         "(move it aside and rerun the command that built the atlas, or ask the atlas's host)")

    def whole(field: str, value, lo: int = 0, hi: int = 2**62) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            fail(field, value, f"not a whole number from {lo} to {hi}")
        return value

    def digest(field: str, value) -> None:
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            fail(field, value, "not a sha256 (64 hex digits)")

    def listed(key: str) -> list:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            fail(key, value, "not a list of objects")
        return value

    for i, e in enumerate(listed("shards")):
        field = f"shards[{i}]"
        rel = data_path(e.get("path"), "shard", f"{where}: {field}.path")
        m = SHARD_PATH.fullmatch(rel)
        for key in ("model", "site"):
            if e.get(key) != m[key]:
                fail(f"{field}.{key}", e.get(key), f"not the {key} its path {rel} names")
        for key, named in (("layer", "layer"), ("unit_start", "start"), ("unit_stop", "stop")):
            if whole(f"{field}.{key}", e.get(key), 0, MAX_UNITS) != int(m[named]):
                fail(f"{field}.{key}", e.get(key), f"not the {key} its path {rel} names")
        if e["unit_start"] >= e["unit_stop"]:
            fail(f"{field}.unit_stop", e["unit_stop"], "not above unit_start")
        parts = e.get("parts")
        if not isinstance(parts, list) or not all(p in PARTS for p in parts):
            fail(f"{field}.parts", parts, f"not a list of parts ({', '.join(PARTS)})")
        whole(f"{field}.bytes", e.get("bytes"))
        digest(f"{field}.sha256", e.get("sha256"))
        blocks = e.get("blocks")
        if blocks is not None:
            if not isinstance(blocks, dict) or blocks.get("path") != f"{BLOCKS}/{rel}.sha256":
                fail(f"{field}.blocks", blocks, f"not the block hashes of {rel} ({BLOCKS}/{rel}.sha256)")
            whole(f"{field}.blocks.size", blocks.get("size"), 1, 2**30)
            digest(f"{field}.blocks.sha256", blocks.get("sha256"))
    for i, e in enumerate(listed("files")):
        data_path(e.get("path"), "data file", f"{where}: files[{i}].path")
        whole(f"files[{i}].bytes", e.get("bytes"))
        digest(f"files[{i}].sha256", e.get("sha256"))
    models = data.get("models", {})
    if not isinstance(models, dict):
        fail("models", models, "not an object")
    for name, info in models.items():
        if not MODEL_NAME.fullmatch(name) or not isinstance(info, dict) or not isinstance(info.get("sites", {}), dict):
            fail(f"models[{name!r}]", info, "not a model of the format (a name of letters, digits, '_', '.', '-')")
        for site, layers in info.get("sites", {}).items():
            if not isinstance(layers, dict) or not all(isinstance(k, str) and k.isdigit() and isinstance(v, dict)
                                                       for k, v in layers.items()):
                fail(f"models[{name!r}].sites[{site!r}]", layers, "not an object of layers")
    for key in ("atlas", "spec", "dataset", "finalized"):
        if not isinstance(data.get(key, {}), dict):
            fail(key, data[key], "not an object")
    return data


def write_manifest(root: Path, command: str | None = None, info: dict | None = None) -> dict:
    """Rescan the atlas and write manifest.json; ``command`` is appended to the build history.

    ``info`` merges extra top-level entries (atlas name/version, spec, dataset summary).
    """
    root = Path(root)
    with Lock(lock_path(root, "manifest")).wait(600, f"the manifest of {root}"):
        return _write_manifest(root, command, info)


def _write_manifest(root: Path, command: str | None, info: dict | None) -> dict:
    previous = read_manifest(root) or {}
    cache = _HashCache(root)
    shards, models = describe_shards(root, cache)
    files = []
    for rel in data_files(root):
        size, digest = cache.sha256(root, rel)
        files.append({"path": rel, "bytes": size, "sha256": digest})
    # block hashes this writer recorded before (the last manifest, the hash cache) that no shard has now
    recorded = {e["blocks"]["path"] for e in previous.get("shards", []) if e.get("blocks")} | cache.block_files()
    cache.save({e["path"] for e in shards} | {e["path"] for e in files})
    stale = recorded - {e["blocks"]["path"] for e in shards}
    remove_recorded(root, stale)
    history = list(previous.get("history", []))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if command:
        history.append({"time": now, "command": command})
    manifest = {
        "format_version": FORMAT_VERSION,
        "builder_version": __version__,
        "created": previous.get("created", now),
        "updated": now,
        "command": history[-1]["command"] if history else None,
        "history": history,
    }
    for key in ("atlas", "spec", "dataset", "analyses"):
        if key in previous:
            manifest[key] = previous[key]
    manifest.update(info or {})
    manifest["models"] = models
    manifest["shards"] = shards
    manifest["files"] = files
    write_json(root / MANIFEST, manifest)
    return manifest

