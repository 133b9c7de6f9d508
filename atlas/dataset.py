"""dataset.h5: the probe's image index (docs/FORMAT.md, "dataset.h5")."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from .shard import atomic_file, attr_value, read_attrs


def paths_sha256(paths: list[str]) -> str:
    """sha256 of the relative paths joined by newlines: identifies an image list."""
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def write_dataset(path: Path, root: Path, paths: list[str], labels: np.ndarray, class_names: list[str],
                  skipped: list[tuple[str, str]], attrs: dict) -> None:
    """Write dataset.h5 atomically: rows are the images the probe scored, in order."""
    text = h5py.string_dtype()
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
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
        with h5py.File(path, "r") as f:
            self.paths = [p.decode() if isinstance(p, bytes) else p for p in f["path"][()]]
            self.labels = f["label"][()]
            self.attrs = read_attrs(f)
            self.skipped = [(p.decode(), r.decode()) for p, r in f["skipped"][()]]
        self.root = Path(self.attrs.get("root", ""))
        names = self.attrs.get("class_names", [])
        self.class_names = json.loads(names) if isinstance(names, str) else list(names)

    def __len__(self) -> int:
        return len(self.paths)

    def class_name(self, label: int) -> str | None:
        """The name of a label, or None for an unknown label (-1) or a dataset without names."""
        return self.class_names[label] if 0 <= label < len(self.class_names) else None
