"""What a command may write into: an atlas folder (or a new, empty one) that it can write.

Every command that writes checks its target before it computes anything, so a wrong or read-only
``--out`` fails in a second, not after hours of work, and nobody's own files are overwritten.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .format import DATASET, LOCKS, MANIFEST, SHARDS, SPEC_COPY, AtlasError
from .manifest import read_manifest

# Any of these makes a folder an atlas (LOCKS is created by the first command that writes into it).
ATLAS_MARKERS = (MANIFEST, SHARDS, DATASET, LOCKS, SPEC_COPY)


def is_atlas(folder: Path) -> bool:
    """Whether ``folder`` holds an atlas (or one being built)."""
    return any((folder / name).exists() for name in ATLAS_MARKERS)


def check_writable(folder: Path, flag: str = "--out") -> None:
    """Raise AtlasError unless a file can be created in ``folder`` (which exists)."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        why = "read-only" if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else e.strerror
        raise AtlasError(f"cannot write into {folder} ({why}); pass a writable {flag} folder") from None


def own_folder(folder: str | Path, flag: str, ours, refusal: str) -> Path:
    """Make sure ``folder`` is one this command may write into: new, empty, or ``ours(folder)`` (one it
    wrote before); created, and checked writable. ``refusal`` says why someone else's is refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AtlasError(f"{flag} {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not ours(folder):
        raise AtlasError(f"{flag} {folder} {refusal}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AtlasError(f"cannot create {flag} {folder} ({e.strerror})") from None
    check_writable(folder, flag)
    return folder


def prepare_atlas_folder(out: str | Path, flag: str = "--out") -> Path:
    """Make sure ``out`` is an atlas folder this process can write: an existing atlas, or a new or
    empty folder (created, and marked as an atlas). Returns it as a Path."""
    out = own_folder(out, flag, is_atlas, "is not empty and holds no atlas; give a new or empty folder, "
                                          "or an atlas built before")
    read_manifest(out)  # a foreign or broken manifest.json fails now, not after the work
    (out / LOCKS).mkdir(exist_ok=True)
    return out
