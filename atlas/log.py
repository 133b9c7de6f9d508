"""The build log: one JSON line per finished shard, one file per process (logs/<host>-<pid>.jsonl),
so concurrent processes never write the same file."""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from . import __version__
from .format import LOGS



def append_log(root: Path, record: dict) -> None:
    """Append ``record`` (plus time, host, pid and the ViT Atlas version) as one line to this process's log
    in the atlas."""
    folder = Path(root) / LOGS
    folder.mkdir(parents=True, exist_ok=True)
    line = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "pid": os.getpid(), "version": __version__, **record}
    with open(folder / f"{socket.gethostname()}-{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def read_logs(root: Path) -> list[dict]:
    """Every line of every process's log, oldest first."""
    lines = []
    for path in sorted((Path(root) / LOGS).glob("*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            if text.strip():
                lines.append(json.loads(text))
    return sorted(lines, key=lambda r: r["time"])
