"""`vit-atlas label`: every unit of a site described by concepts, from up to three sources (atlas.labels), each
run when its input is given:

    netdissect    --broden DIR: a concept dataset in Broden's layout; two passes of the model over it (each
                  unit's activation threshold at the top 0.5% of its patch values, then the IoU of its
                  thresholded maps with every concept's masks, NetDissect-Lite's tally)
    invert        the probe's per-image scores with image-level concepts: the dataset's classes (--hierarchy
                  imagenet or FILE widens them by their ancestors) or an attribute table (--attributes CSV)
    clip-dissect  --clip MODEL (an open_clip name/pretrained tag, or `demo`) and a word list (--words FILE, or
                  wordfreq's English words): soft-WPMI of the probe's images' image-text similarities

The probe's exact score file is the input of invert and clip-dissect (no second pass over the dataset).
Each source writes the k best concepts of every unit (``atlas.labels.write_labels``) with its constants.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from atlas.folder import prepare_atlas_folder
from atlas.format import PROBE_STATE, AtlasError
from atlas.images import ImageError, load_rgb
from atlas.labels import concept_set_record, write_labels
from atlas.manifest import write_manifest
from atlas.media import model_view
from atlas.reader import Atlas

from ..dataset import loader_workers
from ..defaults import BATCH_SIZE, CHECKPOINT_SECONDS
from ..device import resolve_device
from ..models import LoadedModel
from ..plan import select_layers
from ..sites import Layer, run_to
from ..spec import LabelSources
from .concepts import Broden, ImageConcepts, attribute_concepts, class_concepts, merge_concepts, read_mask, words
from .scores import (IOU_THRESHOLD, QUANTILE, WPMI, IoUTally, QuantileHistogram, auc, mann_whitney_p, or_compositions,
                     ranks, soft_wpmi, tie_terms)

UNIT_CHUNK = 1024           # units scored at once (ranks: images x units x 8 bytes)


@dataclass
class LabelJob:
    """What `vit-atlas label` was asked for: a site's units and the sources to label them from."""
    out: Path
    name: str
    sources: LabelSources
    site: str = "ffn"
    layers: str = "all"
    batch_size: int = BATCH_SIZE
    workers: int | None = None
    device: str = "auto"
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    command: str = ""
    progress: bool = True


def run_labels(lm: LoadedModel, job: LabelJob) -> dict[str, int]:
    """Label the job's units from every source it names; returns units labelled per source."""
    src = job.sources
    if not src.any():
        raise AtlasError("label needs a source: --broden DIR (pixel concepts), --classes or --attributes CSV "
                         "(image-level concepts), or --clip MODEL (open vocabulary)")
    if not 1 <= src.k <= 100:
        raise AtlasError(f"--k must be 1 to 100, not {src.k}")
    if not 1 <= src.vocabulary <= 1_000_000:
        raise AtlasError(f"--vocabulary must be 1 to 1,000,000 words, not {src.vocabulary}")
    out = prepare_atlas_folder(job.out)
    device = resolve_device(job.device)
    layers = [layer for layer, _ in select_layers(lm, job.site, job.layers, "all")]
    done = {}
    if src.broden:
        done["netdissect"] = label_netdissect(lm, layers, Broden(src.broden), job, device)
    if src.classes or src.hierarchy or src.attributes or src.clip:
        a = Atlas(out)
        scores = a.image_scores(job.name, job.site)
        wanted = {layer.index for layer in layers}
        keep = np.flatnonzero(np.isin(scores.layer, list(wanted)))
        if src.classes or src.hierarchy or src.attributes:
            sets = []
            if src.classes or src.hierarchy:
                sets.append(class_concepts(a.dataset.class_names, a.dataset.labels, src.hierarchy))
            if src.attributes:
                sets.append(attribute_concepts(src.attributes, a.dataset.paths))
            done["invert"] = label_invert(out, job, scores, keep, merge_concepts(sets))
        if src.clip:
            done["clip-dissect"] = label_clip_dissect(out, job, a, scores, keep, device)
    write_manifest(out, job.command)
    return done


