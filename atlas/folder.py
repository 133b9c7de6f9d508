"""What a command may write into: an atlas folder (or a new, empty one) that it can write.

Every command that writes checks its target before it computes anything, so a wrong or read-only
``--out`` fails in a second, not after hours of work, and nobody's own files are overwritten.

Nothing ViT Atlas writes or removes is reached through a symbolic link it did not make: atlases travel
as tarballs and git repositories, which keep links, and a ``site -> ~/thesis`` or ``blocks -> ~/docs``
inside one would otherwise steer writes and sweeps out of the atlas. Every folder a command owns is
checked to be a real directory with no link anywhere below it (``refuse_links``) before it writes.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .format import ATLAS_FOLDERS, DATASET, LOCKS, MANIFEST, SHARDS, SPEC_COPY, AtlasError

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


def _link_error(path: Path) -> AtlasError:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return AtlasError(f"{path} is a symbolic link (to {target}): ViT Atlas never writes or removes anything "
                      "through a link in a folder it owns; replace the link by a real folder or file (or, for "
                      "a website, render with --out pointing where the link pointed) and rerun")


def refuse_links(folder: Path) -> None:
    """AtlasError naming the first symbolic link below ``folder`` (the folder itself is the caller's
    to judge: a path the user typed may be a link). Walks without following links."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_symlink():
            raise _link_error(Path(entry.path))
        if entry.is_dir(follow_symlinks=False):
            refuse_links(Path(entry.path))


def check_owned_folder(path: Path) -> None:
    """AtlasError unless ``path`` (a folder inside a folder ViT Atlas owns) is absent or a real
    directory holding no symbolic link at any depth."""
    if path.is_symlink():
        raise _link_error(path)
    if path.exists() and not path.is_dir():
        raise AtlasError(f"{path} is a file where ViT Atlas keeps a folder; move it away and rerun")
    if path.is_dir():
        refuse_links(path)


def remove_recorded(folder: Path, names) -> int:
    """Remove the files ``names`` (paths relative to ``folder`` that this project recorded as written
    there, checked by the caller to be plain relative paths), then the folders that left empty, up to
    ``folder``; a name that is a link or not a file is left alone. Returns how many files went. The one
    way ViT Atlas sweeps: by its own record, never by "everything I did not write this time"."""
    folder, removed = Path(folder), 0
    for rel in sorted(names):
        path = folder / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed += 1
        for parent in path.parents:
            if parent == folder or folder not in parent.parents:
                break
            try:
                parent.rmdir()              # only when empty
            except OSError:
                break
    return removed


def own_folder(folder: str | Path, flag: str, ours, refusal: str, owned: tuple[str, ...] | None = None) -> Path:
    """Make sure ``folder`` is one this command may write into: new, empty, or ``ours(folder)`` (one it
    wrote before), with no symbolic link inside (anywhere, or in the folders named by ``owned``);
    created, and checked writable. ``refusal`` says why someone else's is refused. ``folder`` itself
    may be a link: the user named it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AtlasError(f"{flag} {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not ours(folder):
        raise AtlasError(f"{flag} {folder} {refusal}")
    if folder.is_dir() and owned is None:
        refuse_links(folder)
    elif folder.is_dir():
        for name in owned:
            check_owned_folder(folder / name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AtlasError(f"cannot create {flag} {folder} ({e.strerror})") from None
    check_writable(folder, flag)
    return folder


def prepare_atlas_folder(out: str | Path, flag: str = "--out") -> Path:
    """Make sure ``out`` is an atlas folder this process can write: an existing atlas, or a new or
    empty folder (created, and marked as an atlas), whose own folders hold no links. Returns it as a Path."""
    out = own_folder(out, flag, is_atlas, "is not empty and holds no atlas; give a new or empty folder, "
                                          "or an atlas built before", owned=ATLAS_FOLDERS)
    from .manifest import read_manifest     # (the manifest sweeps with remove_recorded: imported here, not above)
    read_manifest(out)  # a foreign or broken manifest.json fails now, not after the work
    (out / LOCKS).mkdir(exist_ok=True)
    return out
