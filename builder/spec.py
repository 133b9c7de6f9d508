"""Build specs: one TOML file that says everything an atlas build does (`build.py run SPEC.toml`).

    [atlas]            name, version, description, authors, license, url, out
    [build]            device, precision, compile, shard_units, batch_units, seed
    [recipe]           preset and per-field overrides (steps, batch_copies, lr, tv, noise, ...)
    [dataset]          images, labels, boxes, k, batch_size, workers, limit
    [[models]]         name (timm name, optionally .tag), atlas_name, checkpoint | random_init,
                       sites, layers, units, visualize, probe, analyses, [models.recipe]

Relative paths are relative to the spec file's folder. Unknown keys are errors (a typo must not
silently change an expensive build).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from atlas.format import SITES, AtlasError, check_model_name

from .device import DEFAULT_COMPILE, DEFAULT_DEVICE, DEFAULT_PRECISION
from .recipe import Recipe, resolve_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ANALYSIS_NAMES = ("token-mixing", "foreground-background", "frequency", "spatial", "sites")


@dataclass
class ModelSpec:
    """One model of a build."""
    name: str                           # timm name, optionally with a weights tag
    atlas_name: str = ""                # name in the atlas (default: name)
    checkpoint: str | None = None
    random_init: bool = False
    init_seed: int = 0
    model_args: dict = field(default_factory=dict)
    sites: list[str] = field(default_factory=lambda: ["ffn"])
    layers: str = "all"
    units: str = "all"
    visualize: bool = True
    probe: bool = True
    analyses: list[str] = field(default_factory=list)
    recipe: Recipe | None = None        # overrides the build's recipe


@dataclass
class BuildSpec:
    """A whole build, as read from a TOML spec."""
    path: Path
    name: str
    version: str
    out: Path
    description: str = ""
    authors: list = field(default_factory=list)
    license: str = ""
    url: str = ""
    device: str = DEFAULT_DEVICE
    precision: str = DEFAULT_PRECISION
    compile: str = DEFAULT_COMPILE
    shard_units: int = 256
    batch_units: int | None = None
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)
    images: Path | None = None
    labels: Path | None = None
    boxes: Path | None = None
    k: int = 16
    batch_size: int = 64
    workers: int | None = None
    limit: int | None = None
    models: list[ModelSpec] = field(default_factory=list)

    def atlas_info(self) -> dict:
        """The manifest's "atlas" entry."""
        return {"name": self.name, "version": self.version, "description": self.description,
                "authors": self.authors, "license": self.license, "url": self.url}


def _take(table: dict, allowed: set[str], where: str) -> dict:
    unknown = set(table) - allowed
    if unknown:
        raise AtlasError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(allowed))})")
    return table


def _recipe(table: dict, base: Recipe | None, where: str) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    _take(table, fields, where)
    values = dict(table)
    preset = values.pop("preset", None)
    if preset:
        return resolve_recipe(preset, **values)
    return dataclasses.replace(base or Recipe(), **{k: tuple(v) if k == "betas" else v for k, v in values.items()})