def _top(matrix: np.ndarray, k: int, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best columns (indices, -1 padded) and their values (NaN padded)."""
    m = np.where(valid[None], matrix, -np.inf) if valid is not None else matrix
    k = min(k, m.shape[1])
    idx = np.argsort(-m, axis=1, kind="stable")[:, :k]
    val = np.take_along_axis(m, idx, 1)
    idx = np.where(np.isfinite(val), idx, -1)
    return idx, np.where(np.isfinite(val), val, np.nan)


# -- netdissect ---------------------------------------------------------------------------------------

class _BrodenViews(torch.utils.data.Dataset):
    """The concept dataset's images through the model's eval transform, with their masks in the model's
    view at the tally size (nearest-neighbour: label numbers stay label numbers)."""

    def __init__(self, broden: Broden, lm: LoadedModel, masks: bool):
        self.broden, self.transform, self.masks = broden, lm.eval_transform(), masks
        self.config = {**lm.data_config, "interpolation": "nearest"}
        self.size = lm.input_size

    def __len__(self) -> int:
        return len(self.broden.images)

    def __getitem__(self, i: int):
        item = self.broden.images[i]
        try:
            x = self.transform(load_rgb(item.image))
        except ImageError:
            return i, None, [], []
        layers = []
        if self.masks:
            side = min(max(item.mask_size), max(self.size))
            for path in item.masks:
                numbers = read_mask(path)
                rgb = np.stack([numbers % 256, numbers // 256, np.zeros_like(numbers)], -1).astype(np.uint8)
                view = np.asarray(model_view(Image.fromarray(rgb), self.config, side), np.int64)
                layers.append(view[..., 0] + 256 * view[..., 1])
        return i, x, layers, list(item.scalars)


def _batches(dataset, job: LabelJob):
    return torch.utils.data.DataLoader(dataset, batch_size=job.batch_size, num_workers=loader_workers(job.workers),
                                       collate_fn=lambda items: items)


def label_netdissect(lm: LoadedModel, layers: list[Layer], broden: Broden, job: LabelJob, device) -> int:
    """Network Dissection of every unit of ``layers`` over ``broden``: thresholds (pass 1), IoU tallies
    (pass 2), the k best concepts per unit by IoU; resumable after a kill (its state in .probe/)."""
    names, categories = broden.concepts
    valid = np.array([bool(n) for n in names])
    fingerprint = hashlib.sha256(json.dumps([lm.weights, job.site, [l.index for l in layers], broden.sha256(),
                                             QUANTILE]).encode()).hexdigest()
    state_path = Path(job.out) / PROBE_STATE / f"labels-{job.name}.{job.site}.pt"
    state = _load_state(state_path, fingerprint)
    model = lm.model.to(device).eval()
    cats = sorted({c for c in categories if c})
    concept_category = np.array([cats.index(c) if c else 0 for c in categories])
    if state.get("thresholds") is None:
        hists = [QuantileHistogram(layer.units) for layer in layers]
        data = _BrodenViews(broden, lm, masks=False)
        with torch.no_grad():
            for batch in tqdm(_batches(data, job), desc=f"label netdissect {job.name}/{job.site}: thresholds",
                              unit="batch", disable=not job.progress, dynamic_ncols=True):
                x = [item[1] for item in batch if item[1] is not None]
                if not x:
                    continue
                grids = run_to(model, torch.stack(x).to(device), layers)
                for h, grid in zip(hists, grids):
                    h.add(grid.reshape(-1, grid.shape[-1]).float())
        state = {"fingerprint": fingerprint, "thresholds": [torch.from_numpy(h.threshold(QUANTILE)) for h in hists],
                 "position": 0, "tallies": None}
        _save_state(state_path, state)
    thresholds = [t.float().to(device) for t in state["thresholds"]]
    tallies = [IoUTally(layer.units, len(names), concept_category, len(cats)) for layer in layers]
    if state.get("tallies"):
        for t, saved in zip(tallies, state["tallies"]):
            t.labels, t.both, t.units_cat = (x.numpy() for x in saved)
    data = _BrodenViews(broden, lm, masks=True)
    start, last_save = state["position"], time.time()
    subset = torch.utils.data.Subset(data, range(start, len(data)))
    with torch.no_grad(), tqdm(total=len(data), initial=start, desc=f"label netdissect {job.name}/{job.site}: IoU",
                               unit="image", disable=not job.progress, dynamic_ncols=True) as bar:
        for batch in _batches(subset, job):
            good = [item for item in batch if item[1] is not None]
            if good:
                grids = run_to(model, torch.stack([item[1] for item in good]).to(device), layers)
                labels, scalars = _mask_stack([item[2] for item in good], lm.input_size), [item[3] for item in good]
                for grid, t, thr in zip(grids, tallies, thresholds):
                    maps = grid.permute(0, 3, 1, 2).float()                          # [B, U, h, w]
                    up = F.interpolate(maps, size=labels.shape[2:], mode="bilinear", align_corners=False)
                    t.add_batch(up > thr[None, :, None, None], labels, scalars)
            state["position"] += len(batch)
            bar.update(len(batch))
            if time.time() - last_save > job.checkpoint_seconds:
                state["tallies"] = [tuple(torch.from_numpy(x) for x in (t.labels, t.both, t.units_cat)) for t in tallies]
                _save_state(state_path, state)
                last_save = time.time()
    table = {"layer": [], "unit": [], "concept": [], "score": [], "extra": []}
    for layer, t, thr in zip(layers, tallies, state["thresholds"]):
        iou = t.iou()
        idx, val = _top(iou, job.sources.k, valid)
        table["layer"] += [layer.index] * layer.units
        table["unit"] += list(range(layer.units))
        table["concept"].append(idx)
        table["score"].append(val.astype(np.float32))
        table["extra"].append(np.repeat(thr.numpy().astype(np.float32)[:, None], idx.shape[1], 1))
    write_labels(job.out, job.name, job.site, "netdissect",
                 {**{k: np.concatenate(v) if k in ("concept", "score", "extra") else np.asarray(v) for k, v in table.items()},
                  "names": names, "categories": categories},
                 {**concept_set_record(Path(broden.root).name, names, categories), "concept_dataset": str(broden.root),
                  "concept_dataset_sha256": broden.sha256(), "quantile": QUANTILE, "iou_threshold": IOU_THRESHOLD,
                  "images": len(broden.images), "tally": "masks in the model's view; maps upsampled bilinearly"})
    state_path.unlink(missing_ok=True)
    return len(table["unit"])


def _mask_stack(masks: list[list[np.ndarray]], input_size: tuple[int, int]) -> np.ndarray:
    """A batch's mask layers as one array [B, L, sh, sw], layers padded with 0 (no concept); images without
    masks get empty layers at half the input size (NetDissect's 112 for 224)."""
    shapes = {m.shape for layers in masks for m in layers}
    if len(shapes) > 1:
        raise AtlasError(f"the concept dataset's masks come in several sizes {sorted(shapes)[:3]} in the model's view; "
                         "give masks of one size (Broden's are all 112 x 112)")
    shape = shapes.pop() if shapes else (max(input_size) // 2,) * 2
    out = np.zeros((len(masks), max(1, max(len(layers) for layers in masks)), *shape), np.int64)
    for b, layers in enumerate(masks):
        for i, m in enumerate(layers):
            out[b, i] = m
    return out


def _load_state(path: Path, fingerprint: str) -> dict:
    if path.is_file():
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception:   # noqa: BLE001 - a damaged state is started over
            state = {}
        if isinstance(state, dict) and state.get("fingerprint") == fingerprint:
            return state
    return {}


def _save_state(path: Path, state: dict) -> None:
    from atlas.shard import atomic_file
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


# -- invert ------------------------------------------------------------------------------------------

def label_invert(out: Path, job: LabelJob, scores, keep: np.ndarray, concepts: ImageConcepts) -> int:
    """INVERT's scores of every kept unit: AUC and p-value for every concept, the k best, and the best OR of
    up to three concepts (each covering at most half of the images)."""
    members = torch.from_numpy(concepts.members)
    fraction = concepts.members.mean(0)
    valid = (fraction > 0) & (fraction < 1)
    table = {"layer": scores.layer[keep], "unit": scores.unit[keep], "concept": [], "score": [], "extra": [],
             "formula": [], "formula_score": []}   # formula: one string per unit; the rest arrays per chunk
    pos = members.double().sum(0)
    for lo in tqdm(range(0, len(keep), UNIT_CHUNK), desc=f"label invert {job.name}/{job.site}", unit="chunk",
                   disable=not job.progress, dynamic_ncols=True):
        cols = keep[lo:lo + UNIT_CHUNK]
        s = torch.from_numpy(scores.scores[:, cols].astype(np.float32))
        r = ranks(s)
        area = auc(r, members)
        p = mann_whitney_p(area, pos[None], len(s) - pos[None], tie_terms(s))
        idx, val = _top(area.numpy(), job.sources.k, valid)
        table["concept"].append(idx)
        table["score"].append(val.astype(np.float32))
        table["extra"].append(np.where(idx >= 0, np.take_along_axis(p.numpy(), np.maximum(idx, 0), 1), np.nan).astype(np.float32))
        formula, formula_area = or_compositions(r, members)
        for f in formula[:, 0].tolist():
            table["formula"].append(" OR ".join(concepts.names[c] for c in f if c >= 0))
        table["formula_score"].append(formula_area[:, 0].numpy())
    write_labels(out, job.name, job.site, "invert",
                 {**{k: np.concatenate(v) if k in ("concept", "score", "extra", "formula_score") else np.asarray(v)
                     for k, v in table.items()},
                  "names": concepts.names, "categories": concepts.categories},
                 {**concept_set_record(concepts.name, concepts.names, concepts.categories), "images": len(members),
                  "p_value": "two-sided Mann-Whitney U, normal approximation with tie and continuity corrections",
                  "formula": "best OR of up to 3 of each unit's 10 best concepts (all 175 formulas scored), covering at "
                             "most half of the images"})
    return len(keep)


# -- clip-dissect ----------------------------------------------------------------------------------

def label_clip_dissect(out: Path, job: LabelJob, a: Atlas, scores, keep: np.ndarray, device) -> int:
    """CLIP-Dissect's soft-WPMI of every kept unit for every word of the vocabulary, per layer (its p(c) is
    over the layer's units), the k best per unit."""
    from .imagetext import load_image_text_model
    src = job.sources
    model = load_image_text_model(src.clip, device)
    if src.words is None and model.default_words:   # a model made for its own words (the demo's) names them
        vocabulary, categories = (list(x) for x in zip(*model.default_words))
        set_name = f"{model.name} words"
    else:
        vocabulary, set_name = words(src.words, src.vocabulary)
        categories = ["word"] * len(vocabulary)
    text = model.embed_texts(vocabulary)                                          # [C, d]
    d = a.dataset
    images = []
    for lo in tqdm(range(0, len(d.paths), job.batch_size), desc=f"label clip-dissect: images through {model.name}",
                   unit="batch", disable=not job.progress, dynamic_ncols=True):
        batch = []
        for path in d.paths[lo:lo + job.batch_size]:
            try:
                batch.append(load_rgb(d.root / path))
            except ImageError:
                batch.append(None)
        images.append(model.embed_images(batch))
    similarity = torch.cat(images) @ text.T                                      # [N, C] cosine
    table = {"layer": scores.layer[keep], "unit": scores.unit[keep], "concept": [], "score": [], "extra": []}
    for layer in sorted(set(scores.layer[keep].tolist())):
        cols = keep[scores.layer[keep] == layer]
        wpmi = soft_wpmi(similarity.double(), torch.from_numpy(scores.scores[:, cols].astype(np.float32))).numpy()
        idx, val = _top(wpmi, job.sources.k)
        table["concept"].append(idx)
        table["score"].append(val.astype(np.float32))
        table["extra"].append(np.full(idx.shape, np.nan, np.float32))
    order = np.concatenate([np.flatnonzero(scores.layer[keep] == layer) for layer in sorted(set(scores.layer[keep].tolist()))])
    table["layer"], table["unit"] = table["layer"][order], table["unit"][order]
    write_labels(out, job.name, job.site, "clip-dissect",
                 {**{k: np.concatenate(v) if k in ("concept", "score", "extra") else np.asarray(v) for k, v in table.items()},
                  "names": vocabulary, "categories": categories},
                 {**concept_set_record(set_name, vocabulary, categories), "model": model.name,
                  "images": len(d.paths), **{f"wpmi_{k}": v for k, v in WPMI.items()}})
    return len(keep)
