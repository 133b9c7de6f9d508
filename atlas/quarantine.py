"""Damaged files are moved aside: never deleted, never left in the way of the next run.

A shard, ``dataset.h5``, an analysis JSON or a probe's saved state that cannot be read is moved to
``<atlas>/quarantine/<UTC time>-<pid>/<its path in the atlas>``, and a line (time, path, where it
went, why) is appended to ``<atlas>/quarantine/log.jsonl``. The next run recomputes what was moved;
``build.py verify`` lists what the quarantine holds. Delete the folder once you have looked.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from .format import QUARANTINE

LOG = "log.jsonl"


def quarantine(root: str | Path, path: str | Path, reason: str) -> Path:
    """Move ``path`` (inside the atlas at ``root``) into the quarantine; returns where it went."""
    root, path = Path(root), Path(path)
    rel = path.resolve().relative_to(root.resolve()) if path.is_absolute() else path
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = root / QUARANTINE / f"{stamp}-{os.getpid()}" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / rel, target)
    line = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "path": rel.as_posix(),
            "moved_to": target.relative_to(root).as_posix(), "reason": reason}
    with open(root / QUARANTINE / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    print(f"warning: {rel.as_posix()} is damaged ({reason}); moved to {line['moved_to']}, "
          "the next run recomputes it")
    return target


def quarantined(root: str | Path) -> list[dict]:
    """What the quarantine holds: one record per moved file (still present), oldest first."""
    log = Path(root) / QUARANTINE / LOG
    if not log.exists():
        return []
    records = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (Path(root) / str(record.get("moved_to", ""))).exists():
            records.append(record)
    return records
