"""dataset.h5: the probe's image index (docs/FORMAT.md, "dataset.h5")."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from .format import AtlasError, command
from .shard import attr_value, new_h5, read_attrs


def _inside(rel: str) -> bool:
    """Whether ``rel`` is a relative path that stays inside the folder it is joined to."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\x00" not in rel and all(
        part not in ("", ".", "..") for part in parts)


def paths_sha256(paths: list[str]) -> str:
    """sha256 of the relative paths joined by newlines: identifies an image list."""
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def write_dataset(path: Path, root: Path, paths: list[str], labels: np.ndarray, class_names: list[str],
                  skipped: list[tuple[str, str]], attrs: dict) -> None:
    """Write dataset.h5 atomically: rows are the images the probe scored, in order."""
    text = h5py.string_dtype()
    with new_h5(path) as f:
        f.create_dataset("path", data=np.array(paths, dtype=object), dtype=text, track_times=False)
        f.create_dataset("label", data=np.asarray(labels, np.int64), track_times=False)
        f.create_dataset("skipped", data=np.array(skipped, dtype=object).reshape(-1, 2), dtype=text,
                         track_times=False)
        f.attrs["root"] = str(root)
        f.attrs["class_names"] = json.dumps(class_names)
        f.attrs["paths_sha256"] = paths_sha256(paths)
        for key, value in attrs.items():
            f.attrs[key] = attr_value(value)


class Dataset:
    """The probe's image index: paths, labels and class names (row i = dataset index i)."""

    def __init__(self, path: Path):
        self.file = Path(path)
        try:
            with h5py.File(path, "r") as f:
                self.paths = [p.decode() if isinstance(p, bytes) else p for p in f["path"][()]]
                self.labels = np.asarray(f["label"][()], np.int64)
                self.attrs = read_attrs(f)
                self.skipped = [(p.decode(), r.decode()) for p, r in f["skipped"][()]]
            names = self.attrs.get("class_names", [])
            self.class_names = json.loads(names) if isinstance(names, str) else list(names)
        except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError, AttributeError) as e:
            raise AtlasError(f"{path} is not a readable dataset index ({str(e).splitlines()[0][:120]}); rerun the "
                             f"probe to rebuild it (`{command('verify')}` says more)") from None
        if self.labels.shape != (len(self.paths),) or not all(isinstance(n, str) for n in self.class_names):
            raise AtlasError(f"{path}: its labels {self.labels.shape} do not fit its {len(self.paths)} paths, or its "
                             "class names are not text; rerun the probe to rebuild it")
        bad = next((p for p in self.paths if not _inside(p)), None)
        if bad is not None:
            raise AtlasError(f"{path}: image path {bad[:120]!r} is not a relative path inside the image folder; "
                             "the dataset index is damaged or hostile")
        self.root = Path(str(self.attrs.get("root", "")))

    def __len__(self) -> int:
        return len(self.paths)

    def class_name(self, label: int) -> str | None:
        """The name of a label, or None for an unknown label (-1) or a dataset without names."""
        return self.class_names[label] if 0 <= label < len(self.class_names) else None


def images_inside(root: Path, d: Dataset) -> str | None:
    """The folder (relative to the atlas at ``root``) of the probed images ``d`` when it lies inside the
    atlas (the demo's does), wherever the atlas was moved or copied to since (``folder_inside``)."""
    return folder_inside(root, d.root, d.paths[0]) if len(d) else None


def folder_inside(root: Path, recorded: Path, member: str) -> str | None:
    """Where under the atlas at ``root`` a folder recorded as ``recorded`` lies (the demo keeps its images and
    concept dataset inside), wherever the atlas was moved or copied to since: the longest tail of the
    recorded path under which the atlas holds ``member``, a file of the folder. None otherwise."""
    parts = recorded.parts[1:] if recorded.is_absolute() else recorded.parts
    for i in range(len(parts)):
        rel = "/".join(parts[i:])
        if rel and ".." not in parts[i:] and (root / rel / member).is_file() and \
                root.resolve() in (root / rel).resolve().parents:
            return rel
    return None
