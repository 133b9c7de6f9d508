"""The visualize runner: claims shards, sizes balanced batches to memory, retries out-of-memory and NaN
batches, writes picture parts, resumes what a killed run left; and the calibration that times it."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from atlas.format import AtlasError, check_model_name, picture_part, shard_path
from atlas.log import append_log
from atlas.manifest import write_manifest
from atlas.folder import prepare_atlas_folder
from atlas.locks import Lock, lock_path
from atlas.shard import remove_stale_temps, shard_holds, write_part

from .device import (DEFAULT_COMPILE, DEFAULT_DEVICE, DEFAULT_PRECISION, compute_dtype, resolve_compile,
                     resolve_device, resolve_precision)
from .forward import planned_pass_flops, unit_forward
from .models import LoadedModel
from .recipe import Recipe, unit_seed
from .sites import Layer, run_to
from .visualize import Step, optimize_units
from .plan import Task, existing_shards, layer_attrs, load_spec_model, plan_ranges, recipe_of, select_layers
from .spec import BuildSpec
from .defaults import SEED, SHARD_UNITS


def bytes_per_image(lm: LoadedModel, layer: Layer, device: torch.device) -> int:
    """Bytes of module outputs one image produces on its way to ``layer`` (what backward keeps)."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if torch.is_tensor(output):
            total += output.numel() * output.element_size()

    leaves = [m for m in lm.model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            run_to(lm.model, torch.rand(1, 3, *lm.input_size, device=device), [layer])
    finally:
        for h in handles:
            h.remove()
    return total


def auto_batch_units(lm: LoadedModel, layer: Layer, recipe: Recipe, device: torch.device,
                     precision: str = "fp32", forward=None) -> int:
    """Units that fit in one batch. On CUDA: 80% of the available memory over the peak one unit needed
    in a measured one-step trial (``Recipe.trial``: a step that allocates what the recipe's first does). On CPU: a 768 MiB budget (much larger CPU batches fall out of cache
    and run slower per image) over an estimate of 4x the module outputs of the unit's copies."""
    if device.type == "cuda":
        trial = recipe.trial()
        units = list(range(min(2, layer.units)))
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        optimize_units(lm, layer, units, units, trial, device, precision, forward)
        per_unit = (torch.cuda.max_memory_allocated(device) - base) / len(units)
        available = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) \
            - torch.cuda.memory_allocated(device)
        return max(1, int(0.8 * available // max(per_unit, 1)))
    per_unit = 4 * recipe.batch_copies * bytes_per_image(lm, layer, device)
    return max(1, int(768 * 2**20 // max(per_unit, 1)))


def balanced_batches(n: int, fit: int) -> list[int]:
    """Sizes of the fewest batches of at most ``fit`` that hold ``n`` units, as equal as possible
    (``ceil(n / ceil(n / fit))`` or one less): 256 units at 115 per batch run as 86 + 85 + 85, not
    115 + 115 + 26."""
    count = -(-n // max(fit, 1))
    return [n // count + (i < n % count) for i in range(count)] if n else []


@dataclass
class VisualizeJob:
    """What ``build.py visualize`` asks for."""
    out: Path
    name: str
    recipe: Recipe
    site: str = "ffn"
    layers: str = "all"
    units: str = "all"
    seed: int = SEED
    device: str = DEFAULT_DEVICE
    precision: str = DEFAULT_PRECISION
    compile: str = DEFAULT_COMPILE
    batch_units: int | None = None
    shard_units: int = SHARD_UNITS
    max_retries: int = 2
    progress: bool = True
    stats: dict = field(default_factory=dict)

    @property
    def part(self) -> str:
        """The shard part this job's pictures go to: "viz" for the paper's pixel images, else the
        parametrization's own ("fourier")."""
        return picture_part(self.recipe.parametrization)


@dataclass
class LayerRun:
    """What every batch of one layer shares: the forward, the (compiled) step, the resolved precision,
    and the batch size every batch is run at (padded: one shape, one graph)."""
    layer: Layer
    precision: str
    forward: object
    step: Step
    batch: int = 1


def _optimize_with_retries(job: VisualizeJob, lm: LoadedModel, run: LayerRun, units: list[int],
                           device: torch.device):
    """Optimize ``units``; units whose run hit NaN/inf are rerun with a derived seed (up to
    ``job.max_retries`` times) and flagged ``failed`` if it persists."""
    layer = run.layer
    seeds = [unit_seed(job.name, layer.site, layer.index, u, job.seed) for u in units]
    result = optimize_units(lm, layer, units, seeds, job.recipe, device, run.precision, run.forward, run.step,
                            pad_to=run.batch)
    retries = np.zeros(len(units), np.uint8)
    for attempt in range(1, job.max_retries + 1):
        bad = np.flatnonzero(~result.finite)
        if not len(bad):
            break
        again = [units[i] for i in bad]
        new_seeds = [unit_seed(job.name, layer.site, layer.index, u, job.seed, attempt) for u in again]
        redo = optimize_units(lm, layer, again, new_seeds, job.recipe, device, run.precision, run.forward, run.step,
                              pad_to=run.batch)
        for j, i in enumerate(bad):
            for name in ("image", "activation", "map", "loss", "finite"):
                getattr(result, name)[i] = getattr(redo, name)[j]
            seeds[i], retries[i] = new_seeds[j], attempt
    return result, seeds, retries


PICTURE_FIELDS = ("image", "activation", "map", "loss")


def _picture_data(rows: dict[int, tuple], start: int, stop: int) -> dict:
    """The picture part's datasets of units [start, stop) from the per-unit results."""
    units = range(start, stop)
    data = {name: np.stack([rows[u][0][name] for u in units]) for name in PICTURE_FIELDS}
    data["activation"] = data["activation"].astype(np.float32)
    data["loss"] = data["loss"].astype(np.float32)
    data["seed"] = np.array([rows[u][1] for u in units], np.int64)
    data["retries"] = np.array([rows[u][2] for u in units], np.uint8)
    data["failed"] = np.array([not rows[u][0]["finite"] for u in units])
    return data


def visualize_shards(lm: LoadedModel, job: VisualizeJob, plan: list[tuple[Layer, int, int]],
                     device: torch.device) -> None:
    """Optimize and write the shards in ``plan`` ((layer, unit_start, unit_stop) each), with a progress
    bar and one build-log line per shard.

    The units of a layer run in balanced batches of the size memory allows, across shard boundaries
    (a unit's result does not depend on its batch); a shard is written as soon as its last unit is
    done, so a killed run loses at most the shards in flight. Each shard is claimed first (a lock in
    ``.locks/claims``): shards another live process is computing are left to it, and waited for at
    the end; if that process dies, this one computes them.
    """
    out = Path(job.out)
    part = job.part

    def claim_lock(rel: str) -> Lock:
        return Lock(lock_path(out, f"claims/{rel}.{part}"))

    precision = resolve_precision(job.precision, device)
    compile = resolve_compile(job.compile, device)
    bar = tqdm(total=sum(stop - start for _, start, stop in plan), unit="unit", desc=f"visualize {job.name}/{job.site}",
               disable=not job.progress, dynamic_ncols=True, smoothing=0.05)
    waiting = list(plan)
    while waiting:
        claimed, others = [], []
        for layer, start, stop in waiting:
            rel = shard_path(job.name, layer.site, layer.index, start, stop)
            claim = claim_lock(rel)
            if shard_holds(out / rel, part):
                bar.update(stop - start)
                job.stats["by_others"] = job.stats.get("by_others", 0) + 1
            elif claim.acquire():
                claimed.append((layer, start, stop, claim))
            else:
                others.append((layer, start, stop))
        if others and not claimed:
            layer, start, stop = others[0]
            holder = claim_lock(shard_path(job.name, layer.site, layer.index, start, stop)).holder() or {}
            bar.set_postfix_str(f"waiting for {len(others)} shards that {holder.get('host', '?')} pid "
                                f"{holder.get('pid', '?')} is computing")
            time.sleep(5)
        try:
            _visualize_claimed(lm, job, claimed, device, precision, compile, bar)
        finally:
            for *_, claim in claimed:
                claim.release()
        waiting = others
    bar.close()


def _visualize_claimed(lm, job, claimed, device, precision, compile, bar) -> None:
    """Compute the claimed shards, layer by layer, writing each as soon as its units are done. Every
    batch of a layer has one size (the last padded), so a compiled step keeps one graph per layer."""
    out = Path(job.out)
    by_layer: dict[int, list] = {}
    for layer, start, stop, _claim in claimed:
        by_layer.setdefault(layer.index, []).append((layer, start, stop))
    for ranges in by_layer.values():
        layer = ranges[0][0]
        forward = unit_forward(lm, layer, compute_dtype(precision), device)
        run = LayerRun(layer, precision, forward, Step(forward, compile, device))
        units = [u for _, start, stop in ranges for u in range(start, stop)]
        fit = job.batch_units or auto_batch_units(lm, layer, job.recipe, device, precision, run.forward)
        run.batch = balanced_batches(len(units), fit)[0]
        pending = sorted((start, stop) for _, start, stop in ranges)
        rows: dict[int, tuple] = {}
        t0, i = time.time(), 0
        while i < len(units):
            chunk = units[i:i + run.batch]
            bar.set_postfix_str(f"L{layer.index:02d} U{chunk[0]}-{chunk[-1]}")
            try:
                result, seeds, retries = _optimize_with_retries(job, lm, run, chunk, device)
            except torch.OutOfMemoryError:
                if run.batch == 1:
                    raise
                run.batch = balanced_batches(len(units) - i, max(1, run.batch // 2))[0]
                torch.cuda.empty_cache()
                tqdm.write(f"CUDA out of memory: continuing with {run.batch} units per batch")
                continue
            for j, u in enumerate(chunk):
                rows[u] = ({name: getattr(result, name)[j] for name in (*PICTURE_FIELDS, "finite")}, seeds[j], retries[j])
            i += len(chunk)
            bar.update(len(chunk))
            while pending and all(u in rows for u in range(*pending[0])):
                start, stop = pending.pop(0)
                _write_picture(out, job, lm, run, start, stop, _picture_data(rows, start, stop), device,
                               time.time() - t0)
                for u in range(start, stop):
                    del rows[u]
                t0 = time.time()


def _write_picture(out: Path, job: VisualizeJob, lm: LoadedModel, run: LayerRun, start: int, stop: int, data: dict,
                   device: torch.device, seconds: float) -> None:
    """Write one shard's picture part and its build-log line. The recipe and run seed go with the part;
    the ``viz`` part also keeps them as shard attributes, as format 1.0 and 1.1 readers expect. The
    part and the log line record how the step ran (``Step.mode``: compiled, eager, or a fallback)."""
    part, layer = job.part, run.layer
    attrs = {**layer_attrs(job.name, lm, layer), "unit_start": start, "unit_stop": stop}
    if part == "viz":
        attrs.update(recipe=job.recipe.to_dict(), seed=job.seed)
    path = shard_path(job.name, layer.site, layer.index, start, stop)
    if not write_part(out / path, attrs, part, {f"{part}/{name}": value for name, value in data.items()},
                      {"loss_steps": job.recipe.loss_steps(), "device": device.type, "precision": run.precision,
                       "compile": run.step.mode, "recipe": job.recipe.to_dict(), "seed": job.seed}):
        tqdm.write(f"{path} already holds its {part} part (written by another process); kept that one")
        return
    append_log(out, {"stage": "visualize", "shard": path, "part": part, "device": str(device), "units": stop - start,
                     "precision": run.precision, "compile": run.step.mode, "batch_units": run.batch,
                     "seconds": round(seconds, 3), "units_per_s": round((stop - start) / max(seconds, 1e-9), 3)})


def run_visualize(lm: LoadedModel, job: VisualizeJob, command: str | None = None) -> dict:
    """`build.py visualize`: the chosen units into ``job.out`` (``visualize_selection``), then the manifest."""
    stats = visualize_selection(lm, job)
    write_manifest(job.out, command)
    return stats


def visualize_selection(lm: LoadedModel, job: VisualizeJob) -> dict:
    """Visualize the units ``job`` selects into ``job.out``: complete shards are skipped, so a killed run
    resumes. Returns the job's statistics; the manifest is the caller's to write."""
    check_model_name(job.name)
    device = resolve_device(job.device)
    resolve_precision(job.precision, device)
    resolve_compile(job.compile, device)
    if job.batch_units is not None and job.batch_units < 1:
        raise AtlasError(f"--batch-units must be at least 1, not {job.batch_units}")
    selected = select_layers(lm, job.site, job.layers, job.units)
    out = prepare_atlas_folder(job.out)
    remove_stale_temps(out)
    existing = existing_shards(out, job.name, job.site, lm)
    plan = [(layer, start, stop) for layer, units in selected
            for start, stop in plan_ranges(existing.get(layer.index, []), units, job.shard_units, job.part)]
    done = sum(1 for layer, units in selected for u in units
               if any(s <= u < e and job.part in parts for s, e, parts in existing.get(layer.index, [])))
    job.stats.update(units=sum(stop - start for _, start, stop in plan), shards=len(plan), already_done=done,
                     device=str(device))
    visualize_shards(lm, job, plan, device)
    return job.stats


# Calibration: steps per timed run, and the most units it times (the batch a run would use, capped
# so the figure costs the same seconds on every GPU; a full batch of ViT-B/16 on a 24 GB card).
CALIBRATION_STEPS = 4
CALIBRATION_UNITS = 64


def calibrate(spec: BuildSpec, tasks: list[Task]) -> tuple[float, str]:
    """Measured FLOP/s of the engine on this machine's device (in the plan's FLOPs,
    ``planned_pass_flops``, so the projected hours divide like by like), as a run would reach it: the first
    model's middle layer, the batch size a run would choose (at most ``CALIBRATION_UNITS``), the
    spec's precision and compile mode, timed over ``CALIBRATION_STEPS`` steps after an untimed run
    of the same shapes (which compiles)."""
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device)
    first = tasks[0].model
    m = spec.models[first]
    lm = load_spec_model(m, weights=False)
    lm.model.to(device)
    layers = [layer for layer, _ in select_layers(lm, tasks[0].site, m.layers, m.units)]
    layer = layers[len(layers) // 2]
    recipe = recipe_of(spec, m).shortened(CALIBRATION_STEPS)
    forward = unit_forward(lm, layer, compute_dtype(precision), device)
    step = Step(forward, resolve_compile(spec.compile, device), device)
    fit = spec.batch_units or auto_batch_units(lm, layer, recipe, device, precision, forward)
    units = list(range(min(fit, CALIBRATION_UNITS, layer.units)))

    def run():
        optimize_units(lm, layer, units, units, recipe, device, precision, forward, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    run()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    flops = recipe.images_per_unit() * len(units) * planned_pass_flops(lm, [layer])[layer.index]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return flops / seconds, f"{name}, {len(units)} units per batch, {step.mode}"
