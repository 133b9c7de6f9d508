"""What kind of unit this is: flags computed from a unit's stored probe data alone (numpy only).

Values (stored in the probe part as ``flags/*``, or derived here from ``topk/*`` for older atlases):

- ``class_share`` and ``class``: the most common label among the unit's top-k dataset images and the
  share of those images it has (labelled or not; -1 and 0 when the dataset has no labels).
- ``extent``: over the top-k images, the mean fraction of the patch grid whose activation is above
  half of that image's highest patch activation (images whose highest activation is <= 0 are left out).
  Small: the unit fires on a small part of the image; large: on most of it.
- ``concentration``: over the top-k images, the mean share of the positive activation that sits on the
  single most active token. 1/grid cells for an even map; near 1 when one token carries it all.

Flags (booleans, from the values and the thresholds below; ``THRESHOLDS`` is stored with the values):

- ``dead``: no dataset image gives the unit a positive score (``stats/positive == 0``).
- ``class_selective``: at least half of its top-k images share one class.
- ``global`` / ``local``: extent at least 0.4 / below it (a firing unit with maps is one or the other).
  On the demo ViT this calls 81% of layer 0's units local and 61% of the last layer's global.
- ``outlier_tokens``: concentration at least 0.3 while its top-k images are not of one class (the
  "high-norm token" units of Darcet et al. 2024 fire on a few tokens whatever the image shows).
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = {"class_selective": 0.5, "global": 0.4, "outlier_tokens": 0.3}
FLAG_NAMES = ("dead", "class_selective", "local", "global", "outlier_tokens")
FLAG_LABELS = {"dead": "dead units", "class_selective": "class-selective units", "local": "local units",
               "global": "global units", "outlier_tokens": "outlier-token units"}   # the website's words
VALUE_NAMES = ("class", "class_share", "extent", "concentration")


def class_share(topk_index: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(class [n] int64, share [n] float32) of each unit's top-k rows ``topk_index`` [n, k] (-1: empty)."""
    n = len(topk_index)
    cls, share = np.full(n, -1, np.int64), np.zeros(n, np.float32)
    if labels is None or not len(labels):
        return cls, share
    for i, row in enumerate(topk_index):
        row = row[row >= 0]
        found = labels[row] if len(row) else row
        found = found[found >= 0]
        if len(found):
            counts = np.bincount(found)
            cls[i] = int(counts.argmax())
            share[i] = counts.max() / len(row)
    return cls, share


def extent(maps: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean share of the grid above half of each map's maximum: maps [n, k, h, w], valid [n, k] -> [n]."""
    m = maps.astype(np.float32).reshape(*maps.shape[:2], -1)
    peak = m.max(axis=2)
    use = valid & (peak > 0)
    frac = (m > 0.5 * peak[..., None]).mean(axis=2)
    with np.errstate(invalid="ignore"):
        return (np.where(use, frac, 0).sum(1) / use.sum(1)).astype(np.float32)


def concentration(maps: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean share of each map's positive activation on its most active token: [n, k, h, w] -> [n]."""
    m = np.clip(maps.astype(np.float32).reshape(*maps.shape[:2], -1), 0, None)
    total = m.sum(axis=2)
    use = valid & (total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(use, m.max(axis=2) / np.where(total > 0, total, 1), 0)
        return (share.sum(1) / use.sum(1)).astype(np.float32)


def flag_values(topk_index: np.ndarray, topk_map: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """The stored values (``flags/<VALUE_NAMES>``) of n units."""
    valid = topk_index >= 0
    cls, share = class_share(topk_index, labels)
    return {"class": cls, "class_share": share, "extent": extent(topk_map, valid),
            "concentration": concentration(topk_map, valid)}


def flags_of(values: dict, positive: float, thresholds: dict = THRESHOLDS) -> dict[str, bool]:
    """One unit's booleans from its values (scalars) and its share of positive dataset scores."""
    selective = bool(values["class_share"] >= thresholds["class_selective"])
    ext = float(values["extent"])
    return {"dead": positive == 0,
            "class_selective": selective and positive > 0,
            "local": ext == ext and ext < thresholds["global"] and positive > 0,
            "global": ext == ext and ext >= thresholds["global"] and positive > 0,
            "outlier_tokens": bool(values["concentration"] >= thresholds["outlier_tokens"]) and not selective}
