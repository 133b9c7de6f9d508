"""Image folders for the probe: finding the images, their labels and class names, and loading them.

Recognized layouts (first match wins):

- ``--labels FILE``: CSV ``relative_path,label`` (header optional); labels are integers (no class
  names), ImageNet wnids (ImageNet indices and names), or class names (sorted, indexed).
- ImageNet val, flat: ``ILSVRC2012_val_*.JPEG`` with ``LOC_val_solution.csv`` (Kaggle/LOC) or the
  devkit's ``ILSVRC2012_validation_ground_truth.txt`` (+ ``meta.mat``) in the folder or next to it.
- ImageNet train (or val in synset folders): one folder per wnid (``n01440764/...``).
- ImageFolder: one folder per class; labels are the sorted folder names' indices.
- Plain folder: no labels (-1).

ImageNet labels are indices in the sorted-wnid order timm models use, and class names are timm's
descriptions (``timm.data.ImageNetInfo``), so pages say "shopping cart" rather than n03255030.
"""
from __future__ import annotations

import csv
import os
import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from atlas.format import AtlasError
from atlas.images import ImageError, is_image_name, load_rgb

WNID = re.compile(r"^n\d{8}$")


@dataclass
class ImageIndex:
    """The images of a folder in a deterministic order, with labels (-1: unknown) and class names."""
    root: Path
    paths: list[str]                 # relative, '/'-separated, sorted
    labels: np.ndarray               # int64 [n]
    class_names: list[str] = field(default_factory=list)
    class_ids: list[str] = field(default_factory=list)   # wnids for ImageNet layouts
    layout: str = "plain"
    ignored: int = 0                 # files without an image ending

    def subset(self, keep, labels: np.ndarray | None = None) -> "ImageIndex":
        """The images at positions ``keep`` (in that order), with ``labels`` for them if given."""
        keep = np.asarray(keep, dtype=np.int64)
        return dataclasses.replace(self, paths=[self.paths[i] for i in keep],
                                   labels=self.labels[keep] if labels is None else labels)


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(wnids, descriptions) of ImageNet-1k in timm's class-index order."""
    import timm.data
    info = timm.data.ImageNetInfo()
    wnids = [info.index_to_label_name(i) for i in range(info.num_classes())]
    return wnids, [info.index_to_description(i) for i in range(len(wnids))]


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by Python as surrogates
        return False


def _walk(root: Path) -> tuple[list[str], int]:
    """Image files under ``root`` (relative, sorted) and how many other files were ignored.

    Symbolic links to folders are followed, but every folder is visited once (a link loop, or two
    links to one folder, would list the same images under many paths). Names that are not valid
    UTF-8 cannot be stored in dataset.h5: they are ignored with a warning that names them."""
    files, ignored, seen, bad_names = [], 0, set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if not _utf8(rel):
                bad_names.append(rel.encode("utf-8", "replace").decode())
                ignored += 1
            elif is_image_name(name):
                files.append(rel)
            else:
                ignored += 1
    if bad_names:
        print(f"warning: ignored {len(bad_names)} files whose names are not valid UTF-8 (rename them to include "
              f"them), e.g. {bad_names[0]!r}")
    return sorted(files), ignored


def _find_near(root: Path, name: str) -> Path | None:
    """``name`` in the folder, its parent, or a devkit's data folder beside them."""
    for folder in (root, root.parent):
        for candidate in (folder / name, folder / "ILSVRC2012_devkit_t12" / "data" / name):
            if candidate.is_file():
                return candidate
    return None


def _labels_from_names(names: list[str]) -> tuple[np.ndarray, list[str], list[str], str]:
    """Labels for per-image class names/wnids: ImageNet order when all are ImageNet wnids."""
    wnids, descriptions = imagenet_classes()
    known = [n for n in names if n]
    if known and all(WNID.match(n) for n in known) and set(known) <= set(wnids):
        index = {w: i for i, w in enumerate(wnids)}
        return np.array([index.get(n, -1) for n in names], np.int64), descriptions, wnids, "imagenet"
    classes = sorted(set(known))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(n, -1) for n in names], np.int64), classes, [], "classes"


