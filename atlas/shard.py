"""Writing and inspecting shards: HDF5 files that appear under their final name only when complete."""
from __future__ import annotations

import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .format import FORMAT_VERSION, PARTS, ROW_CHUNKED, SHARDS, AtlasError
from .locks import Lock, lock_path, remove_dead_locks
from .quarantine import quarantine

_TMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` private to this host and process."""
    return path.with_name(f"{path.name}{_TMP_MARK}{socket.gethostname()}-{os.getpid()}")


def replace_atomically(tmp: Path, path: Path) -> None:
    """fsync ``tmp`` and rename it over ``path``, so readers see the old file or the new one, never half."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_file(path: Path):
    """Yield a temporary sibling of ``path`` (its folders created) to write; when the block ends without
    an error it replaces ``path`` atomically, and the temporary file never outlives the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_file``: readers see the old file or the new one."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left by killed processes of this host, and lock files of dead holders
    (``locks.remove_dead_locks``); returns how many."""
    host = socket.gethostname()
    removed = remove_dead_locks(folder)
    for tmp in folder.rglob(f"*{_TMP_MARK}{host}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def picture_recipe(f: h5py.File, part: str) -> dict:
    """The recipe that made a shard's picture ``part``: the part's own attribute (format 1.2), else the
    shard's (the ``viz`` part of older atlases)."""
    return read_attrs(f[part]).get("recipe") or read_attrs(f).get("recipe") or {}


def attr_value(value):
    """An HDF5 attribute value: lists, tuples and dicts as JSON text, everything else as is."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def atlas_root(path: Path) -> Path:
    """The atlas folder a shard path belongs to (the parent of its ``shards`` folder), else its folder."""
    for parent in path.parents:
        if parent.name == SHARDS:
            return parent.parent
    return path.parent


def write_part(path: Path, attrs: dict, part: str, datasets: dict[str, np.ndarray],
               part_attrs: dict | None = None) -> bool:
    """Add one part (``viz`` or ``probe``) to the shard at ``path``, atomically; False when the shard
    already holds that part (another process wrote it first) and nothing was written.

    ``attrs`` are the shard's attributes; when the shard already exists (holding another part)
    they must agree with its own, attributes it lacks are added, and the new part is written into a
    copy that then replaces it. Writers of one shard take turns (a lock in ``.locks/writes``). An
    existing shard that cannot be read is moved to the quarantine and the part starts a new shard.
    """
    if part not in PARTS:
        raise ValueError(f"unknown shard part {part!r}")
    missing = set(PARTS[part]) - set(datasets)
    if missing:
        raise ValueError(f"part {part!r} lacks datasets {sorted(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = atlas_root(path)
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    with Lock(lock_path(root, f"writes/{rel}")).wait(600, f"writing {rel}"):
        tmp = temp_name(path)
        try:
            mode = "w"
            if path.exists():
                shutil.copyfile(path, tmp)
                mode = "r+"
                try:
                    h5py.File(tmp, "r").close()
                except OSError as e:
                    quarantine(root, rel, f"not a readable HDF5 file: {str(e).splitlines()[0][:160]}")
                    mode = "w"
            with h5py.File(tmp, mode) as f:
                if mode == "r+":
                    _check_same_shard(f, attrs, path)
                    if part in parts_of(f):
                        return False
                f.attrs["format_version"] = FORMAT_VERSION
                for key, value in attrs.items():
                    if key not in f.attrs:
                        f.attrs[key] = attr_value(value)
                for name, array in datasets.items():
                    _create(f, name, np.asarray(array))
                if part_attrs:
                    group = f.require_group(part)
                    for key, value in part_attrs.items():
                        group.attrs[key] = attr_value(value)
            replace_atomically(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return True


def _check_same_shard(f: h5py.File, attrs: dict, path: Path) -> None:
    """Every attribute both the shard and this run have must agree (model, range, weights, ...)."""
    for key, value in attrs.items():
        if key in f.attrs and _plain(f.attrs[key]) != attr_value(value):
            raise AtlasError(
                f"{path} holds {key}={_plain(f.attrs[key])!r} but this run has {key}={value!r}; "
                "write into a different --out folder")


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _create(f: h5py.File, name: str, array: np.ndarray) -> None:
    options = {"track_times": False}
    if name in ROW_CHUNKED and array.shape[0] > 0:
        options.update(chunks=(1, *array.shape[1:]), compression="gzip", compression_opts=4, shuffle=True)
    if array.dtype.kind == "U" or array.dtype == object:
        array = np.asarray([str(s) for s in array.ravel()], dtype=h5py.string_dtype()).reshape(array.shape)
    f.create_dataset(name, data=array, **options)


def parts_of(f: h5py.File) -> list[str]:
    """The parts a shard holds (all of a part's datasets present)."""
    return [part for part, names in PARTS.items() if all(name in f for name in names)]


def read_attrs(f: h5py.File) -> dict:
    """A shard's attributes as plain Python values (JSON attributes decoded)."""
    out = {}
    for key, value in f.attrs.items():
        value = _plain(value)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


def shard_holds(path: Path, part: str) -> bool:
    """Whether the shard at ``path`` exists under its final name, can be read, and holds ``part``."""
    if not Path(path).exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return part in parts_of(f)
    except OSError:
        return False
