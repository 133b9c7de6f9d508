"""Foreground / background reliance (paper section 5, Tables 2-3).

With bounding boxes, the foreground (inside any box of the image) or the background (outside every
box) is filled with the model's mean colour (zero after normalization), in the model's own view of
the image (boxes go through the model's own eval resize and crop). Top-1 and top-5 accuracy of the full,
foreground-removed and background-removed images, and each normalized by the full-image accuracy.

Boxes: ``relative_path,x0,y0,x1,y1`` CSV (the demo's ``boxes.csv``; several rows per image allowed;
pixels of the original image, x1/y1 exclusive), the ImageNet ``LOC_val_solution.csv``, or a folder
of ImageNet ``ILSVRC2012_val_*.xml`` annotations.
"""
from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.format import AtlasError
from atlas.images import ImageError, load_rgb
from atlas.media import model_view

from ..dataset import ImageDataset
from .common import AnalysisJob, check, correct_topk, labelled, loader, missing_labels, percent

NAME = "foreground-background"
Box = tuple[float, float, float, float]


def read_boxes(source: str | Path, paths: list[str]) -> dict[str, list[Box]]:
    """Boxes per relative image path, from any of the supported sources."""
    source = Path(source)
    stem_to_path = {Path(p).stem: p for p in paths}
    boxes: dict[str, list[Box]] = {}
    if source.is_dir():
        for xml in sorted(source.glob("*.xml")):
            rel = stem_to_path.get(xml.stem)
            if rel is None:
                continue
            for obj in ET.parse(xml).getroot().iter("object"):
                b = obj.find("bndbox")
                boxes.setdefault(rel, []).append(tuple(float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")))
        return boxes
    if not source.is_file():
        raise AtlasError(f"--boxes {source} does not exist")
    with open(source, newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0][:2] == ["ImageId", "PredictionString"]:
        for image_id, prediction in rows[1:]:
            rel = stem_to_path.get(image_id)
            words = prediction.split()
            for i in range(0, len(words) - 4, 5):
                boxes.setdefault(rel, []).append(tuple(float(w) for w in words[i + 1:i + 5]))
        boxes.pop(None, None)
        return boxes
    if rows and rows[0][0] in ("relative_path", "path"):
        rows = rows[1:]
    for row in rows:
        boxes.setdefault(row[0], []).append(tuple(float(v) for v in row[1:5]))
    return boxes


def box_mask(boxes: list[Box], size: tuple[int, int], data_config: dict) -> torch.Tensor:
    """Bool [H, W] in the model's input: the boxes (original pixels; a pixel is inside when its centre
    is) painted on an image of ``size`` (W, H) and sent through timm's own eval resize and crop for
    ``data_config`` (atlas.media.model_view, nearest-neighbour), so the mask lands where the model
    sees the object whatever the crop mode."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    painted = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        painted |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    view = model_view(Image.fromarray(painted.astype(np.uint8) * 255).convert("RGB"),
                      {**data_config, "interpolation": "nearest"})
    return torch.from_numpy(np.asarray(view)[..., 0] > 127)


class BoxedDataset(ImageDataset):
    """Images through the eval transform, each with its foreground mask in the model's view."""

    def __init__(self, index, transform, boxes: dict[str, list[Box]], data_config: dict):
        super().__init__(index, transform)
        self.boxes, self.data_config = boxes, data_config

    def __getitem__(self, i: int):
        try:
            img = load_rgb(self.root / self.paths[i])
        except ImageError as e:
            return i, None, str(e)
        x = self.transform(img)
        mask = box_mask(self.boxes[self.paths[i]], img.size, self.data_config)
        return i, (x, mask), ""


def collate_boxed(items):
    good = [(i, xm) for i, xm, _ in items if xm is not None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, []
    return (torch.tensor([i for i, _ in good]), (torch.stack([xm[0] for _, xm in good]),
                                                 torch.stack([xm[1] for _, xm in good])), [])


def applies(lm, job: AnalysisJob) -> str | None:
    """None if the analysis applies to the job, else why not."""
    if not job.boxes:
        return ("it needs bounding boxes: pass --boxes FILE (CSV relative_path,x0,y0,x1,y1, or ImageNet's "
                "LOC_val_solution.csv) or a folder of ImageNet val XML annotations")
    return missing_labels(job.index)


@torch.no_grad()
def run(lm, job: AnalysisJob, device: torch.device) -> dict:
    """Top-1/top-5 accuracy on full, foreground-removed and background-removed images."""
    check(NAME, job.name, applies(lm, job))
    index = job.index
    boxes = read_boxes(job.boxes, index.paths)
    keep = [i for i, p in enumerate(index.paths) if boxes.get(p) and index.labels[i] >= 0]
    if not keep:
        raise AtlasError(f"{NAME}: no labelled image of {index.root} has a box in {job.boxes}")
    index = labelled(lm, index.subset(keep), job.limit)
    data = BoxedDataset(index, lm.eval_transform(), boxes, lm.data_config)
    model = lm.model.to(device)
    counts = {v: {1: 0, 5: 0} for v in ("full", "foreground_removed", "background_removed")}
    n = 0
    foreground_share = 0.0
    for ids, batch, _ in loader(data, job, collate_boxed):
        if batch is None:
            continue
        x, mask = batch[0].to(device), batch[1].to(device)[:, None]
        labels = torch.from_numpy(index.labels[ids.numpy()]).to(device)
        # zero in normalized space is the model's mean colour
        for variant, image in (("full", x), ("foreground_removed", x.masked_fill(mask, 0.0)),
                               ("background_removed", x.masked_fill(~mask, 0.0))):
            for k, hit in correct_topk(model(image), labels).items():
                counts[variant][k] += hit.sum().item()
        foreground_share += mask.float().mean(dim=(1, 2, 3)).sum().item()
        n += len(ids)
    acc = {v: {f"top{k}": c[k] / n for k in c} for v, c in counts.items()}
    normalized = {v: {t: (acc[v][t] / acc["full"][t] if acc["full"][t] else float("nan")) for t in acc[v]}
                  for v in ("foreground_removed", "background_removed")}
    return {"images": n, "accuracy": acc, "normalized": normalized, "foreground_share": foreground_share / n,
            "fill": "the model's mean colour (0 after normalization)", "classes": len(index.class_names)}


def describe(results: dict) -> dict:
    """Title, text and tables for every model's results."""
    rows = []
    for model, r in results.items():
        a, z = r["accuracy"], r["normalized"]
        rows.append([model, percent(a["full"]["top1"]), percent(a["full"]["top5"]),
                     percent(z["foreground_removed"]["top5"]), percent(z["background_removed"]["top5"]),
                     percent(z["foreground_removed"]["top1"]), percent(z["background_removed"]["top1"]),
                     f"{100 * r['foreground_share']:.0f}%", r["images"]])
    return {
        "title": "Foreground and background",
        "summary": "How much does each model rely on the object, and how much on its surroundings? The paper "
                   "finds ViTs better than CNNs at classifying from the background alone and less hurt when the "
                   "background is removed (top-5 accuracy normalized by the full-image accuracy).",
        "method": "Inside the bounding boxes (foreground) or outside them (background) the image is filled with "
                  "the model's mean colour, in the model's own resized and center-cropped view. Accuracies are "
                  "normalized by the full-image accuracy of the same model. With few classes, top-5 is close to "
                  "chance-free and top-1 is the more telling number.",
        "tables": [{"caption": "Accuracy on full images, and normalized accuracy with the foreground or the "
                               "background removed",
                    "columns": ["model", "full top-1", "full top-5", "no foreground top-5 (norm.)",
                                "no background top-5 (norm.)", "no foreground top-1 (norm.)",
                                "no background top-1 (norm.)", "foreground area", "images"],
                    "rows": rows}],
        "charts": [],
    }
