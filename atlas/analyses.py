"""Analysis results in an atlas: ``analyses/<name>.json`` (docs/FORMAT.md, "Analyses").

One file per analysis. ``results`` holds each model's raw numbers (a later run for another model
adds to it); ``tables`` and ``charts`` are views of all models' results that the website renders as
they are; ``title``, ``summary`` and ``method`` describe the analysis.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from .format import ANALYSES, FORMAT_VERSION
from .locks import Lock, lock_path
from .manifest import write_json
from .quarantine import quarantine



def parse_analysis(path: Path) -> dict:
    """An analysis file's content; ValueError naming what is wrong when it is not an analysis result
    (unreadable, not JSON, or no ``results`` table)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError("no results table")
    return data


def analysis_files(root: Path) -> list[Path]:
    """The analysis files of the atlas at ``root``, by name."""
    folder = Path(root) / ANALYSES
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def read_analysis(root: str | Path, name: str) -> dict | None:
    """The stored analysis ``name``, or None; a file that is not an analysis result is moved to the
    quarantine (and None returned: the analysis is computed again)."""
    path = Path(root) / ANALYSES / f"{name}.json"
    if not path.exists():
        return None
    try:
        return parse_analysis(path)
    except ValueError as e:
        quarantine(root, path.relative_to(root), f"not an analysis result: {str(e)[:160]}")
        return None


def write_analysis(root: str | Path, name: str, model: str, results: dict, describe, command: str = "",
                   inputs: dict | None = None) -> dict:
    """Store ``model``'s ``results`` for analysis ``name`` next to other models' results, with the
    ``inputs`` they came from, and rebuild the views: ``describe(all_results)`` returns the title,
    summary, method, tables and charts."""
    path = Path(root) / ANALYSES / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with Lock(lock_path(root, f"writes/{ANALYSES}/{name}.json")).wait(600, f"writing {ANALYSES}/{name}.json"):
        data = read_analysis(root, name) or {"name": name, "format_version": FORMAT_VERSION, "results": {},
                                             "commands": {}}
        data["results"][model] = results
        data.setdefault("commands", {})[model] = command
        data.setdefault("inputs", {})[model] = inputs or {}
        data["command"] = command
        data["format_version"] = FORMAT_VERSION
        data["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        data.update(describe(data["results"]))
        write_json(path, data)
    return data