def load_spec(path: str | Path) -> BuildSpec:
    """Read and check a TOML build spec; raises AtlasError saying what is wrong and where."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AtlasError(f"spec {path} does not exist")
    except tomllib.TOMLDecodeError as e:
        raise AtlasError(f"spec {path} is not valid TOML: {e}")
    _take(data, {"atlas", "build", "recipe", "dataset", "models"}, str(path))
    here = path.resolve().parent
    resolve = lambda p: (here / p).resolve() if p else None  # noqa: E731
    atlas = _take(data.get("atlas", {}), {"name", "version", "description", "authors", "license", "url", "out"},
                  f"{path} [atlas]")
    build = _take(data.get("build", {}), {"device", "precision", "compile", "shard_units", "batch_units", "seed"},
                  f"{path} [build]")
    dataset = _take(data.get("dataset", {}), {"images", "labels", "boxes", "k", "batch_size", "workers", "limit"},
                    f"{path} [dataset]")
    if "name" not in atlas or "out" not in atlas:
        raise AtlasError(f"{path} [atlas] needs name and out")
    recipe = _recipe(data.get("recipe", {}), None, f"{path} [recipe]")
    spec = BuildSpec(path=path, name=str(atlas["name"]), version=str(atlas.get("version", "1")),
                     out=resolve(atlas["out"]), description=atlas.get("description", ""),
                     authors=atlas.get("authors", []), license=atlas.get("license", ""), url=atlas.get("url", ""),
                     recipe=recipe, images=resolve(dataset.get("images")), labels=resolve(dataset.get("labels")),
                     boxes=resolve(dataset.get("boxes")), **{k: v for k, v in build.items()},
                     **{k: dataset[k] for k in ("k", "batch_size", "workers", "limit") if k in dataset})
    models = data.get("models", [])
    if not models:
        raise AtlasError(f"{path} lists no [[models]]")
    allowed = {f.name for f in dataclasses.fields(ModelSpec)}
    for i, table in enumerate(models):
        where = f"{path} [[models]] #{i + 1}"
        table = dict(_take(table, allowed, where))
        if "name" not in table:
            raise AtlasError(f"{where} needs a name")
        recipe_table = table.pop("recipe", None)
        model = ModelSpec(**table)
        model.atlas_name = check_model_name(model.atlas_name or model.name)
        model.checkpoint = str(resolve(model.checkpoint)) if model.checkpoint else None
        if recipe_table:
            model.recipe = _recipe(recipe_table, recipe, f"{where} recipe")
        bad = set(model.sites) - set(SITES)
        if bad:
            raise AtlasError(f"{where}: unknown sites {sorted(bad)}; sites are {', '.join(SITES)}")
        if model.analyses == ["all"]:
            model.analyses = list(ANALYSIS_NAMES)
        bad = set(model.analyses) - set(ANALYSIS_NAMES)
        if bad:
            raise AtlasError(f"{where}: unknown analyses {sorted(bad)}; analyses are {', '.join(ANALYSIS_NAMES)}")
        if model.probe and not spec.images:
            raise AtlasError(f"{where} asks for a probe but [dataset] has no images")
        spec.models.append(model)
    names = [m.atlas_name for m in spec.models]
    if len(set(names)) != len(names):
        raise AtlasError(f"{path}: two models share an atlas name; set atlas_name")
    return spec


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a TOML basic string


def _table(name: str, values: dict) -> list[str]:
    return [name] + [f"{k} = {_toml(v)}" for k, v in values.items() if v is not None and v != {}] + [""]


def dump_spec(spec: BuildSpec) -> str:
    """The spec as canonical TOML with absolute paths and the recipe spelled out: the atlas keeps this
    copy, so `build.py finalize DIR` needs nothing else and two runs compare exactly."""
    out = ["# the build spec this atlas was made from (resolved: absolute paths, full recipe)", ""]
    out += _table("[atlas]", {"name": spec.name, "version": spec.version, "description": spec.description,
                              "authors": spec.authors, "license": spec.license, "url": spec.url, "out": str(spec.out)})
    out += _table("[build]", {"device": spec.device, "precision": spec.precision, "compile": spec.compile,
                              "shard_units": spec.shard_units,
                              "batch_units": spec.batch_units, "seed": spec.seed})
    out += _table("[recipe]", spec.recipe.to_dict())
    out += _table("[dataset]", {"images": spec.images and str(spec.images), "labels": spec.labels and str(spec.labels),
                                "boxes": spec.boxes and str(spec.boxes), "k": spec.k, "batch_size": spec.batch_size,
                                "workers": spec.workers, "limit": spec.limit})
    for m in spec.models:
        fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(ModelSpec) if f.name != "recipe"}
        out += _table("[[models]]", fields)
        if m.recipe:
            out += _table("[models.recipe]", m.recipe.to_dict())
    return "\n".join(out)
