"""`build.py verify DIR`: prove an atlas intact, or name every file and unit that is not.

Checks every file the manifest lists (present, size, sha256) and that no shard is missing from it;
the schema of every shard (attributes, each part's datasets with the right dtypes and shapes); no
NaN or inf where values must be finite (and no unit flagged as failed); and, for atlases built
from a spec, that every unit range the spec asked for is covered by shards holding the parts it
asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analyses import analysis_files, parse_analysis
from .dataset import Dataset, folder_inside, images_inside
from .labels import read_label_file
from .format import (ANALYSES, BLOCKS, CACHE, CITATION, DATASET, LABELS, LOCKS, LOGS, MANIFEST, PROBE_STATE, QUARANTINE, RELATED,
                     SCORES, SHARDS, SPEC_COPY, TMP_MARK, WEBSITE, AtlasError, command, unit_id)
from .manifest import read_manifest, sha256_file, shard_files
from .reader import read_related
from .shard import check_shard
from .website.check import check_website
from .quarantine import quarantined

@dataclass(frozen=True)
class Problem:
    """One thing wrong with an atlas: the file, the unit when it is about one, and what."""
    file: str
    message: str
    unit: str | None = None

    def __str__(self) -> str:
        return f"{self.file}{f' [{self.unit}]' if self.unit else ''}: {self.message}"


def _check_files(root: Path, manifest: dict) -> list[Problem]:
    problems = []
    for entry in manifest.get("shards", []) + manifest.get("files", []):
        path = root / entry["path"]
        if not path.exists():
            problems.append(Problem(entry["path"], "missing (listed in the manifest)"))
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems.append(Problem(entry["path"], f"size {size} bytes, manifest says {entry['bytes']}"))
        elif sha256_file(path) != entry["sha256"]:
            problems.append(Problem(entry["path"], "sha256 differs from the manifest (corrupted or changed)"))
    for entry in manifest.get("shards", []):
        blocks = entry.get("blocks")
        if blocks and not (root / blocks["path"]).is_file():
            problems.append(Problem(blocks["path"], f"missing (the shard's block hashes; rerun `{command('finalize')}`)"))
        elif blocks and sha256_file(root / blocks["path"]) != blocks["sha256"]:
            problems.append(Problem(blocks["path"], "sha256 differs from the manifest (corrupted or changed)"))
    listed = {e["path"] for e in manifest.get("shards", [])}
    problems += [Problem(rel, f"shard not in the manifest (rerun `{command('finalize')}`)")
                 for rel in shard_files(root) if rel not in listed]
    return problems


def _check_shard(root: Path, rel: str, entry: dict | None, dataset_rows: int | None) -> list[Problem]:
    header, found = check_shard(root / rel, dataset_rows)
    problems = []
    if header is not None:
        attrs = header["attrs"]
        start, stop = int(attrs["unit_start"]), int(attrs["unit_stop"])
        if entry is not None and (entry["unit_start"], entry["unit_stop"]) != (start, stop):
            problems.append(Problem(rel, f"holds units {start}..{stop}, the manifest says "
                                         f"{entry['unit_start']}..{entry['unit_stop']}"))
    for message, rows in found:
        if rows is None:
            problems.append(Problem(rel, message))
        else:
            a = header["attrs"]
            problems += [Problem(rel, message, unit_id(a["model"], a["site"], int(a["layer"]), start + int(r)))
                         for r in np.flatnonzero(rows)]
    return problems


def _check_layout(manifest: dict) -> list[Problem]:
    """Shards of one layer whose unit ranges overlap (a unit must be in exactly one shard)."""
    problems, by_layer = [], {}
    for e in manifest.get("shards", []):
        by_layer.setdefault((e["model"], e["site"], e["layer"]), []).append(e)
    for entries in by_layer.values():
        entries.sort(key=lambda e: e["unit_start"])
        for a, b in zip(entries, entries[1:]):
            if b["unit_start"] < a["unit_stop"]:
                problems.append(Problem(b["path"], f"its units overlap those of {a['path']}"))
    return problems


def _check_coverage(root: Path, manifest: dict) -> list[Problem]:
    spec = manifest.get("spec") or {}
    coverage, probed = spec.get("coverage", {}), set(spec.get("probe", []))
    pictures = spec.get("pictures", {})
    shards = [s for s in manifest.get("shards", []) if (root / s["path"]).exists()]
    problems = []
    for model, sites in coverage.items():
        for site, layers in sites.items():
            for ll, ranges in layers.items():
                have = [s for s in shards if s["model"] == model and s["site"] == site and s["layer"] == int(ll)]
                for need in ["viz", *pictures.get(model, [])] + (["probe"] if model in probed and site == "ffn" else []):
                    covered = set()
                    for s in have:
                        if need in s["parts"]:
                            covered.update(range(s["unit_start"], s["unit_stop"]))
                    for start, stop in ranges:
                        gaps = [u for u in range(start, stop) if u not in covered]
                        if gaps:
                            problems.append(Problem(f"shards/{model}/{site}/L{int(ll):02d}",
                                                    f"{len(gaps)} units the spec asks for have no {need} part "
                                                    f"(first: U{gaps[0]:04d})", unit_id(model, site, int(ll), gaps[0])))
    return problems


def concept_datasets_inside(root: Path) -> list[str]:
    """The concept datasets (netdissect's, as its label files record them) that lie inside the atlas."""
    found = []
    for path in sorted((root / LABELS).glob("*.h5")) if (root / LABELS).is_dir() else []:
        try:
            recorded = read_label_file(path).get("netdissect", {}).get("attrs", {}).get("concept_dataset")
        except AtlasError:
            continue          # a damaged label file is reported by the data checks
        folder = folder_inside(root, Path(recorded), "index.csv") if isinstance(recorded, str) else None
        if folder:
            found.append(folder)
    return found


# Files and folders of an atlas that are not data: the manifest does not list them.
NOT_DATA = (MANIFEST, CITATION, SPEC_COPY, WEBSITE, LOGS, LOCKS, CACHE, PROBE_STATE, QUARANTINE, BLOCKS)


def _check_unlisted(root: Path, manifest: dict) -> list[Problem]:
    """Files the manifest does not list, outside the places that hold no data (shards are checked above)."""
    listed = {e["path"] for e in manifest.get("shards", []) + manifest.get("files", [])}
    try:
        folder = images_inside(root, Dataset(root / DATASET)) if (root / DATASET).exists() else None
    except AtlasError:
        folder = None
    inside = [folder + "/"] if folder else []   # the demo keeps its images inside the atlas ...
    inside += [f + "/" for f in concept_datasets_inside(root)]   # ... and its concept dataset
    problems = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        top = rel.split("/", 1)[0]
        if not path.is_file() or top in NOT_DATA or rel in listed or rel.endswith(".h5") and top == SHARDS:
            continue
        if TMP_MARK in path.name or any(rel.startswith(folder) for folder in inside):
            continue  # a write in progress; the dataset's own images
        problems.append(Problem(rel, "not listed in the manifest (not part of the atlas's data; move it out, or "
                                     f"rerun `{command('finalize')}` if it should be)"))
    return problems


def _check_data(root: Path, manifest: dict) -> list[Problem]:
    problems = []
    if (root / DATASET).exists():
        try:
            if len(Dataset(root / DATASET)) == 0:
                problems.append(Problem(DATASET, "holds no images (no file of the probed folder could be decoded)"))
        except AtlasError as e:
            problems.append(Problem(DATASET, str(e).split(": ", 1)[-1] if str(e).startswith(str(root)) else str(e)))
    problems += _check_related(root, manifest)
    for path in analysis_files(root):
        try:
            parse_analysis(path)
        except ValueError:
            problems.append(Problem(f"{ANALYSES}/{path.name}", "not an analysis result (invalid JSON or no results)"))
    return problems


def _check_related(root: Path, manifest: dict) -> list[Problem]:
    """related.h5 readable, its rows inside its table, built from the atlas's current score files."""
    if not (root / RELATED).exists():
        scores = [e["path"] for e in manifest.get("files", []) if e["path"].startswith(SCORES + "/")]
        return [Problem(RELATED, f"missing although {scores[0]} exists (a probe was killed before it; rerun "
                                 "the probe to complete it)")] if scores else []
    try:
        sources = read_related(root / RELATED)["sources"]
    except (AtlasError, OSError, ValueError) as e:
        return [Problem(RELATED, str(e).split(": ", 1)[-1])]
    if sources is None:
        return []   # written before format 1.4, which records the score files it came from
    listed = {e["path"]: e["sha256"] for e in manifest.get("files", [])}
    stale = [path for path, digest in sources if listed.get(path) != digest]
    return [Problem(RELATED, f"built from a version of {stale[0]} the atlas no longer holds (rerun the probe to "
                             "rebuild it)")] if stale else []


def verify(root: str | Path) -> list[Problem]:
    """Every problem found in the atlas at ``root`` (empty when it is intact)."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        return [Problem(MANIFEST, f"missing: nothing to check against (run `{command('finalize DIR')}`)")]
    problems = _check_files(root, manifest)
    entries = {e["path"]: e for e in manifest.get("shards", [])}
    try:
        rows = len(Dataset(root / DATASET)) if (root / DATASET).exists() else None
    except AtlasError:
        rows = None   # _check_data names it
    for rel in sorted(set(entries) | set(shard_files(root))):
        if (root / rel).exists():
            problems += _check_shard(root, rel, entries.get(rel), rows)
    website = [Problem(file, message) for file, message in check_website(root, root / WEBSITE)]
    return problems + _check_layout(manifest) + _check_coverage(root, manifest) + _check_unlisted(root, manifest) \
        + _check_data(root, manifest) + website


def quarantine_notes(root: str | Path) -> list[str]:
    """What the quarantine holds, one line each: damaged files moved aside (not problems once recomputed)."""
    root = Path(root)
    notes = []
    for record in quarantined(root):
        state = "recomputed since" if (root / record["path"]).exists() else "not recomputed yet: rerun the build"
        notes.append(f"{record['path']}: damaged ({record['reason']}), moved to {record['moved_to']} on "
                     f"{record['time']}; {state}")
    return notes
