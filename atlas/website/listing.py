"""The website's record of what it wrote: the marker file ``.vit-atlas-website``.

A render writes the marker with the website-relative path and sha256 of every file it produced. That
record is what the next render may remove (a file it wrote before and no longer produces), what it may
keep without rebuilding (a pack whose bytes still hash to what was recorded), and what `build.py
verify` checks every published file against. A file nobody recorded (a user's notes beside the pages)
is never touched. The record is read from disk, so it is checked like any data: only plain relative
paths inside the website, and sha256 digests.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .urls import MARKER, write_if_changed

_SHA256 = re.compile(r"[0-9a-f]{64}")
_REL = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
RECORD_LIMIT = 256 * 2**20      # bytes of marker read at most (a million-unit website records about 5,000 files)


def safe_relative(rel) -> bool:
    """Whether ``rel`` is a plain website-relative path: letters, digits, '_', '.', '-' between '/',
    no empty, '.' or '..' component (what a recorded path must be before it is joined to the folder)."""
    return isinstance(rel, str) and bool(_REL.fullmatch(rel)) and not any(p in (".", "..") for p in rel.split("/"))


def read_listing(site_dir: Path) -> dict[str, str] | None:
    """The files the last render recorded, website-relative path -> sha256; None when the folder has no
    record (never rendered, or rendered before the record existed); entries that are not plain
    paths with digests are dropped (a hostile record cannot name anything outside the website)."""
    try:
        with open(Path(site_dir) / MARKER, "rb") as f:
            data = json.loads(f.read(RECORD_LIMIT))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return None
    return {rel: digest for rel, digest in files.items()
            if safe_relative(rel) and rel != MARKER and isinstance(digest, str) and _SHA256.fullmatch(digest)}


def write_listing(site_dir: Path, atlas_name: str, files: dict[str, str]) -> None:
    """Write the marker with the record ``files`` (website-relative path -> sha256)."""
    text = json.dumps({"atlas": atlas_name, "files": dict(sorted(files.items()))}, indent=0) + "\n"
    write_if_changed(Path(site_dir) / MARKER, text)
