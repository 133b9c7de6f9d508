"""Concepts by depth (paper Fig. 1, 7, Sec. 5; Network Dissection's Fig. 5): per layer, the share of units
whose best label is a colour, texture, material, part, object or scene, from each label source in the atlas.
The paper's reading is that features progress from colours and textures to parts and objects with depth;
this measures it with the atlas's labels (``vit-atlas label``), and compares the atlas's models, supervised
against CLIP-trained (Sec. 6), whatever the shares turn out to be.

A unit counts for the category of its best concept when that concept passes its source's bar: netdissect
a detector (IoU >= NetDissect-Lite's 0.04), invert a Bonferroni-significant AUC above 0.5 (p < 0.05 over
the concept set), clip-dissect always (soft-WPMI has no bar); other units count as "none".
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import atlas
from atlas.format import AtlasError
from atlas.labels import CATEGORIES, SOURCES, label_file
from atlas.manifest import sha256_file

from ..labels.scores import IOU_THRESHOLD
from .common import AnalysisJob

NAME = "concepts-by-depth"
ALPHA = 0.05          # invert: the family-wise error rate of a unit's best concept (Bonferroni over the set)


def _sites(job: AnalysisJob) -> dict[str, dict]:
    """The labelled sites of the job's model: site -> its label sources (atlas.labels.read_label_file)."""
    a = atlas.open(job.out)
    if job.name not in a.models:
        return {}
    return {site: sources for site in a.sites(job.name) if (sources := a.label_sources(job.name, site))}


def applies(lm, job: AnalysisJob) -> str | None:
    """None when the atlas holds labels of the model's units, else why not."""
    try:
        found = _sites(job)
    except AtlasError as e:
        return str(e)
    return None if found else f"the atlas holds no labels of {job.name}: run `vit-atlas label` first"


def inputs(job: AnalysisJob) -> dict:
    """The label files the results come from (a new labelling reruns the analysis)."""
    return {site: sha256_file(Path(job.out) / label_file(job.name, site)) for site in sorted(_sites(job))}


def passes(source: str, score: float, p_value: float | None, concepts: int) -> bool:
    """Whether a unit's best concept of ``source`` is strong enough to count (module docstring)."""
    if source == "netdissect":
        return score >= IOU_THRESHOLD
    if source == "invert":
        return score > 0.5 and p_value is not None and p_value * concepts < ALPHA
    return True


def training(model: str) -> str:
    """How a model was trained, as far as its timm name says: CLIP-trained when the name says clip
    (vit_base_patch16_clip_224.openai, ...), else supervised."""
    return "CLIP-trained" if "clip" in model.lower() else "supervised"


def run(lm, job: AnalysisJob, device) -> dict:
    """Per site, source and layer: how many units' best concept falls in each category."""
    a = atlas.open(job.out)
    out = {"training": training(job.name), "sites": {}}
    for site, sources in _sites(job).items():
        per_source = {}
        for source, data in sources.items():
            concepts = len(data["names"])
            layers: dict[int, Counter] = {}
            for i, (layer, unit) in enumerate(zip(data["layer"].tolist(), data["unit"].tolist())):
                c, score = int(data["concept"][i, 0]), float(data["score"][i, 0])
                p = float(data["extra"][i, 0]) if source == "invert" else None
                ok = c >= 0 and score == score and passes(source, score, p, concepts)
                layers.setdefault(layer, Counter())[data["categories"][c] if ok else "none"] += 1
            per_source[source] = {"concept_set": data["attrs"].get("concept_set", ""), "concepts": concepts,
                                  "layers": {str(layer): dict(sorted(n.items())) for layer, n in sorted(layers.items())}}
        out["sites"][site] = per_source
    a.close()
    return out


def _order(categories) -> list[str]:
    """Broden's categories first, in their order, then any other (word, class, ...), then none."""
    rest = sorted(set(categories) - set(CATEGORIES) - {"none"})
    return [c for c in CATEGORIES if c in categories] + rest + (["none"] if "none" in categories else [])


def describe(results: dict) -> dict:
    """Per model, site and source: a table and a chart of category shares by layer; then the models side by
    side, supervised against CLIP-trained."""
    tables, charts, compare = [], [], []
    for model, r in results.items():
        for site, per_source in r["sites"].items():
            for source in [s for s in SOURCES if s in per_source]:
                d = per_source[source]
                cats = _order({c for n in d["layers"].values() for c in n})
                rows = []
                series = {c: [] for c in cats}
                for layer, n in d["layers"].items():
                    total = sum(n.values())
                    rows.append([layer, total, *(f"{n.get(c, 0) / total:.0%}" for c in cats)])
                    for c in cats:
                        series[c].append([int(layer), n.get(c, 0) / total])
                tables.append({"caption": f"{model} · {site} · {source} ({SOURCES[source]}, {d['concept_set']}): "
                                          "share of each layer's units by their best concept's category",
                               "columns": ["layer", "units", *cats], "rows": rows})
                if len(d["layers"]) > 1:
                    charts.append({"type": "lines", "y_range": [0, 1], "title": f"{model} · {site} · {source}",
                                   "x_label": "layer", "y_label": "share of units", "series": series,
                                   "caption": f"{model} ({r['training']}), {site}, {source}: share of each layer's "
                                              "units whose best concept is of each category."})
                total = Counter()
                for n in d["layers"].values():
                    total.update(n)
                units = sum(total.values())
                compare.append([model, r["training"], site, source, units,
                                ", ".join(f"{c} {total[c] / units:.0%}" for c in _order(total) if total[c])])
    tables.append({"caption": "The atlas's models side by side (the paper's Sec. 6: supervised against CLIP-trained)",
                   "columns": ["model", "training", "site", "source", "units", "best concepts by category"],
                   "rows": compare})
    return {
        "title": "Concepts by depth",
        "summary": "Which kinds of concept describe each layer's units: the paper sees colours and textures in early "
                   "layers give way to parts and objects in late ones, and CLIP-trained ViTs grow units for "
                   "concepts that are not objects. The shares below are measured from the atlas's labels, as they "
                   "are.",
        "method": "Each unit counts for the category of its best concept from a label source, when that concept "
                  f"passes the source's bar: netdissect a detector (IoU >= {IOU_THRESHOLD}, NetDissect-Lite), invert "
                  f"a best AUC above 0.5 with a Bonferroni-corrected p-value below {ALPHA} over its concept set, "
                  "clip-dissect always (soft-WPMI has no such bar); other units count as none. A model is "
                  "CLIP-trained when its timm name says clip, else supervised.",
        "tables": tables,
        "charts": charts,
    }
