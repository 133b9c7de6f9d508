"""A whole atlas from a build spec: `build.py run SPEC.toml`, `plan SPEC.toml`, `finalize DIR`.

Work is split by visualization shard. Every process derives the same list of shards from the spec
alone (never from what is on disk, so processes that start at different times agree), balances it
by estimated cost and takes its share; shards already complete are skipped, which is also how a
killed build resumes. The process that finds every shard complete when it is done takes the
finalize lock and runs the single-process rest: the probe, the analyses, the manifest and the website.
No two processes ever write the same file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from atlas.format import AtlasError, SPEC_COPY, command as command_line, score_file
from atlas.folder import prepare_atlas_folder
from atlas.live import LIVE_AUTO_BYTES
from atlas.locks import Lock, lock_path
from atlas.log import append_log
from atlas.manifest import read_manifest, write_manifest
from atlas.shard import remove_stale_temps, temp_name

from .device import resolve_device
from .plan import Task, load_spec_model, plan_tasks, recipe_of, select_layers, shard_done
from .schedule import VisualizeJob, calibrate, visualize_shards
from .shares import Share, partition, share_device
from .spec import BuildSpec, dump_spec, load_spec

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
        raise AtlasError(f"{out} has no {SPEC_COPY}: it was not built with `{command_line('run SPEC')}`")
    spec = load_spec(copy)
    spec.out = Path(out).resolve()
    return spec


def run_spec(spec: BuildSpec, share: Share, command: str, progress: bool = True) -> dict:
    """This process's share of the build, then the finalize step if every shard is complete."""
    tasks = plan_tasks(spec)
    owner = partition([t.cost for t in tasks], share.count)
    mine = [t for t, o in zip(tasks, owner) if o == share.index]
    todo = [t for t in mine if not shard_done(spec.out, t.path(spec), t.part)]
    check_room(spec.out, sum(t.bytes for t in todo))
    _keep_spec_copy(spec)
    remove_stale_temps(spec.out)
    device = share_device(resolve_device(spec.device), share)
    visualize_tasks(spec, todo, device, progress)
    stats = {"share": share.index, "shares": share.count, "shards": len(mine), "computed": len(todo),
             "finalized": False}
    missing = [t for t in tasks if not shard_done(spec.out, t.path(spec), t.part)]
    if not missing:
        stats["finalized"] = finalize(spec, command, tasks, progress, wait=False, again=False,
                                     device=device) is not None
    return stats


def visualize_tasks(spec: BuildSpec, tasks: list[Task], device: torch.device, progress: bool) -> None:
    """Make the pictures of ``tasks``: one model loaded at a time, one visualize run per site and picture."""
    for i in sorted({t.model for t in tasks}):
        m = spec.models[i]
        lm = load_spec_model(m)
        for site in m.unit_sites:
            layers = {layer.index: layer for layer, _ in select_layers(lm, site, m.layers, m.units)}
            for picture in ["viz", *m.pictures]:
                plan = [(layers[t.layer], t.start, t.stop) for t in tasks
                        if t.model == i and t.site == site and t.part == picture]
                if plan:
                    job = VisualizeJob(out=spec.out, name=m.atlas_name, recipe=recipe_of(spec, m, picture), site=site,
                                       seed=spec.seed, device=str(device), precision=spec.precision, compile=spec.compile,
                                       batch_units=spec.batch_units, shard_units=spec.shard_units, progress=progress)
                    visualize_shards(lm, job, plan, device)


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
    """Probe, analyses, manifest and website, once every visualization shard exists. Returns the
    website's index page, or None when another process holds the finalize lock or (``again=False``)
    the atlas was already finalized from exactly this state (the racing shares of one build finalize
    once). ``device``: the share's device (the probe and analyses run where its visualization ran)."""
    from atlas.website import render
    prepare_atlas_folder(spec.out, "the atlas")         # its own folders hold no links before anything is written
    tasks = plan_tasks(spec) if tasks is None else tasks
    missing = [t.path(spec) for t in tasks if not shard_done(spec.out, t.path(spec), t.part)]
    if missing:
        raise AtlasError(f"{len(missing)} shards are not complete yet (e.g. {missing[0]}); run `{command_line('run')} "
                         f"{spec.path}` (with the same shares) to finish them first")
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
        probe_and_analyze(spec, str(device or share_device(resolve_device(spec.device), Share())), command, progress)
        if lock.lost:
            raise AtlasError(f"the finalize lock of {spec.out} was taken over while this process was stalled; "
                             "the process that took it finishes the atlas")
        write_manifest(spec.out, command, {"atlas": spec.atlas_info(), "spec": spec_record(spec, tasks)})
        index = render(spec.out, progress=progress, base_url=spec.url)
        # finalized only once the website is complete: a build killed while rendering renders again
        write_manifest(spec.out, None, {"finalized": {"state": state}})
        return index
    finally:
        lock.release()


