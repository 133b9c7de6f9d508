"""Writing and inspecting shards: HDF5 files that appear under their final name only when complete."""
from __future__ import annotations

import io
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .format import TMP_MARK, FORMAT_VERSION, PARTS, PICTURES, ROW_CHUNKED, SHARD_PATH, SHARDS, AtlasError, shard_path
from .locks import Lock, lock_path, remove_dead_locks
from .quarantine import quarantine



def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` private to this host and process."""
    return path.with_name(f"{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")


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


@contextmanager
def new_h5(path: Path, existing: bytes | None = None):
    """Yield an h5py file built in memory (a copy of ``existing`` bytes, else empty), then write its bytes
    to ``path`` through ``atomic_file``. HDF5 never writes to disk itself: a full disk is a plain
    ``OSError`` from Python's write (the HDF5 library can crash when its own writes fail)."""
    buf = io.BytesIO(existing or b"")
    with h5py.File(buf, "r+" if existing else "w") as f:
        yield f
    write_atomically(path, buf.getvalue())


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_file``: readers see the old file or the new one."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left by killed processes of this host, and lock files of dead holders
    (``locks.remove_dead_locks``); returns how many."""
    host = socket.gethostname()
    removed = remove_dead_locks(folder)
    for tmp in folder.rglob(f"*{TMP_MARK}{host}-*"):
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
        existing = path.read_bytes() if path.exists() else None
        if existing is not None:
            try:
                with h5py.File(io.BytesIO(existing), "r") as f:
                    _check_same_shard(f, attrs, path)
                    if part in parts_of(f):
                        return False
            except OSError as e:
                quarantine(root, rel, f"not a readable HDF5 file: {str(e).splitlines()[0][:160]}")
                existing = None
        with new_h5(path, existing) as f:
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
            except (ValueError, RecursionError):
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


# The schema of a shard's datasets: dtype, and shape after the unit rows, by name. Letters stand for a
# size the shard's attributes give (H, W: image_size; h, w: grid) or that the part fixes once (k:
# images kept; L: loss points; E: histogram edges).
SCHEMA = {
    **{f"{part}/{name}": spec for part in PARTS if part != "probe"
       for name, spec in (("image", ("u1", "HW3")), ("activation", ("f4", "")), ("map", ("f2", "hw")),
                          ("seed", ("i8", "")), ("loss", ("f4", "L")))},
    "topk/index": ("i8", "k"), "topk/score": ("f4", "k"), "topk/map": ("f2", "khw"),
    "stats/mean": ("f4", ""), "stats/max": ("f4", ""), "stats/positive": ("f4", ""), "stats/hist": ("i8", "B"),
    "flags/class": ("i8", ""), "flags/class_share": ("f4", ""), "flags/extent": ("f4", ""),
    "flags/concentration": ("f4", ""),
}
FLAG_DATASETS = ("flags/class", "flags/class_share", "flags/extent", "flags/concentration")
FLAG_THRESHOLD_KEYS = ("class_selective", "global", "outlier_tokens")


def shard_problems(f: h5py.File, dataset_rows: int | None = None, values: bool = False) -> list[str]:
    """What is wrong with an open shard, one line each (empty when nothing): attributes, each present
    dataset's dtype and shape against the attributes, the probe's flags and thresholds; with
    ``values`` also top-k rows outside the dataset's ``dataset_rows`` rows (reads the top-k indices).
    What every reader relies on before it reads a row: ``atlas.open`` checks it on opening a shard."""
    attrs = read_attrs(f)
    try:
        n = int(attrs["unit_stop"]) - int(attrs["unit_start"])
        sizes = {"H": int(attrs["image_size"][0]), "W": int(attrs["image_size"][1])} if "image_size" in attrs else {}
        if "grid" in attrs:
            sizes.update(h=int(attrs["grid"][0]), w=int(attrs["grid"][1]))
    except (KeyError, TypeError, ValueError, IndexError):
        return ["its attributes unit_start, unit_stop, image_size or grid are missing or not numbers"]
    if "stats/hist_edges" in f:
        sizes["B"] = f["stats/hist_edges"].shape[0] - 1 if f["stats/hist_edges"].ndim == 1 else -1
    sizes["3"] = 3
    problems = []
    for name, (dtype, dims) in SCHEMA.items():
        if name not in f:
            continue
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            problems.append(f"{name} is not a dataset")
            continue
        if ds.dtype.str[1:] != dtype:
            problems.append(f"{name} has dtype {ds.dtype}, expected {dtype}")
        want, shape = [n], ds.shape
        for letter in dims:
            key = letter + name.split("/")[0] if letter == "L" else letter   # loss points: per picture part
            if key not in sizes:  # fixed by the first dataset that has it (k, L)
                sizes[key] = shape[len(want)] if len(shape) > len(want) else -1
            want.append(sizes[key])
        if tuple(want) != shape:
            problems.append(f"{name} has shape {shape}, expected {tuple(want)} for its {n} units")
    for group in (f, *(f[part] for part in PARTS if part in f and isinstance(f[part], h5py.Group))):
        where = "" if group is f else f" of {group.name.strip('/')}"
        for key, value in read_attrs(group).items():
            if not _all_finite(value):
                problems.append(f"attribute {key}{where} holds a number that is not finite (NaN or inf)")
    present = [name for name in FLAG_DATASETS if name in f]
    if present and len(present) != len(FLAG_DATASETS):
        problems.append(f"holds {present} but not all of {list(FLAG_DATASETS)}")
    if "probe" in f:
        thresholds = read_attrs(f["probe"]).get("flag_thresholds")
        if thresholds is not None and not (isinstance(thresholds, dict) and all(
                isinstance(thresholds.get(key), (int, float)) and not isinstance(thresholds.get(key), bool)
                for key in FLAG_THRESHOLD_KEYS)):
            problems.append(f"probe attribute flag_thresholds is {str(thresholds)[:60]!r}, not an object of numbers "
                            f"{list(FLAG_THRESHOLD_KEYS)}")
    if values and dataset_rows is not None and "topk/index" in f and not problems:
        index = f["topk/index"][()]
        bad = (index < -1) | (index >= dataset_rows)
        if bad.any():
            problems.append(f"topk/index holds row {int(index[bad][0])}, outside dataset.h5's {dataset_rows} rows")
    return problems


def _all_finite(value) -> bool:
    """Whether every number in an attribute's value (JSON decoded: lists, objects) is finite: the pages and
    the export write them as JSON, which has no NaN or inf."""
    todo = [value]
    while todo:                      # a loop, not recursion: the value comes from a file
        v = todo.pop()
        if isinstance(v, dict):
            todo += v.values()
        elif isinstance(v, (list, tuple)):
            todo += v
        elif isinstance(v, (float, np.floating)) and not np.isfinite(v):
            return False
    return True


SHARD_ATTRS = ("model", "site", "layer", "unit_start", "unit_stop")


def read_shard_header(path: Path) -> dict:
    """A shard's attributes and parts; raises AtlasError naming the file when it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            attrs, parts = read_attrs(f), parts_of(f)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise AtlasError(f"{path} is not a readable shard ({str(e).splitlines()[0][:200]})") from None
    missing = [a for a in SHARD_ATTRS if a not in attrs]
    if missing:
        raise AtlasError(f"{path} lacks the shard attributes {missing}")
    try:
        named = shard_path(attrs["model"], attrs["site"], int(attrs["layer"]), int(attrs["unit_start"]),
                           int(attrs["unit_stop"]))
    except (TypeError, ValueError):
        named = None
    if named is None or not SHARD_PATH.fullmatch(named) or not Path(path).as_posix().endswith("/" + named):
        raise AtlasError(f"{path} is not a readable shard (its attributes model={attrs['model']!r}, "
                         f"site={attrs['site']!r}, layer={attrs['layer']!r}, units {attrs['unit_start']!r}.."
                         f"{attrs['unit_stop']!r} do not name its own path)")
    return {"attrs": attrs, "parts": parts}


# Datasets whose every value must be finite (a NaN there is a failed optimization or a damaged file).
MUST_BE_FINITE = tuple(f"{part}/{name}" for part in PICTURES for name in ("activation", "map", "loss")) \
    + ("topk/map", "stats/mean", "stats/positive", "stats/hist_edges")


def check_shard(path: Path, dataset_rows: int | None = None) -> tuple[dict | None, list[tuple[str, np.ndarray | None]]]:
    """Everything ``build.py verify`` checks inside one shard file: its header (None when unreadable)
    and its problems, each a message and, when the problem is about units, a boolean array over the
    shard's unit rows. Reads every value (NaN/inf, failed units, top-k rows inside ``dataset_rows``)."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return None, [(f"not a readable HDF5 file ({str(e).splitlines()[0]})", None)]
    with f:
        missing = [a for a in ("format_version", *SHARD_ATTRS) if a not in f.attrs]
        if missing:
            return None, [(f"lacks attributes {missing}", None)]
        problems = []
        if str(f.attrs["format_version"]).split(".")[0] != FORMAT_VERSION.split(".")[0]:
            problems.append((f"format version {f.attrs['format_version']}", None))
        try:
            header = read_shard_header(path)
        except AtlasError as e:
            return None, problems + [(str(e).split(" is not a readable shard ", 1)[-1].strip("()"), None)]
        present = [p for p, names in PARTS.items() if any(name in f for name in names)]
        if not present:
            problems.append(("holds neither a viz nor a probe part", None))
        problems += [(f"part {part} lacks {name}", None) for part in present for name in PARTS[part] if name not in f]
        schema = shard_problems(f, dataset_rows, values=True)
        problems += [(message, None) for message in schema]
        if schema:
            return header, problems   # values of misshapen datasets would only repeat the problem
        for name in MUST_BE_FINITE:
            if name not in f:
                continue
            try:
                data = f[name][()]
            except OSError as e:
                problems.append((f"{name} cannot be read ({str(e).splitlines()[0]})", None))
                continue
            finite = np.isfinite(np.atleast_1d(data).astype(np.float64))
            problems.append((f"NaN/inf in {name}", ~finite.reshape(len(finite), -1).all(1)))
        if "topk/score" in f and "topk/index" in f:
            problems.append(("NaN/inf score of a kept image",
                             (~np.isfinite(f["topk/score"][()]) & (f["topk/index"][()] >= 0)).any(1)))
        for part in PICTURES:
            if f"{part}/failed" in f:
                problems.append((f"{part} optimization failed (NaN/inf after every retry)",
                                 f[f"{part}/failed"][()].astype(bool)))
    return header, [(message, rows) for message, rows in problems if rows is None or rows.any()]
