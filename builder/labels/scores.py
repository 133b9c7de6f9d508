"""The three label scores, as pure functions on arrays (each tested against a plain version and its peer's code).

- ``QuantileHistogram`` and ``iou``: Network Dissection (Bau et al. 2017; NetDissect-Lite's constants): a
  unit's threshold is the top ``QUANTILE`` of its patch activations over the concept dataset; its map,
  upsampled to the mask's size, thresholded, is compared with each concept's masks; IoU = intersection /
  (activated pixels in images where the concept's category appears + the concept's pixels - intersection).
- ``auc`` and ``mann_whitney_p``, ``or_compositions``: INVERT (Bykov et al. 2023): how well a unit's image
  scores separate the images of a concept from the rest (AUROC), its two-sided Mann-Whitney p-value, and
  the best OR of up to three concepts found by a beam search.
- ``soft_wpmi``: CLIP-Dissect (Oikarinen & Weng 2023): the soft weighted pointwise mutual information
  between a unit's most activating images and each concept's image-text similarities.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# NetDissect-Lite settings.py: the activation quantile that makes a unit's mask, and the IoU a detector needs
QUANTILE = 0.005
IOU_THRESHOLD = 0.04
# CLIP-Dissect similarity.soft_wpmi's defaults
WPMI = {"top_k": 100, "a": 10.0, "lam": 1.0, "min_prob": 1e-7, "p_start": 0.998, "p_end": 0.97}
# INVERT's explain_representation: a concept (or formula) covers at most half of the images
MAX_FRACTION = 0.5


class QuantileHistogram:
    """Each unit's values in a fixed log-spaced histogram, so the top QUANTILE of billions of patch
    activations is found in bounded memory and counts from shares of a pass add up. Bins: ``per_decade``
    a decade from 1e-4 to 1e4 for positive values (and the same mirrored for negative ones, one bin for
    |x| < 1e-4), so the threshold found is within 10^(1/per_decade) (0.9% at 256) of the exact quantile."""

    def __init__(self, units: int, per_decade: int = 256, lo: float = 1e-4, hi: float = 1e4):
        self.per_decade, self.lo, self.hi = per_decade, lo, hi
        self.decades = int(round(math.log10(hi / lo)))
        self.side = self.decades * per_decade          # bins per sign
        self.counts = np.zeros((units, 2 * self.side + 1), np.int64)

    def bins(self, x: torch.Tensor) -> torch.Tensor:
        """Bin index of every value: [0, side) negative (most negative first), side the ~0 bin, above positive."""
        mag = torch.log10(x.abs().clamp(self.lo, self.hi * (1 - 1e-7)) / self.lo) * self.per_decade
        k = mag.floor().long().clamp(0, self.side - 1)
        small = x.abs() < self.lo
        return torch.where(small, torch.full_like(k, self.side),
                           torch.where(x > 0, self.side + 1 + k, self.side - 1 - k))

    def add(self, values: torch.Tensor) -> None:
        """Count ``values`` [n, U] (every patch of every image, per unit)."""
        index = self.bins(values.float()) + torch.arange(values.shape[1]).to(values.device) * self.counts.shape[1]
        self.counts += torch.bincount(index.flatten(), minlength=self.counts.size).view(self.counts.shape).cpu().numpy()

    def edge(self, b: np.ndarray) -> np.ndarray:
        """The lower value edge of bins ``b`` (the threshold a unit's values must exceed)."""
        b = np.asarray(b)
        pos = self.lo * 10 ** ((b - self.side - 1) / self.per_decade)
        neg = -self.lo * 10 ** ((self.side - b) / self.per_decade)
        return np.where(b > self.side, pos, np.where(b == self.side, -self.lo, neg))

    def threshold(self, quantile: float = QUANTILE) -> np.ndarray:
        """Per unit, the value above which ``quantile`` of its values lie (NetDissect's activation
        threshold): the lower edge of the bin where the top ``quantile`` begins."""
        total = self.counts.sum(1, keepdims=True)
        above = np.cumsum(self.counts[:, ::-1], axis=1)[:, ::-1]           # values in bin b or above
        b = (above >= np.maximum(quantile * total, 1)).sum(1) - 1          # the highest bin reaching the quantile
        return self.edge(np.maximum(b, 0))


class IoUTally:
    """Network Dissection's counts over a concept dataset (NetDissect-Lite's ``tally_job``), for U units and C
    concepts of K categories: ``labels`` [C] concept pixels, ``both`` [U, C] activated pixels with the concept,
    ``units_cat`` [U, K] activated pixels in images where the category appears under them."""

    def __init__(self, units: int, concepts: int, concept_category: np.ndarray, categories: int):
        self.labels = np.zeros(concepts, np.float64)
        self.both = np.zeros((units, concepts), np.float64)
        self.units_cat = np.zeros((units, categories), np.float64)
        self.concept_category = np.asarray(concept_category)     # [C]: each concept's primary category
        self.onehot = np.eye(categories)[self.concept_category]  # [C, K]

    def add(self, active: torch.Tensor, pixel_labels: list[np.ndarray], scalar_labels: list[int]) -> None:
        """One image: ``active`` [U, sh, sw] bool (upsampled maps above their thresholds); ``pixel_labels``
        masks [sh, sw] of concept numbers (0: none) and ``scalar_labels`` concepts of the whole image."""
        sh, sw = active.shape[1:]
        layers = np.stack(pixel_labels)[None] if pixel_labels else np.zeros((1, 0, sh, sw), np.int64)
        self.add_batch(active[None], layers, [list(scalar_labels)])

    def add_batch(self, active: torch.Tensor, pixel_labels: np.ndarray, scalar_labels: list[list[int]]) -> None:
        """B images at once: ``active`` [B, U, sh, sw] bool, ``pixel_labels`` [B, L, sh, sw] concept numbers (0:
        none, layers padded with 0), ``scalar_labels`` per image. Intersections are one batched product of
        the activated pixels with each image's concepts present (a pixel may carry one concept per layer)."""
        B, U, sh, sw = active.shape
        C = len(self.labels)
        act = active.reshape(B, U, sh * sw).float()
        counts = act.sum(2).double().cpu().numpy()                                        # [B, U]
        labels = torch.from_numpy(np.clip(np.asarray(pixel_labels, np.int64).reshape(B, -1, sh * sw), 0, C - 1))
        self.labels += torch.bincount(labels.flatten(), minlength=C)[:C].numpy() * (np.arange(C) > 0)
        codes = labels.unique()
        codes = codes[codes > 0]                                                           # the batch's concepts
        hot = torch.zeros(B, sh * sw, max(len(codes), 1))                                 # pixel -> concept, per image
        slot = torch.searchsorted(codes, labels).clamp(max=max(len(codes) - 1, 0))        # [B, L, P]
        hit = (labels > 0) & (codes[slot] == labels) if len(codes) else torch.zeros_like(labels, dtype=torch.bool)
        for layer in range(labels.shape[1]):
            hot.scatter_add_(2, slot[:, layer, :, None], hit[:, layer, :, None].float())
        inter = torch.bmm(act, hot.to(act.device)).double().cpu().numpy()[..., :len(codes)]   # [B, U, Q]
        codes = codes.numpy()
        self.both[:, codes] += inter.sum(0)
        category = (inter @ self.onehot[codes]) > 0 if len(codes) else np.zeros((B, U, self.onehot.shape[1]), bool)
        for b, scalars in enumerate(scalar_labels):
            for c in scalars:
                self.labels[c] += sh * sw
                self.both[:, c] += counts[b]
                category[b] |= (self.onehot[c][None] > 0) & (counts[b][:, None] > 0)
        self.units_cat += (counts[..., None] * category).sum(0)

    def iou(self) -> np.ndarray:
        """[U, C] IoU of every unit with every concept (NetDissect-Lite's formula)."""
        return iou(self.both, self.units_cat @ self.onehot.T, self.labels)


def iou(both: np.ndarray, units_cat: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """IoU = both / (units_cat + labels - both + 1e-10), as NetDissect-Lite's ``tally`` writes it: ``both`` [U, C]
    intersections, ``units_cat`` [U, C] activated pixels where each concept's category appears, ``labels`` [C]."""
    return both / (units_cat + labels[None] - both + 1e-10)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based, ties averaged) of every column of ``scores`` [N, U], float64."""
    scores = scores.double()
    order = scores.argsort(0)
    sorted_ = scores.gather(0, order)
    ranks_sorted = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64, device=scores.device)[:, None].expand_as(scores).clone()
    # ties: every member of a run of equal values gets the run's mean rank
    new = torch.ones_like(sorted_, dtype=torch.bool)
    new[1:] = sorted_[1:] != sorted_[:-1]
    run = new.long().cumsum(0) - 1                                             # run id per sorted position
    width = torch.zeros_like(ranks_sorted).scatter_add_(0, run, torch.ones_like(ranks_sorted))
    total = torch.zeros_like(ranks_sorted).scatter_add_(0, run, ranks_sorted)
    mean = (total / width.clamp_min(1)).gather(0, run)
    return torch.empty_like(mean).scatter_(0, order, mean)


def auc(score_ranks: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """AUROC [U, C] of each unit's scores for each concept: the probability that an image of the concept
    scores above one without it, ties counting half (the Mann-Whitney U over n_pos · n_neg). ``score_ranks``
    [N, U] from ``ranks``; ``members`` [N, C] bool. A concept on no image, or on all, has AUC 0.5."""
    m = members.double()
    pos = m.sum(0)                                                             # [C]
    neg = m.shape[0] - pos
    u = score_ranks.T @ m - (pos * (pos + 1) / 2)[None]                        # [U, C]
    denom = (pos * neg)[None]
    return torch.where(denom > 0, u / denom.clamp_min(1), torch.full_like(u, 0.5))


def mann_whitney_p(area: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tie_term: torch.Tensor | None = None) -> torch.Tensor:
    """Two-sided p-value of the Mann-Whitney U test behind ``area`` = U / (pos · neg), by the normal
    approximation with continuity correction (scipy's ``mannwhitneyu(method="asymptotic")``); ``tie_term``
    [U] = Σ(t³ - t) over each unit's runs of tied scores (0 without ties)."""
    n = pos + neg
    u = area * pos * neg
    mu = pos * neg / 2
    ties = 0 if tie_term is None else tie_term[:, None] / (n * (n - 1)).clamp_min(1)
    sigma = torch.sqrt((pos * neg / 12 * ((n + 1) - ties)).clamp_min(1e-300))
    z = ((u - mu).abs() - 0.5) / sigma
    return torch.erfc(z.clamp_min(0) / math.sqrt(2)).clamp(max=1.0)


def tie_terms(scores: torch.Tensor) -> torch.Tensor:
    """Σ(t³ - t) over the runs of tied values of each column of ``scores`` [N, U] (the U test's tie correction)."""
    s = scores.double().sort(0).values
    new = torch.ones_like(s, dtype=torch.bool)
    new[1:] = s[1:] != s[:-1]
    run = new.long().cumsum(0) - 1
    width = torch.zeros_like(s).scatter_add_(0, run, torch.ones_like(s))
    return (width ** 3 - width).sum(0)


def or_compositions(score_ranks: torch.Tensor, members: torch.Tensor, atoms: int = 10, length: int = 3,
                    max_fraction: float = MAX_FRACTION, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, every OR of up to ``length`` (1 to 3) of its ``atoms`` best single concepts by AUC, scored as
    INVERT scores a formula: the AUC of the unit's scores for the images the formula covers (a formula must
    cover some images and at most ``max_fraction`` of them). Exhaustive over those atoms, so it finds at
    least what INVERT's beam search over them finds; the counts and rank sums of unions come by
    inclusion-exclusion from pair and triple intersections, ``chunk`` units at a time.

    Returns ``concepts`` [U, F, 3] (concept numbers, -1 padded) and ``area`` [U, F], each unit's formulas
    best first (shorter first among equals; formulas not allowed last, with NaN)."""
    N, C = members.shape
    U = score_ranks.shape[1]
    m = members.double()
    npos = m.sum(0)
    allowed = (npos > 0) & (npos <= max_fraction * N)
    single = auc(score_ranks, members.bool())                                  # [U, C]
    single = torch.where(allowed[None], single, torch.full_like(single, -1.0))
    k = min(atoms, C)
    top = single.topk(k, dim=1).indices                                        # [U, k]
    slots = [torch.combinations(torch.arange(k), r) for r in range(1, min(length, k) + 1)]
    formulas = torch.cat([F.pad(c, (0, 3 - c.shape[1]), value=-1) for c in slots])   # [F, 3] atom slots
    pair_id = {tuple(p): i for i, p in enumerate(slots[1].tolist())} if len(slots) > 1 else {}
    areas = []
    for lo in range(0, U, chunk):
        a = m.T[top[lo:lo + chunk]]                                            # [u, k, N]
        ar = a * score_ranks[:, lo:lo + chunk].double().T[:, None, :]
        pos = [a.sum(2)]                                                       # per formula length: [u, n_r]
        rank_sum = [ar.sum(2)]
        if len(slots) > 1:
            i, j = slots[1].T
            both, both_r = a @ a.transpose(1, 2), ar @ a.transpose(1, 2)      # [u, k, k]
            pos.append(pos[0][:, i] + pos[0][:, j] - both[:, i, j])
            rank_sum.append(rank_sum[0][:, i] + rank_sum[0][:, j] - both_r[:, i, j])
        if len(slots) > 2:
            i, j, l = slots[2].T
            pid = torch.tensor([pair_id[(x, y)] for x, y in slots[2][:, :2].tolist()])
            pairs = a[:, slots[1][:, 0]] * a[:, slots[1][:, 1]]                # [u, P, N]
            # a triple's intersection: count Σ a_i a_j a_l = (a_i a_j) · a_l, rank sum (a_i a_j) · (a_l r)
            three, three_r = pairs @ a.transpose(1, 2), pairs @ ar.transpose(1, 2)   # [u, P, k]
            pos.append(pos[0][:, i] + pos[0][:, j] + pos[0][:, l] - both[:, i, j] - both[:, i, l] - both[:, j, l]
                       + three[:, pid, l])
            rank_sum.append(rank_sum[0][:, i] + rank_sum[0][:, j] + rank_sum[0][:, l] - both_r[:, i, j]
                            - both_r[:, i, l] - both_r[:, j, l] + three_r[:, pid, l])
        p, r = torch.cat(pos, 1), torch.cat(rank_sum, 1)                      # [u, F]
        area = (r - p * (p + 1) / 2) / (p * (N - p)).clamp_min(1)
        usable = (single[lo:lo + chunk].gather(1, top[lo:lo + chunk]) >= 0)   # [u, k]
        ok = (p > 0) & (p <= max_fraction * N) & (p < N)
        ok &= (usable[:, formulas.clamp_min(0)] | (formulas < 0)).all(2)      # every atom a concept allowed
        areas.append(torch.where(ok, area, torch.full_like(area, float("nan"))))
    area = torch.cat(areas)                                                    # [U, F]
    order = torch.sort(torch.nan_to_num(-area, nan=float("inf")), dim=1, stable=True).indices
    concepts = torch.where(formulas[None] >= 0, top[:, formulas.clamp_min(0)], torch.full((1, 1, 1), -1))   # [U, F, 3]
    return concepts.gather(1, order[..., None].expand(-1, -1, 3)), area.gather(1, order)


def soft_wpmi(similarity: torch.Tensor, scores: torch.Tensor, top_k: int = WPMI["top_k"], a: float = WPMI["a"],
              lam: float = WPMI["lam"], min_prob: float = WPMI["min_prob"], p_start: float = WPMI["p_start"],
              p_end: float = WPMI["p_end"]) -> torch.Tensor:
    """CLIP-Dissect's soft-WPMI [U, C]: ``similarity`` [N, C] image-text cosine similarities, ``scores`` [N, U]
    each unit's image scores. p(c | image) = softmax(a · similarity) over concepts; for a unit's ``top_k``
    images (best first) with weights p falling linearly from p_start to p_end, log p(c | unit) = Σ log(1 +
    p · (p(c | image) − 1) + min_prob); the score subtracts ``lam`` times log p(c), the log of its mean over
    the units of the layer."""
    prob = torch.softmax(a * similarity.double(), dim=1)                        # [N, C]
    k = min(top_k, scores.shape[0])
    # best first, ties (common in the probe's float16 scores) by image row: the same images on every machine
    top = torch.argsort(scores.double(), dim=0, descending=True, stable=True)[:k]   # [k, U]
    weights = (p_start - torch.arange(k, dtype=torch.float64) / top_k * (p_start - p_end))[:, None]   # [k, 1]
    given = torch.stack([torch.log(1 + weights * (prob[top[:, u]] - 1) + min_prob).sum(0)
                         for u in range(scores.shape[1])])                       # [U, C]
    marginal = torch.logsumexp(given, dim=0, keepdim=True) - math.log(given.shape[0])
    return given - lam * marginal