def _read_labels_csv(path: Path, paths: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except OSError as e:
        raise AtlasError(f"cannot read --labels {path}: {e}")
    if rows and len(rows[0]) >= 2 and rows[0][1].strip().lower() in ("label", "class", "labels"):
        rows = rows[1:]
    if any(len(r) < 2 for r in rows):
        raise AtlasError(f"--labels {path}: every line must be relative_path,label")
    given = {r[0].strip().replace(os.sep, "/"): r[1].strip() for r in rows}
    if not set(given) & set(paths):
        raise AtlasError(f"--labels {path}: none of its paths are images of the folder "
                         f"(e.g. {next(iter(given), '?')!r} vs {paths[0]!r}); paths are relative to --images")
    values = [given.get(p, "") for p in paths]
    if all(re.fullmatch(r"-?\d+", v) for v in values if v):
        return np.array([int(v) if v else -1 for v in values], np.int64), [], []
    labels, classes, ids, _ = _labels_from_names(values)
    return labels, classes, ids


def _imagenet_val_labels(root: Path, paths: list[str]) -> tuple[np.ndarray, str] | None:
    """Labels of a flat ImageNet val folder from LOC_val_solution.csv or the devkit's ground truth."""
    stems = [Path(p).stem for p in paths]
    solution = _find_near(root, "LOC_val_solution.csv")
    if solution:
        wnid_of = {}
        with open(solution, newline="") as f:
            for row in csv.DictReader(f):
                words = row.get("PredictionString", "").split()
                if words:
                    wnid_of[row["ImageId"]] = words[0]
        if sum(s in wnid_of for s in stems) >= 0.5 * len(stems):
            labels, _, _, _ = _labels_from_names([wnid_of.get(s, "") for s in stems])
            return labels, f"imagenet-val ({solution.name})"
    truth = _find_near(root, "ILSVRC2012_validation_ground_truth.txt")
    if truth:
        meta = _find_near(root, "meta.mat")
        if meta is None:
            raise AtlasError(f"found {truth} but not the devkit's meta.mat, which maps its class ids to wnids; "
                             "put meta.mat beside it, use LOC_val_solution.csv, or pass --labels")
        try:
            import scipy.io
        except ImportError:
            raise AtlasError("reading the devkit's meta.mat needs scipy: pip install scipy (or pass --labels)")
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        ids = [int(line) for line in truth.read_text().split()]
        number = [int(m.group(1)) if (m := re.search(r"(\d{8})$", s)) else 0 for s in stems]
        names = [wnid_of_id.get(ids[n - 1], "") if 0 < n <= len(ids) else "" for n in number]
        labels, _, _, _ = _labels_from_names(names)
        return labels, f"imagenet-val ({truth.name})"
    return None


def scan_images(root: str | Path, labels_file: str | Path | None = None) -> ImageIndex:
    """Find the images under ``root`` (sorted relative paths) and their labels; AtlasError when none."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise AtlasError(f"--images {root} is not a folder")
    paths, ignored = _walk(root)
    if not paths:
        what = f"{ignored} files, none with an image ending ({', '.join(('.jpg', '.png', '...'))})" if ignored \
            else "nothing"
        raise AtlasError(f"--images {root} holds no images ({what}); point it at a folder of images")
    index = ImageIndex(root, paths, np.full(len(paths), -1, np.int64), ignored=ignored)
    if labels_file:
        index.labels, index.class_names, index.class_ids = _read_labels_csv(Path(labels_file), paths)
        index.layout = "labels-file"
        return index
    top = {p.split("/", 1)[0] for p in paths if "/" in p}
    flat = all("/" not in p for p in paths)
    if flat:
        found = _imagenet_val_labels(root, paths)
        if found:
            index.labels, index.layout = found
            index.class_ids, index.class_names = imagenet_classes()
        return index
    if all("/" in p for p in paths) and top:
        labels, classes, ids, kind = _labels_from_names([p.split("/", 1)[0] for p in paths])
        index.labels, index.class_names, index.class_ids = labels, classes, ids
        index.layout = "imagenet-folders" if kind == "imagenet" else "imagefolder"
    return index


class ImageDataset(torch.utils.data.Dataset):
    """Images of an ImageIndex through a transform; a file that cannot be decoded yields its reason."""

    def __init__(self, index: ImageIndex, transform, start: int = 0):
        self.root, self.paths, self.transform, self.start = index.root, index.paths, transform, start

    def __len__(self) -> int:
        return len(self.paths) - self.start

    def __getitem__(self, i: int):
        i += self.start
        try:
            return i, self.transform(load_rgb(self.root / self.paths[i])), ""
        except ImageError as e:
            return i, None, str(e)


def loader_workers(workers: int | None) -> int:
    """Decoding processes for a DataLoader: ``workers``, or min(8, CPUs) when None."""
    return min(8, os.cpu_count() or 1) if workers is None else workers


def collate(items):
    """Batch the decodable images; keep (index, reason) of the rest."""
    good = [(i, x) for i, x, _ in items if x is not None]
    skipped = [(i, reason) for i, x, reason in items if x is None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, skipped
    return torch.tensor([i for i, _ in good]), torch.stack([x for _, x in good]), skipped
