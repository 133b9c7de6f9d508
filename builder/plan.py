"""Planning: which layers and units a request selects, which shards hold them, and the build's list
of tasks (one picture part of one shard each) with their estimated costs, derived from a spec alone.

Read by the visualize runner (builder.schedule), the probe, the pipeline and the analyses; it loads
models only as shapes (the meta device) and computes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atlas.format import AtlasError, shard_path, unit_runs
from atlas.manifest import scan_shards
from atlas.shard import shard_holds

from .forward import planned_pass_flops
from .models import LoadedModel, ModelSource, load_model
from .recipe import Recipe
from .sae import load_sae
from .sites import Layer, find_layers, sae_layer
from .spec import BuildSpec, ModelSpec


MAX_SELECTION_ITEMS = 10_000   # comma-separated items of one selection

# Shard attributes that must agree between every part written into one atlas for a model.
IDENTITY = ("arch", "weights", "image_size")


def parse_selection(selection: str, valid: list[int], what: str) -> list[int]:
    """Parse a selection ('all', '5', '0-3' or '0,2,5-7') into sorted indices, all of which must be in
    ``valid``; ``what`` names the flag in errors."""
    selection = str(selection).strip()
    if selection == "all":
        return sorted(valid)
    if not valid:
        raise AtlasError(f"--{what} {selection}: there is nothing to select")
    first, last = min(valid), max(valid)
    shown = f"{first}-{last}" if len(valid) == last - first + 1 else valid
    chosen = set()
    for item in selection.split(",")[:MAX_SELECTION_ITEMS + 1]:
        lo, sep, hi = item.strip().partition("-")
        try:
            lo, hi = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise AtlasError(f"--{what} {selection[:80]!r} is not a selection: use all, 5, 0-3 or 0,2,5-7") from None
        if hi < lo or len(selection.split(",")) > MAX_SELECTION_ITEMS:
            raise AtlasError(f"--{what} {selection[:80]!r} is not a selection: use all, 5, 0-3 or 0,2,5-7")
        if lo < first or hi > last:        # checked before any list is built: 0-30000000 is a typo, not 30M units
            outside = (list(range(lo, min(hi, first - 1) + 1)[:10]) + list(range(max(lo, last + 1), hi + 1)[:10]))[:10]
            raise AtlasError(f"--{what} {selection[:80]}: {outside} out of range (valid: {shown})")
        chosen.update(range(lo, hi + 1))
    outside = sorted(chosen - set(valid))
    if outside:
        raise AtlasError(f"--{what} {selection[:80]}: {outside[:10]} out of range (valid: {shown})")
    return sorted(chosen)


def plan_ranges(existing: list[tuple[int, int, list[str]]], wanted: list[int], shard_units: int,
                part: str) -> list[tuple[int, int]]:
    """Unit ranges to write ``part`` into, for the ``wanted`` units of one layer.

    Existing shards keep their ranges (a part is always written for a shard's whole range); units no
    shard covers yet go into new shards cut on the grid of multiples of ``shard_units``.
    """
    if shard_units < 1:
        raise AtlasError(f"--shard-units must be at least 1, not {shard_units}")
    todo, covered = [], set()
    for start, stop, parts in sorted(existing):
        if any(start <= u < stop for u in wanted) and part not in parts:
            todo.append((start, stop))
        covered.update(range(start, stop))
    for start, stop in unit_runs([u for u in wanted if u not in covered]):
        cut = start
        while cut < stop:
            end = min(stop, (cut // shard_units + 1) * shard_units)
            todo.append((cut, end))
            cut = end
    return sorted(todo)


def layer_attrs(name: str, lm: LoadedModel, layer: Layer) -> dict:
    """The attributes every shard of this (model, site, layer) carries; an SAE site's also its ``sae``
    record (builder.sae.SAE.record: identity, sha256 and encoder)."""
    attrs = {"model": name, "arch": lm.source.arch, "weights": lm.weights, "site": layer.site,
             "layer": layer.index, "layer_units": layer.units, "grid": list(layer.grid),
             "module": layer.module, "module_call": layer.call, "image_size": list(lm.input_size),
             "mean": list(lm.mean), "std": list(lm.std)}
    if layer.sae is not None:
        attrs["sae"] = layer.sae.record()
    return attrs


def existing_shards(out: Path, name: str, site: str, lm: LoadedModel) -> dict[int, list]:
    """Shards already in the atlas for (name, site), by layer; rejects an atlas built from other weights."""
    by_layer: dict[int, list] = {}
    for shard in scan_shards(out):
        attrs = shard["attrs"]
        if attrs["model"] != name:
            continue
        mine = {"arch": lm.source.arch, "weights": lm.weights, "image_size": list(lm.input_size)}
        for key in IDENTITY:
            if key in attrs and attrs[key] != mine[key]:
                raise AtlasError(
                    f"{out} already holds {name} with {key}={attrs[key]!r}, but this run has {mine[key]!r}; "
                    "pass --name to store this model under another name, or use another --out")
        if attrs["site"] == site and site in lm.saes and (attrs.get("sae") or {}).get("sha256") != lm.saes[site].sha256:
            raise AtlasError(f"{out} already holds site {site} of {name} from another SAE checkpoint; pass --sae-name "
                             "to store this one under another name, or use another --out")
        if attrs["site"] == site:
            by_layer.setdefault(int(attrs["layer"]), []).append(
                (int(attrs["unit_start"]), int(attrs["unit_stop"]), shard["parts"]))
    return by_layer


def select_layers(lm: LoadedModel, site: str, layers: str, units: str) -> list[tuple[Layer, list[int]]]:
    """The layers of ``site`` a selection chooses, with the units the unit selection chooses in each;
    indices out of range are rejected."""
    if site.startswith("sae-"):
        found = _sae_layers(lm, site, layers)
        layers = "all"
    else:
        found = {layer.index: layer for layer in find_layers(lm.model, site, lm.input_size)}
    chosen = []
    for index in parse_selection(layers, list(found), "layers"):
        layer = found[index]
        chosen.append((layer, parse_selection(units, list(range(layer.units)), "units")))
    return chosen


def _sae_layers(lm: LoadedModel, site: str, layers: str) -> dict[int, Layer]:
    """The one layer of an SAE site: the block it reads, which the selection must include (a model's
    selection covers all its sites), or, for an SAE that does not say, the one block the selection names."""
    if site not in lm.saes:
        raise AtlasError(f"site {site!r} is an SAE's: pass --sae PATH (or the spec's sae = [...]) to read it")
    sae = lm.saes[site]
    blocks = find_layers(lm.model, "block", lm.input_size)
    chosen = parse_selection(layers, [layer.index for layer in blocks], "layers")
    if sae.layer is None and len(chosen) != 1:
        raise AtlasError(f"the SAE {sae.name!r} does not say which block it reads: pass --layers with that one "
                         f"block (not {layers!r})")
    if sae.layer is not None and sae.layer not in chosen:
        raise AtlasError(f"the SAE {sae.name!r} reads block {sae.layer}, which --layers {layers} leaves out")
    layer = sae_layer(lm.model, sae, lm.input_size, None if sae.layer is not None else chosen[0], blocks)
    return {layer.index: layer}


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
    lm = load_model(source, shapes_only=shapes_only, **m.model_args)
    for path in m.sae:
        sae = load_sae(path)
        lm.saes[sae.site] = sae
    return lm


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
        for site in m.unit_sites:
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
