"""What the accuracy analyses share: a labelled loader, top-k counting, the job description."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atlas.format import AtlasError

from ..dataset import ImageDataset, ImageIndex, collate, loader_workers
from ..defaults import BATCH_SIZE, SEED


@dataclass
class AnalysisJob:
    """What ``build.py analyze`` asks for."""
    out: Path
    name: str                     # the model's name in the atlas
    index: ImageIndex | None = None
    boxes: str | None = None
    batch_size: int = BATCH_SIZE
    workers: int | None = None    # decoding processes; None: min(8, CPUs)
    device: str = "auto"
    limit: int | None = None      # at most this many images, evenly spaced in index order
    seed: int = SEED
    layers: str | None = None     # for sites / spatial
    units: str | None = None
    threshold: float = 0.5        # spatial: a patch is active above this activation (the paper's 0.5)
    command: str = ""


def missing_labels(index: ImageIndex | None) -> str | None:
    """Why an accuracy analysis cannot use ``index`` (None when it has labels)."""
    if index is None:
        return "it needs --images DIR"
    if (index.labels < 0).all():
        return (f"it measures accuracy and needs labels, but {index.root} has none "
                "(use an ImageNet or ImageFolder layout, or pass --labels FILE)")
    return None


def check(analysis: str, model: str, reason: str | None) -> None:
    """Raise AtlasError when an analysis does not apply (``reason`` from its ``applies``)."""
    if reason:
        raise AtlasError(f"analysis {analysis} does not apply to {model}: {reason}")


def labelled(lm, index: ImageIndex, limit: int | None = None) -> ImageIndex:
    """The labelled images of ``index`` with labels in the model's class indices, at most ``limit`` of
    them, evenly spaced in index order (sorted paths group images by class, so the first ``limit``
    would cover only the first classes).

    When the model names its classes (timm ``pretrained_cfg["label_names"]``), dataset classes are
    matched to them by id (ImageNet wnids) or name and images of unmatched classes are left out;
    ``label_offset`` (a background class at 0) is added. Otherwise the dataset's label is taken to
    be the model's class index, as for ImageNet synset folders and an ImageNet model."""
    cfg = getattr(lm.model, "pretrained_cfg", None) or {}
    labels = index.labels.copy()
    names = cfg.get("label_names")
    if names:
        position = {n: i for i, n in enumerate(names)}
        ours = index.class_ids or index.class_names
        mapping = np.array([position.get(n, -1) for n in ours] + [-1], dtype=np.int64)
        labels = np.where(labels >= 0, mapping[labels], -1)
        if (index.labels >= 0).any() and not (labels >= 0).any():
            raise AtlasError(f"none of the classes of {index.root} ({', '.join(ours[:5])}, ...) is among the "
                             f"model's classes ({', '.join(names[:5])}, ...); pass --labels FILE with the "
                             "model's class indices")
    labels = np.where(labels >= 0, labels + (cfg.get("label_offset") or 0), -1)
    keep = np.flatnonzero(labels >= 0)
    if limit and limit < len(keep):
        keep = keep[np.arange(limit) * len(keep) // limit]
    return index.subset(keep, labels[keep])


def loader(dataset: torch.utils.data.Dataset, job: AnalysisJob, collate_fn=collate) -> torch.utils.data.DataLoader:
    """Batches in index order with the job's workers."""
    return torch.utils.data.DataLoader(dataset, batch_size=job.batch_size, num_workers=loader_workers(job.workers),
                                       collate_fn=collate_fn)


def eval_loader(lm, index: ImageIndex, job: AnalysisJob) -> torch.utils.data.DataLoader:
    """Labelled images through the model's eval transform."""
    return loader(ImageDataset(index, lm.eval_transform()), job)


def correct_topk(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, torch.Tensor]:
    """For each k, a bool tensor: is the label among the k highest logits (over the last dim)?
    ``logits`` [..., classes], ``labels`` broadcastable to logits.shape[:-1]."""
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[-1])
        top = logits.topk(k_eff, dim=-1).indices
        out[k] = (top == labels.unsqueeze(-1)).any(-1)
    return out


def percent(x: float) -> str:
    """0.7861 -> '78.61%'."""
    return f"{100 * x:.2f}%"
