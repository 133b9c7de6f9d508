"""A whole atlas from a build spec: `build.py run SPEC.toml`, `plan SPEC.toml`, `finalize DIR`.

Work is split by visualization shard. Every process derives the same list of shards from the spec
alone (never from what is on disk, so processes that start at different times agree), balances it
by estimated cost and takes its part; shards already complete are skipped, which is also how a
killed build resumes. The process that finds every shard complete when it is done takes the
finalize lock and runs the single-process rest: the probe, the analyses, the manifest and the site.
No two processes ever write the same file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from atlas.format import AtlasError, shard_path
from atlas.folder import prepare_atlas_folder
from atlas.locks import Lock, lock_path
from atlas.log import append_log
from atlas.manifest import read_manifest, write_manifest
from atlas.shard import remove_stale_temps, shard_holds, temp_name

from .device import compute_dtype, resolve_compile, resolve_device, resolve_precision
from .forward import planned_pass_flops, unit_forward
from .models import LoadedModel, ModelSource, load_model
from .parts import Part, part_device, partition
from .recipe import Recipe
from .schedule import VisualizeJob, auto_batch_units, plan_ranges, select_layers, visualize_shards
from .spec import BuildSpec, ModelSpec, dump_spec, load_spec

SPEC_COPY = "spec.toml"


@dataclass(frozen=True)
class Task:
    """One picture part of one shard of the build."""
    model: int          # index into spec.models
    site: str
    layer: int
    start: int
    stop: int
    cost: float         # estimated FLOPs
    bytes: int          # estimated size of its data
    part: str = "viz"   # the picture part: "viz" (the paper's) or "fourier"

    def path(self, spec: BuildSpec) -> str:
        return shard_path(spec.models[self.model].atlas_name, self.site, self.layer, self.start, self.stop)


def load_spec_model(m: ModelSpec, weights: bool = True, shapes_only: bool = False) -> LoadedModel:
    """The spec's model, with its weights, or (for calibration) with random ones, or (for planning) as
    shapes only, on the meta device."""
    if weights and not shapes_only:
        source = ModelSource(m.name, m.checkpoint, m.random_init, m.init_seed)
    else:
        source = ModelSource(m.name, random_init=True, init_seed=m.init_seed)
    return load_model(source, shapes_only=shapes_only, **m.model_args)


def recipe_of(spec: BuildSpec, m: ModelSpec, part: str = "viz") -> Recipe:
    """The recipe of a model's picture ``part`` ("viz": the paper's picture)."""
    return (m.recipe or spec.recipe) if part == "viz" else spec.pictures[part]


def plan_tasks(spec: BuildSpec) -> list[Task]:
    """Every picture part of every shard the spec asks for, with its estimated cost, in a fixed order."""
    tasks = []
    for i, m in enumerate(spec.models):
        if not m.visualize:
            continue
        lm = load_spec_model(m, shapes_only=True)
        h, w = lm.input_size
        for site in m.sites:
            selected = select_layers(lm, site, m.layers, m.units)
            pass_flops = planned_pass_flops(lm, [layer for layer, _ in selected])
            for layer, units in selected:
                flops = pass_flops[layer.index]
                cells = layer.grid[0] * layer.grid[1]
                for part in ["viz", *m.pictures]:
                    recipe = recipe_of(spec, m, part)
                    unit_bytes = h * w * 3 + 2 * cells + 64 * recipe.loss_points + 64
                    if part == "viz":  # the probe's rows go into the same shards
                        unit_bytes += 2 * cells * spec.k + 16 * spec.k + 512
                    for start, stop in plan_ranges([], units, spec.shard_units, "viz"):
                        n = stop - start
                        tasks.append(Task(i, site, layer.index, start, stop, recipe.images_per_unit() * flops * n,
                                          unit_bytes * n, part))
    return tasks


def shard_done(out: Path, rel: str, part: str = "viz") -> bool:
    """Whether the shard exists under its final name and holds ``part``."""
    return shard_holds(out / rel, part)


def check_room(out: Path, needed: int) -> None:
    """The output folder must be an atlas (or new), writable, and have room for ``needed`` bytes."""
    prepare_atlas_folder(out, "[atlas] out")
    free = shutil.disk_usage(out).free
    if free < needed:
        raise AtlasError(f"{out} has {free / 1e9:.1f} GB free but the build needs about {needed / 1e9:.1f} GB; "
                         "free some space or choose another [atlas] out")


def _keep_spec_copy(spec: BuildSpec) -> None:
    """Write the resolved spec into the atlas once (first process wins); refuse an atlas that was
    built from another spec."""
    text = dump_spec(spec)
    copy = spec.out / SPEC_COPY
    tmp = temp_name(copy)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.link(tmp, copy)               # appears complete or not at all; fails if a copy exists
    except FileExistsError:
        if copy.read_text(encoding="utf-8") != text:
            raise AtlasError(f"{spec.out} was built from another spec ({copy} differs from {spec.path}); "
                             "use another [atlas] out, or delete the old atlas")
    finally:
        tmp.unlink(missing_ok=True)


def spec_of_atlas(out: str | Path) -> BuildSpec:
    """The spec an atlas was built from (the resolved copy it keeps), acting on ``out`` itself: a copied
    or moved atlas is finalized where it is, never where the spec first put it."""
    copy = Path(out) / SPEC_COPY
    if not copy.is_file():
        raise AtlasError(f"{out} has no {SPEC_COPY}: it was not built with `build.py run SPEC`")
    spec = load_spec(copy)
    spec.out = Path(out).resolve()
    return spec


def run_spec(spec: BuildSpec, part: Part, command: str, progress: bool = True) -> dict:
    """This process's part of the build, then the finalize step if every shard is complete."""
    tasks = plan_tasks(spec)
    owner = partition([t.cost for t in tasks], part.count)
    mine = [t for t, o in zip(tasks, owner) if o == part.index]
    todo = [t for t in mine if not shard_done(spec.out, t.path(spec), t.part)]
    check_room(spec.out, sum(t.bytes for t in todo))
    _keep_spec_copy(spec)
    remove_stale_temps(spec.out)
    device = part_device(resolve_device(spec.device), part)
    for i in sorted({t.model for t in todo}):
        m = spec.models[i]
        lm = load_spec_model(m)
        for site in m.sites:
            layers = {layer.index: layer for layer, _ in select_layers(lm, site, m.layers, m.units)}
            for picture in ["viz", *m.pictures]:
                plan = [(layers[t.layer], t.start, t.stop) for t in todo
                        if t.model == i and t.site == site and t.part == picture]
                if plan:
                    job = VisualizeJob(out=spec.out, name=m.atlas_name, recipe=recipe_of(spec, m, picture), site=site,
                                       seed=spec.seed, device=str(device), precision=spec.precision, compile=spec.compile,
                                       batch_units=spec.batch_units, shard_units=spec.shard_units, progress=progress)
                    visualize_shards(lm, job, plan, device)
    stats = {"part": part.index, "parts": part.count, "shards": len(mine), "computed": len(todo),
             "finalized": False}
    missing = [t for t in tasks if not shard_done(spec.out, t.path(spec), t.part)]
    if not missing:
        stats["finalized"] = finalize(spec, command, tasks, progress, wait=False, again=False,
                                     device=device) is not None
    return stats


