"""The dataset probe: one pass over an image folder scores every unit of every chosen layer.

Score of an image for a unit = mean over the patch grid of the unit's activation (what the engine
maximizes). Each layer keeps, on the device, a running top-k per unit (score, image index, patch
map) and running statistics. Ties go to the lower image index: batches arrive in index order and
the merge is a stable sort, so results do not depend on batch size or worker count. The running
state is saved every few minutes, so a killed pass resumes where it was.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from atlas.dataset import Dataset, paths_sha256, write_dataset
from atlas.flags import THRESHOLDS, flag_values
from atlas.folder import prepare_atlas_folder
from atlas.format import DATASET, PROBE_STATE, AtlasError, check_model_name, score_file, shard_path
from atlas.log import append_log
from atlas.manifest import write_manifest
from atlas.quarantine import quarantine
from atlas.shard import atomic_file, remove_stale_temps, write_part

from .dataset import ImageDataset, ImageIndex, collate, loader_workers
from .models import LoadedModel
from .device import DEFAULT_DEVICE, DEFAULT_PRECISION, autocast, resolve_device, resolve_precision
from .plan import existing_shards, layer_attrs, plan_ranges, select_layers
from .related import MODES, ScoreStore, complete_related, score_file_of
from .sites import Layer, run_to
from .defaults import BATCH_SIZE, CHECKPOINT_SECONDS, RELATED_K, SHARD_UNITS, SKETCH_DIMS, TOP_K


def hist_edges() -> np.ndarray:
    """Fixed histogram edges: 0 and +-10^(i/8) for i in -24..24 (1e-3 to 1e3, 8 bins a decade).
    Scores below the first edge count in the first bin, above the last in the last."""
    pos = 10.0 ** (np.arange(-24, 25) / 8)
    return np.concatenate([-pos[::-1], [0.0], pos])


class LayerProbe:
    """Running top-k and statistics of every unit of one layer."""

    def __init__(self, units: int, grid: tuple[int, int], k: int, device: torch.device):
        self.k = k
        self.edges = torch.tensor(hist_edges(), device=device)
        self.score = torch.full((units, k), -torch.inf, device=device)
        self.index = torch.full((units, k), -1, dtype=torch.long, device=device)
        self.map = torch.zeros((units, k, *grid), device=device)
        self.sum = torch.zeros(units, dtype=torch.float64, device=device)
        self.max = torch.full((units,), -torch.inf, device=device)
        self.positive = torch.zeros(units, dtype=torch.long, device=device)
        self.hist = torch.zeros((units, len(self.edges) - 1), dtype=torch.long, device=device)
        self.count = 0

    def update(self, grid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Fold in a batch: grid [B, h, w, units] (float), index [B] (ascending, after all seen so far).
        Returns the batch's scores [units, B]."""
        B, units, k = grid.shape[0], self.score.shape[0], self.k
        scores = grid.mean(dim=(1, 2)).T.contiguous()                          # [units, B]
        self.sum += scores.sum(1, dtype=torch.float64)
        self.max = torch.maximum(self.max, scores.max(1).values)
        self.positive += (scores > 0).sum(1)
        bins = (torch.bucketize(scores, self.edges, right=True) - 1).clamp(0, self.hist.shape[1] - 1)
        self.hist.scatter_add_(1, bins, torch.ones_like(bins))
        self.count += B
        candidates = torch.cat([self.score, scores.nan_to_num(nan=-torch.inf)], dim=1)  # [units, k + B]
        order = candidates.sort(dim=1, descending=True, stable=True).indices[:, :k]
        from_batch = order >= k
        rows = torch.arange(units, device=grid.device)[:, None].expand(units, k)
        batch_maps = grid.permute(3, 0, 1, 2)[rows, (order - k).clamp(min=0)]   # [units, k, h, w]
        kept_maps = self.map[rows, order.clamp(max=k - 1)]
        self.map = torch.where(from_batch[..., None, None], batch_maps, kept_maps)
        self.index = torch.where(from_batch, index[(order - k).clamp(min=0)], self.index.gather(1, order.clamp(max=k - 1)))
        self.score = candidates.gather(1, order)
        return scores

    def rows(self, start: int, stop: int, new_row: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        """The probe part's datasets for units [start, stop); image indices mapped to dataset rows;
        ``labels`` (by dataset row) give the flags' classes."""
        index = self.index[start:stop].cpu().numpy()
        n = max(self.count, 1)
        topk = np.where(index >= 0, new_row[np.maximum(index, 0)], -1).astype(np.int64)
        maps = self.map[start:stop].cpu().numpy().astype(np.float16)
        flags = flag_values(topk, maps, labels)        # from the stored maps: anyone can re-derive them
        return {
            **{f"flags/{name}": value for name, value in flags.items()},
            "topk/index": topk,
            "topk/score": self.score[start:stop].cpu().numpy().astype(np.float32),
            "topk/map": maps,
            "stats/mean": (self.sum[start:stop] / n).cpu().numpy().astype(np.float32),
            "stats/max": self.max[start:stop].cpu().numpy().astype(np.float32),
            "stats/positive": (self.positive[start:stop].double() / n).cpu().numpy().astype(np.float32),
            "stats/hist": self.hist[start:stop].cpu().numpy(),
            "stats/hist_edges": self.edges.cpu().numpy(),
        }

    def state(self) -> dict:
        """Everything needed to continue the pass (for a checkpoint)."""
        return {name: getattr(self, name).cpu() if torch.is_tensor(getattr(self, name)) else getattr(self, name)
                for name in ("score", "index", "map", "sum", "max", "positive", "hist", "count")}

    def load(self, state: dict) -> None:
        """Continue from a checkpointed ``state``."""
        for name, value in state.items():
            setattr(self, name, value.to(self.score.device) if torch.is_tensor(value) else value)


@dataclass
class ProbeJob:
    """What ``build.py probe`` asks for."""
    out: Path
    name: str
    site: str = "ffn"
    layers: str = "all"
    units: str = "all"            # which units get probe parts (the pass scores every unit anyway)
    k: int = TOP_K
    batch_size: int = BATCH_SIZE
    workers: int | None = None    # decoding processes; None: min(8, CPUs)
    device: str = DEFAULT_DEVICE
    precision: str = DEFAULT_PRECISION
    shard_units: int = SHARD_UNITS
    related: str = "auto"         # per-image scores for related units: auto, exact, sketch or off
    related_k: int = RELATED_K    # related units kept per unit and scope
    sketch_dims: int = SKETCH_DIMS # dimensions of the sketch (related = sketch, or auto on large probes)
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    progress: bool = True
    stats: dict = field(default_factory=dict)


def _check_dataset(out: Path, index: ImageIndex) -> None:
    path = out / DATASET
    if path.exists():
        try:
            existing = Dataset(path)
        except AtlasError as e:
            quarantine(out, DATASET, str(e).split(" (", 1)[-1].split(");", 1)[0][:160])
            return
        if existing.attrs.get("candidates_sha256") != paths_sha256(index.paths):
            raise AtlasError(f"{out} was probed on another image set ({existing.attrs.get('root')}, "
                             f"{len(existing)} images); an atlas holds one dataset: use another --out")


def _fingerprint(job: ProbeJob, lm: LoadedModel, layers: list[Layer], index: ImageIndex) -> str:
    what = [job.name, lm.weights, job.site, [layer.index for layer in layers], job.k, job.precision, job.related,
            job.sketch_dims,
            paths_sha256(index.paths), repr(lm.eval_transform())]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _load_state(out: Path, path: Path) -> dict | None:
    """A saved probe state, loaded without running any code from the file (``weights_only``: tensors,
    numbers, strings and containers only). One that cannot be loaded is quarantined: the pass restarts."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict):
            raise ValueError("not a dictionary")
        return state
    except Exception as e:  # noqa: BLE001 (unpickling refuses with many exception types)
        quarantine(out, path.relative_to(out), f"not a probe state this version can load: {str(e).splitlines()[0][:160]}")
        return None


@dataclass
class ProbePass:
    """One pass of the probe over the images: the layers it scores, their running results, the
    per-image score store, and the saved state that lets a killed pass (or its finishing steps) resume."""
    layers: list[Layer]
    plan: dict[int, list[tuple[int, int]]]    # layer -> unit ranges that get a probe part
    probes: list[LayerProbe]
    kept: dict[int, torch.Tensor]             # layer -> the units whose scores the store keeps
    store: ScoreStore
    state_path: Path
    fingerprint: str
    position: int = 0                         # images done
    skipped: dict = field(default_factory=dict)
    seconds: float = 0.0
    finished: bool = False                    # the pass is done; only its finishing steps remain

    def save(self) -> None:
        """Save the running state (atomically): tensors, numbers and strings only."""
        with atomic_file(self.state_path) as tmp:
            torch.save({"fingerprint": self.fingerprint, "position": self.position, "skipped": self.skipped,
                        "layer_indices": [layer.index for layer in self.layers], "seconds": self.seconds,
                        "finished": self.finished, "layers": [p.state() for p in self.probes],
                        "scores": self.store.state()}, tmp)


def _check_job(job: ProbeJob) -> None:
    check_model_name(job.name)
    if job.k < 1 or job.batch_size < 1 or (job.workers or 0) < 0:
        raise AtlasError("--k and --batch-size must be at least 1, --workers at least 0")
    if job.related not in MODES or job.related_k < 1 or job.sketch_dims < 8:
        raise AtlasError(f"--related must be one of {', '.join(MODES)}, --related-k at least 1 and --sketch-dims "
                         "at least 8")


def _plan_pass(lm: LoadedModel, index: ImageIndex, job: ProbeJob, out: Path, selected, device) -> ProbePass | None:
    """The pass to run now: a finished pass whose finishing steps a kill interrupted, else a new or
    checkpointed pass over the layers that still lack probe parts; None when nothing is left to do."""
    existing = existing_shards(out, job.name, job.site, lm)
    plan = {layer.index: plan_ranges(existing.get(layer.index, []), units, job.shard_units, "probe")
            for layer, units in selected}
    state_path = out / PROBE_STATE / f"{job.name}-{job.site}.pt"
    state = _load_state(out, state_path)
    chosen = [layer for layer, _ in selected if plan[layer.index]]
    if state is not None and state.get("finished"):
        held = [layer for layer, _ in selected if layer.index in state.get("layer_indices", [])]
        if _fingerprint(job, lm, held, index) == state.get("fingerprint"):
            chosen = held
    if not chosen:
        return None
    units = dict(selected)
    layers = [layer for layer, _ in selected if layer in chosen]
    kept = {layer.index: torch.tensor(units[layer], device=device) for layer in layers}
    run = ProbePass(layers, {layer.index: plan[layer.index] for layer in layers},
                    [LayerProbe(layer.units, layer.grid, job.k, device) for layer in layers], kept,
                    ScoreStore([len(kept[layer.index]) for layer in layers], len(index.paths), job.related,
                               job.sketch_dims, out / PROBE_STATE / f"{job.name}-{job.site}.scores.npy", device),
                    state_path, _fingerprint(job, lm, layers, index))
    if state is not None and state.get("fingerprint") == run.fingerprint and len(state.get("layers", [])) == len(layers):
        run.position, run.skipped = state["position"], state["skipped"]
        run.seconds, run.finished = state.get("seconds", 0.0), bool(state.get("finished"))
        for probe, saved in zip(run.probes, state["layers"]):
            probe.load(saved)
        run.store.load(state.get("scores", {}))
    return run


def _scan(lm: LoadedModel, index: ImageIndex, job: ProbeJob, run: ProbePass, device) -> None:
    """The pass itself: every image from ``run.position`` on, one forward per batch hooked at every
    layer; the state is saved every ``job.checkpoint_seconds`` and once the pass is done."""
    loader = torch.utils.data.DataLoader(
        ImageDataset(index, lm.eval_transform(), run.position), batch_size=job.batch_size,
        num_workers=loader_workers(job.workers), collate_fn=collate, pin_memory=device.type == "cuda")
    bar = tqdm(total=len(index.paths), initial=run.position, unit="img", desc=f"probe {job.name}/{job.site}",
               disable=not job.progress, dynamic_ncols=True, smoothing=0.05)
    t0 = last_save = time.time()
    done_before, seconds_before = run.position, run.seconds
    for ids, x, bad in loader:
        run.skipped.update(bad)
        if x is not None:
            ids_device = ids.to(device)

            def fold(i, grid):
                scores = run.probes[i].update(grid.float(), ids_device)
                run.store.update(i, scores[run.kept[run.layers[i].index]], ids_device)
            with torch.no_grad(), autocast(device, job.precision):
                run_to(lm.model, x.to(device, non_blocking=True), run.layers, on_capture=fold)
        run.position += len(ids) + len(bad)
        bar.update(len(ids) + len(bad))
        if time.time() - last_save > job.checkpoint_seconds:
            run.seconds = seconds_before + time.time() - t0
            run.save()
            last_save = time.time()
    bar.close()
    run.seconds = seconds_before + time.time() - t0
    run.finished = True
    if run.position > done_before:
        run.save()     # from here on, a kill resumes the finishing steps below, never the pass


def _finish(lm: LoadedModel, index: ImageIndex, job: ProbeJob, run: ProbePass, out: Path, device,
            command: str | None) -> None:
    """The finishing steps of a done pass, each skipped when a killed run already did it: dataset.h5,
    the probe parts, the build log, the score file, related.h5, the manifest; then the state goes."""
    good = [i for i in range(len(index.paths)) if i not in run.skipped]
    if not good:
        run.state_path.unlink(missing_ok=True)
        run.store.discard()
        first, why = min(run.skipped.items())
        raise AtlasError(f"none of the {len(index.paths)} image files in {index.root} could be decoded "
                         f"(e.g. {index.paths[first]}: {why}); nothing was written. Point --images at a folder "
                         "of images")
    new_row = np.full(len(index.paths), -1, np.int64)
    new_row[good] = np.arange(len(good))
    if not (out / DATASET).exists():
        write_dataset(out / DATASET, index.root, [index.paths[i] for i in good], index.labels[good],
                      index.class_names, [(index.paths[i], run.skipped[i]) for i in sorted(run.skipped)],
                      {"layout": index.layout, "class_ids": index.class_ids,
                       "candidates_sha256": paths_sha256(index.paths)})
    labels = np.asarray(index.labels)[good] if len(index.labels) else None
    good_sha256 = paths_sha256([index.paths[i] for i in good])
    part_attrs = {"k": job.k, "images": len(good), "transform": repr(lm.eval_transform()),
                  "flag_thresholds": THRESHOLDS,
                  "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in lm.data_config.items()},
                  "precision": job.precision, "dataset_paths_sha256": good_sha256}
    for layer, probe in zip(run.layers, run.probes):
        for start_unit, stop_unit in run.plan[layer.index]:
            attrs = {**layer_attrs(job.name, lm, layer), "unit_start": start_unit, "unit_stop": stop_unit}
            rel = shard_path(job.name, job.site, layer.index, start_unit, stop_unit)
            if not write_part(out / rel, attrs, "probe", probe.rows(start_unit, stop_unit, new_row, labels),
                              part_attrs):
                tqdm.write(f"{rel} already holds its probe part (written earlier, or by another process); kept that one")
    append_log(out, {"stage": "probe", "model": job.name, "site": job.site, "device": str(device),
                     "images": len(index.paths), "seconds": round(run.seconds, 3),
                     "images_per_s": round(len(index.paths) / max(run.seconds, 1e-9), 3)})
    scores = out / score_file(job.name, job.site)
    if not score_file_of(scores, run.fingerprint):
        table = [(layer.index, int(u)) for layer in run.layers for u in run.kept[layer.index].tolist()]
        run.store.write(scores, table, good, {"model": job.name, "site": job.site, "dataset_paths_sha256": good_sha256,
                                              "probe_fingerprint": run.fingerprint})
    run.store.discard()
    if job.related != "off":
        complete_related(out, job.related_k)
    write_manifest(out, command)
    run.state_path.unlink(missing_ok=True)
    job.stats.update(scan_seconds=run.seconds, skipped=len(run.skipped), skipped_files=[(index.paths[i], r) for i, r in sorted(run.skipped.items())])


def run_probe(lm: LoadedModel, index: ImageIndex, job: ProbeJob, command: str | None = None) -> dict:
    """Probe every unit of the chosen layers on the images of ``index`` and write the probe parts:
    check the job, plan the pass (or take up a killed one), run it, finish it."""
    _check_job(job)
    device = resolve_device(job.device)
    job.precision = resolve_precision(job.precision, device, engine=False)
    selected = select_layers(lm, job.site, job.layers, job.units)
    out = prepare_atlas_folder(job.out)
    remove_stale_temps(out)
    _check_dataset(out, index)
    run = _plan_pass(lm, index, job, out, selected, device)
    job.stats.update(images=len(index.paths), layers=len(run.layers) if run else 0,
                     shards=sum(len(v) for v in run.plan.values()) if run else 0, skipped=0)
    if run is None:
        if job.related != "off":
            complete_related(out, job.related_k)     # a kill may have come between the score file and related.h5
        write_manifest(out, command)
        return job.stats
    lm.model.to(device)
    if not run.finished:
        _scan(lm, index, job, run, device)
    _finish(lm, index, job, run, out, device, command)
    return job.stats