def probe_and_analyze(spec: BuildSpec, device: str, command: str, progress: bool) -> None:
    """The probe of every site of every model the spec probes, their labels from the spec's [labels] and their
    layer maps, then each model's analyses (results whose inputs are unchanged are kept)."""
    from builder.analyses import AnalysisJob, run_analysis
    from builder.dataset import scan_images
    from builder.labels import LabelJob, run_labels
    from atlas.reader import Atlas
    from builder.live import LiveJob, make_live, published_bytes
    from builder.maps import compile_in_background, run_maps
    from builder.probe import ProbeJob, run_probe
    index = scan_images(spec.images, spec.labels) if spec.images else None
    if any(m.probe for m in spec.models) and spec.related != "off":
        compile_in_background()            # the maps' compiling overlaps the probe and labels
    for m in spec.models:
        if not (m.probe or m.analyses or m.live != "off" and m.visualize):
            continue
        lm = load_spec_model(m)
        for site in m.unit_sites if m.probe else []:
            run_probe(lm, index, ProbeJob(out=spec.out, name=m.atlas_name, site=site, layers=m.layers, units=m.units,
                                         k=spec.k, batch_size=spec.batch_size, device=device,
                                         precision=spec.precision, related=spec.related,
                                         related_k=spec.related_k, sketch_dims=spec.sketch_dims,
                                         shard_units=spec.shard_units, progress=progress,
                                         workers=spec.workers), command)
            if spec.label_sources and m.labels:
                run_labels(lm, LabelJob(out=spec.out, name=m.atlas_name, sources=spec.label_sources, site=site,
                                        layers=m.layers, batch_size=spec.batch_size, workers=spec.workers,
                                        device=device, command=command, progress=progress))
            if (spec.out / score_file(m.atlas_name, site)).is_file():          # none with related = "off"
                run_maps(spec.out, m.atlas_name, site, spec.seed, command, progress)
        with Atlas(spec.out) as a:
            in_atlas = m.atlas_name in a.models                           # a model with units in the atlas
        if in_atlas and (m.live == "on" or m.live == "auto" and published_bytes(lm, "auto") <= LIVE_AUTO_BYTES):
            make_live(lm, LiveJob(out=spec.out, name=m.atlas_name, command=command))
        for analysis in m.analyses:
            job = AnalysisJob(out=spec.out, name=m.atlas_name, index=index,
                              boxes=str(spec.boxes) if spec.boxes else None, batch_size=spec.batch_size,
                              device=device, limit=spec.limit, seed=spec.seed, command=command,
                              workers=spec.workers)
            run_analysis(analysis, lm, job, resume=True)


def spec_record(spec: BuildSpec, tasks: list[Task]) -> dict:
    """The manifest's ``spec``: the resolved spec and what it asked for, which verify checks coverage
    against (unit ranges per model, site and layer; the models probed; the other pictures)."""
    coverage = {}
    for t in tasks:
        if t.part == "viz":
            coverage.setdefault(spec.models[t.model].atlas_name, {}).setdefault(t.site, {}).setdefault(
                f"{t.layer:02d}", []).append([t.start, t.stop])
    return {"file": str(spec.path), "text": dump_spec(spec), "coverage": coverage,
            "probe": [m.atlas_name for m in spec.models if m.probe],
            "pictures": {m.atlas_name: m.pictures for m in spec.models if m.pictures}}


def plan_report(spec: BuildSpec, shares: int = 1, measure: bool = True) -> str:
    """What `build.py plan` prints: shards, units, FLOPs, hours on this device, bytes, shares."""
    tasks = plan_tasks(spec)
    lines = [f"atlas {spec.name} v{spec.version} -> {spec.out}"]
    for i, m in enumerate(spec.models):
        mine = [t for t in tasks if t.model == i]
        units = sum(t.stop - t.start for t in mine if t.part == "viz")
        what = [w for w, on in (("visualize", m.visualize), ("probe", m.probe)) if on] + m.analyses
        lines.append(f"  {m.atlas_name}: sites {','.join(m.unit_sites)}; pictures {', '.join(['viz', *m.pictures])}; "
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
                     + (f", {total_cost / rate / 3600 / shares:.2f} h with {shares} shares" if shares > 1 else "")
                     + " (the probe, analyses and website come on top)")
    if shares > 1:
        owner = partition([t.cost for t in tasks], shares)
        busy = min(shares, len(tasks))          # shares past the number of tasks get none (no list of them is made)
        loads = [0.0] * busy
        for t, o in zip(tasks, owner):
            loads[o] += t.cost
        lines.append(f"{shares} shares: " + ", ".join(f"{load / max(total_cost, 1):.0%}" for load in loads)
                     + " of the FLOPs each" + (f"; the other {shares - busy:,} get no task" if shares > busy else ""))
    return "\n".join(lines)