def build_state(spec: BuildSpec, tasks: list[Task]) -> str:
    """A digest of what a finalize step would work from: the resolved spec and every shard's size and
    modification time. Equal digests: finalizing again would produce the same atlas."""
    h = hashlib.sha256(dump_spec(spec).encode())
    for path in sorted({t.path(spec) for t in tasks}):
        st = (spec.out / path).stat()
        h.update(f"{path} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def finalize(spec: BuildSpec, command: str, tasks: list[Task] | None = None, progress: bool = True,
             wait: bool = True, again: bool = True, device: torch.device | None = None) -> Path | None:
    """Probe, analyses, manifest and site, once every visualization shard exists. Returns the site's
    index page, or None when another process holds the finalize lock or (``again=False``) the atlas
    was already finalized from exactly this state (the racing parts of one build finalize once).
    ``device``: the part's device (the probe and analyses run where its visualization ran)."""
    from atlas.website import render
    from builder.analyses import AnalysisJob, run_analysis
    from builder.dataset import scan_images
    from builder.probe import ProbeJob, run_probe

    tasks = plan_tasks(spec) if tasks is None else tasks
    missing = [t.path(spec) for t in tasks if not shard_done(spec.out, t.path(spec), t.part)]
    if missing:
        raise AtlasError(f"{len(missing)} shards are not complete yet (e.g. {missing[0]}); run `python build.py run "
                         f"{spec.path}` (with the same parts) to finish them first")
    lock = Lock(lock_path(spec.out, "finalize"))
    if not lock.acquire():
        if wait:
            holder = lock.holder() or {}
            raise AtlasError(f"{holder.get('host', 'another host')} pid {holder.get('pid', '?')} is finalizing "
                             f"{spec.out}; wait for it to finish")
        return None
    try:
        state = build_state(spec, tasks)
        if not again and (read_manifest(spec.out) or {}).get("finalized", {}).get("state") == state:
            return None
        append_log(spec.out, {"stage": "finalize", "state": state})
        device = str(device or part_device(resolve_device(spec.device), Part()))
        index = scan_images(spec.images, spec.labels) if spec.images else None
        for m in spec.models:
            if not (m.probe or m.analyses):
                continue
            lm = load_spec_model(m)
            for site in m.sites if m.probe else []:
                run_probe(lm, index, ProbeJob(out=spec.out, name=m.atlas_name, site=site, layers=m.layers, units=m.units,
                                             k=spec.k, batch_size=spec.batch_size, device=device,
                                             precision=spec.precision, related=spec.related,
                                             related_k=spec.related_k, sketch_dims=spec.sketch_dims,
                                             shard_units=spec.shard_units, progress=progress,
                                             workers=spec.workers), command)
            for analysis in m.analyses:
                job = AnalysisJob(out=spec.out, name=m.atlas_name, index=index,
                                  boxes=str(spec.boxes) if spec.boxes else None, batch_size=spec.batch_size,
                                  device=device, limit=spec.limit, seed=spec.seed, command=command,
                                  workers=spec.workers)
                run_analysis(analysis, lm, job, resume=True)
        coverage = {}
        for t in tasks:
            if t.part != "viz":
                continue
            coverage.setdefault(spec.models[t.model].atlas_name, {}).setdefault(t.site, {}).setdefault(
                f"{t.layer:02d}", []).append([t.start, t.stop])
        if lock.lost:
            raise AtlasError(f"the finalize lock of {spec.out} was taken over while this process was stalled; "
                             "the process that took it finishes the atlas")
        write_manifest(spec.out, command, {
            "atlas": spec.atlas_info(),
            "spec": {"file": str(spec.path), "text": dump_spec(spec), "coverage": coverage,
                     "probe": [m.atlas_name for m in spec.models if m.probe],
                     "pictures": {m.atlas_name: m.pictures for m in spec.models if m.pictures}},
            "finalized": {"state": state}})
        return render(spec.out, progress=progress, base_url=spec.url)
    finally:
        lock.release()


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
    from .visualize import Step, optimize_units
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


