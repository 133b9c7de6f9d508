"""The label scores against plain versions written from their papers' code (issue 31): NetDissect-Lite's IoU
tally loop, a brute-force AUC, scipy's Mann-Whitney U, CLIP-Dissect's soft-WPMI loop; on fixed inputs, to 1e-6."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builder.labels.scores import (IoUTally, QuantileHistogram, auc, mann_whitney_p, or_compositions, ranks, soft_wpmi,
                                   tie_terms)


def test_the_quantile_threshold_is_within_one_bin_of_the_exact_quantile():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(0, 1.5, (20000, 3)), -rng.random((2000, 3)), np.zeros((100, 3))])
    h = QuantileHistogram(3)
    for chunk in np.array_split(values, 7):
        h.add(torch.from_numpy(chunk))
    found = h.threshold(0.005)
    exact = np.quantile(values, 1 - 0.005, axis=0)
    step = 10 ** (1 / h.per_decade)
    assert np.all(found <= exact) and np.all(exact < found * step), (found, exact)
    assert ((values > found[None]).mean(0) >= 0.005).all()


def netdissect_tally(features, thresholds, images, labels: int, labelcat: np.ndarray):
    """NetDissect-Lite's tally_job and tally, written out as their loop is: per image, per unit, the map
    upsampled bilinearly to the masks' size, thresholded; counts of pixels per label, per (unit, label),
    per (unit, category present under the activated pixels)."""
    units = features.shape[1]
    categories = labelcat.shape[1]
    tally_both = np.zeros((units, labels))
    tally_units_cat = np.zeros((units, categories))
    tally_labels = np.zeros(labels)
    for i, (pixels, scalars) in enumerate(images):
        sh, sw = pixels[0].shape if pixels else (8, 8)
        for s in scalars:
            tally_labels[s] += sh * sw
        if pixels:
            pixels = np.stack(pixels)
            t = np.bincount(pixels.ravel())
            t[0] = 0
            tally_labels[:len(t)] += t
        for u in range(units):
            fmap = torch.from_numpy(features[i, u][None, None])
            mask = F.interpolate(fmap, size=(sh, sw), mode="bilinear", align_corners=False)[0, 0].numpy()
            idx = np.argwhere(mask > thresholds[u])
            tally_cat = np.zeros(categories)
            if len(pixels):
                bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=labels)
                bt[0] = 0
                tally_cat = bt @ labelcat
                tally_both[u] += bt
            for s in scalars:
                tally_cat = tally_cat + labelcat[s]
                tally_both[u, s] += len(idx)
            tally_units_cat[u] += len(idx) * (tally_cat > 0)
    return tally_both / (tally_units_cat @ labelcat.T + tally_labels[None] - tally_both + 1e-10)


def test_iou_equals_netdissect_lites_tally():
    rng = np.random.default_rng(1)
    units, labels, n = 5, 9, 12
    concept_category = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])        # label 0 is "none"; 7, 8 whole-image (scene)
    labelcat = np.eye(3)[concept_category]
    features = rng.normal(size=(n, units, 4, 4)).astype(np.float32)
    thresholds = np.quantile(features.transpose(1, 0, 2, 3).reshape(units, -1), 0.8, axis=1)
    images = []
    for i in range(n):
        obj = rng.integers(0, 4, (8, 8))                       # object labels 1..3 (0: unlabelled)
        part = np.where(rng.random((8, 8)) < 0.3, rng.integers(4, 7, (8, 8)), 0)
        images.append(([obj, part], [7 + i % 2] if i % 3 else []))
    want = netdissect_tally(features, thresholds, images, labels, labelcat)
    tally = IoUTally(units, labels, concept_category, 3)
    for i, (pixels, scalars) in enumerate(images):
        maps = F.interpolate(torch.from_numpy(features[i])[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
        tally.add(maps > torch.from_numpy(thresholds).float()[:, None, None], pixels, scalars)
    np.testing.assert_allclose(tally.iou(), want, atol=1e-6)


def test_auc_is_the_pairwise_count_and_its_p_value_scipys():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    scores = np.round(rng.normal(size=(60, 4)), 1)                           # ties on purpose
    members = rng.random((60, 3)) < np.array([0.2, 0.5, 0.05])
    members[:, 2] = False
    members[:3, 2] = True
    got = auc(ranks(torch.from_numpy(scores)), torch.from_numpy(members)).numpy()
    for u, c in itertools.product(range(4), range(3)):
        pos, neg = scores[members[:, c], u], scores[~members[:, c], u]
        pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
        assert got[u, c] == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    npos = torch.from_numpy(members.sum(0)).double()
    p = mann_whitney_p(torch.from_numpy(got), npos, 60 - npos, tie_terms(torch.from_numpy(scores))).numpy()
    for u, c in itertools.product(range(4), range(3)):
        ref = scipy_stats.mannwhitneyu(scores[members[:, c], u], scores[~members[:, c], u], alternative="two-sided",
                                       method="asymptotic", use_continuity=True).pvalue
        assert p[u, c] == pytest.approx(ref, rel=1e-6, abs=1e-12)


def formulas(concepts, area):
    """Each unit's allowed formulas as [(concept numbers, AUC)], in the order given; checks that the
    allowed come first, best first."""
    out = []
    for c, a in zip(concepts.tolist(), area.tolist()):
        found = [(tuple(x for x in f if x >= 0), v) for f, v in zip(c, a) if not math.isnan(v)]
        assert all(not math.isnan(v) for v in a[:len(found)]) and [v for _, v in found] == sorted((v for _, v in found), reverse=True)
        out.append(found)
    return out


def test_or_compositions_find_the_planted_disjunction():
    """A unit that fires on images of concept 2 or concept 5 (each a fifth of the data): the best formula
    is their OR, with the AUC brute force gives it, above either alone."""
    rng = np.random.default_rng(3)
    n = 400
    members = torch.from_numpy(rng.random((n, 8)) < 0.2)
    scores = (members[:, 2] | members[:, 5]).double() + 0.3 * torch.from_numpy(rng.normal(size=n))
    r = ranks(scores[:, None])
    best = formulas(*or_compositions(r, members))[0]
    assert set(best[0][0]) == {2, 5}   # atoms in the order of their own AUC
    union = (members[:, 2] | members[:, 5]).numpy()
    pos, neg = scores.numpy()[union], scores.numpy()[~union]
    assert best[0][1] == pytest.approx(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum())
                                       / (len(pos) * len(neg)), abs=1e-12)
    singles = dict((f, s) for f, s in best if len(f) == 1)
    assert best[0][1] > max(singles.values())


def clip_dissect_soft_wpmi(clip_feats, target_feats, top_k=100, a=10, lam=1, min_prob=1e-7, p_start=0.998, p_end=0.97):
    """CLIP-Dissect's similarity.soft_wpmi as its loop runs, in numpy."""
    e = np.exp(a * clip_feats - (a * clip_feats).max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    inds = np.argsort(-target_feats, axis=0, kind="stable")[:top_k]
    p_in = p_start - (np.arange(top_k) / top_k * (p_start - p_end))[:, None]
    rows = []
    for u in range(target_feats.shape[1]):
        rows.append(np.log(1 + p_in * (probs[inds[:, u]] - 1) + min_prob).sum(0))
    given = np.stack(rows)
    m = given.max(0, keepdims=True)
    prob_d = m + np.log(np.exp(given - m).sum(0, keepdims=True)) - math.log(given.shape[0])
    return given - lam * prob_d


def test_soft_wpmi_equals_clip_dissects():
    rng = np.random.default_rng(4)
    sim = rng.uniform(-0.2, 0.4, (300, 12))
    scores = rng.normal(size=(300, 7))
    got = soft_wpmi(torch.from_numpy(sim), torch.from_numpy(scores)).numpy()
    np.testing.assert_allclose(got, clip_dissect_soft_wpmi(sim, scores), atol=1e-6)


def test_or_compositions_score_every_formula_as_brute_force_does():
    rng = np.random.default_rng(5)
    n = 300
    members = torch.from_numpy(rng.random((n, 12)) < rng.uniform(0.03, 0.2, 12))
    scores = torch.from_numpy(np.round(rng.normal(size=(n, 3)), 2))
    concepts, area = or_compositions(ranks(scores), members, chunk=2)   # units in two chunks
    assert area.shape == (3, 10 + 45 + 120)
    for u, found in enumerate(formulas(concepts, area)):
        s = scores[:, u].numpy()
        for formula, area in found:
            covered = members[:, list(formula)].any(1).numpy()
            pos, neg = s[covered], s[~covered]
            want = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
            assert area == pytest.approx(want, abs=1e-9) and covered.mean() <= 0.5
        assert {len(f) for f, _ in found} == {1, 2, 3}
