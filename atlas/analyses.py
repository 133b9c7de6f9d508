"""Analysis results in an atlas: ``analyses/<name>.json`` (docs/FORMAT.md, "Analyses").

One file per analysis. ``results`` holds each model's raw numbers (a later run for another model
adds to it); ``tables`` and ``charts`` are views of all models' results that the site renders as
they are; ``title``, ``summary`` and ``method`` describe the analysis.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from .format import FORMAT_VERSION
from .manifest import write_json

ANALYSES = "analyses"


def read_analysis(root: str | Path, name: str) -> dict | None:
    """The stored analysis ``name``, or None."""
    path = Path(root) / ANALYSES / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_analysis(root: str | Path, name: str, model: str, results: dict, describe, command: str = "",
                   inputs: dict | None = None) -> dict:
    """Store ``model``'s ``results`` for analysis ``name`` next to other models' results, with the
    ``inputs`` they came from, and rebuild the views: ``describe(all_results)`` returns the title,
    summary, method, tables and charts."""
    path = Path(root) / ANALYSES / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_analysis(root, name) or {"name": name, "format_version": FORMAT_VERSION, "results": {}, "commands": {}}
    data["results"][model] = results
    data["commands"][model] = command
    data.setdefault("inputs", {})[model] = inputs or {}
    data["command"] = command
    data["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data.update(describe(data["results"]))
    write_json(path, data)
    return data