def plan_report(spec: BuildSpec, parts: int = 1, measure: bool = True) -> str:
    """What `build.py plan` prints: shards, units, FLOPs, hours on this device, bytes, parts."""
    tasks = plan_tasks(spec)
    lines = [f"atlas {spec.name} v{spec.version} -> {spec.out}"]
    for i, m in enumerate(spec.models):
        mine = [t for t in tasks if t.model == i]
        units = sum(t.stop - t.start for t in mine if t.part == "viz")
        what = [w for w, on in (("visualize", m.visualize), ("probe", m.probe)) if on] + m.analyses
        lines.append(f"  {m.atlas_name}: sites {','.join(m.sites)}; pictures {', '.join(['viz', *m.pictures])}; "
                     f"{len({t.path(spec) for t in mine})} shards, {units:,} units, "
                     f"{sum(t.cost for t in mine):.3g} FLOPs; {', '.join(what) or 'nothing'}")
    total_cost = sum(t.cost for t in tasks)
    units = sum(t.stop - t.start for t in tasks if t.part == "viz")
    done = sum(shard_done(spec.out, t.path(spec), t.part) for t in tasks)
    lines.append(f"total: {len({t.path(spec) for t in tasks})} shards, {len(tasks)} pictures to make ({done} already "
                 f"complete), {units:,} units, {total_cost:.3g} FLOPs, "
                 f"about {sum(t.bytes for t in tasks) / 1e9:.2f} GB of shards")
    if measure and tasks:
        rate, device = calibrate(spec, tasks)
        lines.append(f"calibration on {device}: {rate / 1e12:.3f} TFLOP/s achieved by the engine -> "
                     f"{total_cost / rate / 3600:.2f} h of visualization on one such device"
                     + (f", {total_cost / rate / 3600 / parts:.2f} h with {parts} parts" if parts > 1 else "")
                     + " (the probe, analyses and site come on top)")
    if parts > 1:
        owner = partition([t.cost for t in tasks], parts)
        loads = [sum(t.cost for t, o in zip(tasks, owner) if o == p) for p in range(parts)]
        lines.append(f"{parts} parts: " + ", ".join(f"{load / max(total_cost, 1):.0%}" for load in loads)
                     + " of the FLOPs each")
    return "\n".join(lines)
