"""Build specs: one TOML file that says everything an atlas build does (`build.py run SPEC.toml`).

    [atlas]            name, version, description, authors, license, url, out
    [build]            device, precision, compile, shard_units, batch_units, seed
    [recipe]           preset and per-field overrides (steps, batch_copies, lr, tv, noise, ...) of the
                       paper's picture (part "viz")
    [pictures.NAME]    the recipe of another picture (NAME: "fourier"; preset defaults to NAME)
    [dataset]          images, labels, boxes, k, batch_size, workers, limit
    [labels]           the concept sources of `vit-atlas label`: broden, classes, hierarchy, attributes,
                       clip, words, vocabulary, k (every probed model's sites are labelled after the probe)
    [[models]]         name (timm name, optionally .tag), atlas_name, checkpoint | random_init,
                       sites, layers, units, visualize, probe, analyses, pictures, labels, [models.recipe]

Relative paths are relative to the spec file's folder. Unknown keys are errors (a typo must not
silently change an expensive build).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from atlas.format import PICTURES, SITES, AtlasError, check_model_name, picture_part
from atlas.live import LIVE_CHOICES
from atlas.website.urls import check_url

from .device import DEFAULT_COMPILE, DEFAULT_DEVICE, DEFAULT_PRECISION
from .recipe import Recipe, resolve_recipe
from .defaults import BATCH_SIZE, LABEL_K, RELATED_K, SEED, SHARD_UNITS, SKETCH_DIMS, TOP_K, VOCABULARY

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ANALYSIS_NAMES = ("token-mixing", "foreground-background", "frequency", "spatial", "sites", "concepts-by-depth")


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
    pictures: list[str] = field(default_factory=list)   # picture parts beyond "viz", e.g. ["fourier"]
    recipe: Recipe | None = None        # overrides the build's recipe
    sae: list[str] = field(default_factory=list)        # SAE checkpoints: each one's latents are one more site
    labels: bool = True                 # label its units from the spec's [labels] sources (when probed)
    live: str = "auto"                  # its live model for the website's live view: auto (when small enough), on, off

    @property
    def unit_sites(self) -> list[str]:
        """Every site the build reads: ``sites``, then each SAE's ``sae-<name>``."""
        from .sae import sae_name
        return self.sites + [f"sae-{sae_name(Path(p))}" for p in self.sae]


@dataclass
class LabelSources:
    """The spec's [labels]: what `vit-atlas label` scores every labelled unit against (flags of the same names)."""
    broden: Path | None = None          # netdissect: a concept dataset in Broden's layout
    classes: bool = False               # invert: the dataset's classes ...
    hierarchy: str | None = None        # ... widened by their ancestors (imagenet or a JSON file)
    attributes: Path | None = None      # invert: an image-level attribute table
    clip: str | None = None             # clip-dissect: an open_clip name/tag, or demo
    words: Path | None = None           # clip-dissect: the vocabulary file (default: the model's or wordfreq's)
    vocabulary: int = VOCABULARY
    k: int = LABEL_K

    def any(self) -> bool:
        """Whether any source is named."""
        return bool(self.broden or self.classes or self.hierarchy or self.attributes or self.clip)


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
    shard_units: int = SHARD_UNITS
    batch_units: int | None = None
    seed: int = SEED
    recipe: Recipe = field(default_factory=Recipe)
    pictures: dict[str, Recipe] = field(default_factory=dict)   # part -> recipe of the other pictures
    images: Path | None = None
    labels: Path | None = None
    boxes: Path | None = None
    k: int = TOP_K
    batch_size: int = BATCH_SIZE
    workers: int | None = None
    limit: int | None = None
    related: str = "auto"
    related_k: int = RELATED_K
    sketch_dims: int = SKETCH_DIMS
    label_sources: LabelSources | None = None
    models: list[ModelSpec] = field(default_factory=list)

    def atlas_info(self) -> dict:
        """The manifest's "atlas" entry."""
        return {"name": self.name, "version": self.version, "description": self.description,
                "authors": self.authors, "license": self.license, "url": self.url}


# What each key of a spec holds: a type, or a tuple of accepted types ("list[str]": a list of strings).
_STR, _INT, _NUM, _BOOL, _STRS = "a string", "a whole number", "a number", "true or false", "a list of strings"
TYPES = {
    "atlas": {"name": _STR, "version": (_STR, _INT), "description": _STR, "authors": _STRS, "license": _STR,
              "url": _STR, "out": _STR},
    "build": {"device": _STR, "precision": _STR, "compile": _STR, "shard_units": _INT, "batch_units": _INT,
              "seed": _INT},
    "dataset": {"images": _STR, "labels": _STR, "boxes": _STR, "k": _INT, "batch_size": _INT, "workers": _INT,
                "limit": _INT, "related": _STR, "related_k": _INT, "sketch_dims": _INT},
    "models": {"name": _STR, "atlas_name": _STR, "checkpoint": _STR, "random_init": _BOOL, "init_seed": _INT,
               "model_args": "a table", "sites": _STRS, "layers": (_STR, _INT), "units": (_STR, _INT),
               "visualize": _BOOL, "probe": _BOOL, "analyses": _STRS, "pictures": _STRS, "recipe": "a table",
               "sae": _STRS, "labels": _BOOL, "live": _STR},
    "labels": {"broden": _STR, "classes": _BOOL, "hierarchy": _STR, "attributes": _STR, "clip": _STR, "words": _STR,
               "vocabulary": _INT, "k": _INT},
}
_RECIPE_TYPES = {str: _STR, int: _INT, float: _NUM, bool: _BOOL}


def _is(value, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "a table":
        return isinstance(value, dict)
    if kind == "two numbers":
        return isinstance(value, list) and len(value) == 2 and all(_is(v, _NUM) for v in value)
    raise ValueError(kind)


def _take(table, allowed, where: str) -> dict:
    """``table`` with its keys checked against ``allowed`` (a set, or a dict key -> expected type)."""
    if not isinstance(table, dict):
        raise AtlasError(f"{where} must be a table ([...] section), not {type(table).__name__} {table!r}"[:300])
    unknown = set(table) - set(allowed)
    if unknown:
        raise AtlasError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(allowed))})")
    if isinstance(allowed, dict):
        for key, value in table.items():
            kinds = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
            if not any(_is(value, kind) for kind in kinds):
                example = ' e.g. sites = ["ffn"]' if kinds == (_STRS,) else ""
                raise AtlasError(f"{where}: {key} must be {' or '.join(kinds)}, not {value!r}{example}"[:300])
    return table


def _recipe_types() -> dict[str, str]:
    types = {}
    for f in dataclasses.fields(Recipe):
        default = f.default
        types[f.name] = "two numbers" if isinstance(default, tuple) else _RECIPE_TYPES[type(default)]
    return types


def _recipe(table: dict, base: Recipe | None, where: str) -> Recipe:
    _take(table, _recipe_types(), where)
    values = dict(table)
    preset = values.pop("preset", None)
    if preset:
        return resolve_recipe(preset, **values)
    return dataclasses.replace(base or Recipe(), **{k: tuple(v) if k == "betas" else v for k, v in values.items()})


def _picture_recipe(part: str, table: dict, where: str) -> Recipe:
    """The recipe of a picture part: its table's preset (default: the part's name) and overrides."""
    table = dict(table)
    table.setdefault("preset", part)
    recipe = _recipe(table, None, where)
    if picture_part(recipe.parametrization) != part:
        raise AtlasError(f"{where}: preset {recipe.preset!r} makes {recipe.parametrization} pictures, not {part}")
    return recipe


def load_spec(path: str | Path) -> BuildSpec:
    """Read and check a TOML build spec; raises AtlasError saying what is wrong and where."""
    path = Path(path)
    if path.is_dir():
        raise AtlasError(f"spec {path} is a folder; give the TOML file (see examples/)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AtlasError(f"spec {path} does not exist") from None
    except UnicodeDecodeError:
        raise AtlasError(f"spec {path} is not a text file; give a TOML build spec (see examples/)") from None
    except OSError as e:
        raise AtlasError(f"cannot read spec {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise AtlasError(f"spec {path} is not valid TOML: {e}") from None
    _take(data, {"atlas", "build", "recipe", "pictures", "dataset", "labels", "models"}, str(path))
    here = path.resolve().parent
    resolve = lambda p: (here / p).resolve() if p else None  # noqa: E731
    atlas = _take(data.get("atlas", {}), TYPES["atlas"], f"{path} [atlas]")
    build = _take(data.get("build", {}), TYPES["build"], f"{path} [build]")
    dataset = _take(data.get("dataset", {}), TYPES["dataset"], f"{path} [dataset]")
    if "name" not in atlas or "out" not in atlas:
        raise AtlasError(f"{path} [atlas] needs name and out")
    if atlas.get("url"):
        check_url(atlas["url"], f"{path} [atlas] url")
    recipe = _recipe(data.get("recipe", {}), None, f"{path} [recipe]")
    pictures = {part: _picture_recipe(part, table, f"{path} [pictures.{part}]")
                for part, table in _take(data.get("pictures", {}), set(PICTURES) - {"viz"}, f"{path} [pictures]").items()}
    spec = BuildSpec(path=path, name=str(atlas["name"]), version=str(atlas.get("version", "1")),
                     out=resolve(atlas["out"]), description=atlas.get("description", ""),
                     authors=atlas.get("authors", []), license=atlas.get("license", ""), url=atlas.get("url", ""),
                     recipe=recipe, pictures=pictures, images=resolve(dataset.get("images")), labels=resolve(dataset.get("labels")),
                     boxes=resolve(dataset.get("boxes")), **{k: v for k, v in build.items()},
                     **{k: dataset[k] for k in ("k", "batch_size", "workers", "limit", "related", "related_k",
                                                "sketch_dims") if k in dataset})
    if "labels" in data:
        table = _take(data["labels"], TYPES["labels"], f"{path} [labels]")
        spec.label_sources = LabelSources(**{k: resolve(v) if k in ("broden", "attributes", "words") else v
                                             for k, v in table.items()})
        if spec.label_sources.hierarchy and spec.label_sources.hierarchy != "imagenet":
            spec.label_sources.hierarchy = str(resolve(spec.label_sources.hierarchy))
        if not spec.label_sources.any():
            raise AtlasError(f"{path} [labels] names no source: give broden, classes, attributes or clip")
    models = data.get("models", [])
    if not isinstance(models, list):
        raise AtlasError(f"{path}: models must be [[models]] tables, one per model (see examples/), not {models!r}"[:300])
    if not models:
        raise AtlasError(f"{path} lists no [[models]]")
    for i, table in enumerate(models):
        where = f"{path} [[models]] #{i + 1}"
        table = dict(_take(table, TYPES["models"], where))
        if "name" not in table:
            raise AtlasError(f"{where} needs a name")
        recipe_table = table.pop("recipe", None)
        model = ModelSpec(**table)
        model.atlas_name = check_model_name(model.atlas_name or model.name)
        model.checkpoint = str(resolve(model.checkpoint)) if model.checkpoint else None
        model.sae = [str(resolve(p)) for p in model.sae]
        missing = [p for p in model.sae if not Path(p).exists()]
        if missing:
            raise AtlasError(f"{where}: sae {missing[0]} does not exist")
        if len(set(model.unit_sites)) != len(model.unit_sites):
            raise AtlasError(f"{where}: two SAEs with the same name ({model.unit_sites}); rename one's folder")
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
        bad = set(model.pictures) - (set(PICTURES) - {"viz"})
        if bad:
            raise AtlasError(f"{where}: unknown pictures {sorted(bad)}; pictures besides viz are "
                             f"{', '.join(p for p in PICTURES if p != 'viz')}")
        for part in model.pictures:
            spec.pictures.setdefault(part, _picture_recipe(part, {}, f"{where} pictures"))
        if model.live not in LIVE_CHOICES:
            raise AtlasError(f"{where}: live = {model.live!r}: one of {', '.join(LIVE_CHOICES)}")
        if model.probe and not spec.images:
            raise AtlasError(f"{where} asks for a probe but [dataset] has no images")
        spec.models.append(model)
    names = [m.atlas_name for m in spec.models]
    if len(set(names)) != len(names):
        raise AtlasError(f"{path}: two models share an atlas name; set atlas_name")
    return spec


def dump_spec(spec: BuildSpec) -> str:
    """The spec as canonical TOML with absolute paths and the recipe spelled out: the atlas keeps this
    copy, so `build.py finalize DIR` needs nothing else and two runs compare exactly."""
    def table(values: dict) -> dict:  # TOML has no null: unset values are left out
        return {k: table(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
                for k, v in values.items() if v is not None and v != {}}

    models = []
    for m in spec.models:
        fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(ModelSpec) if f.name != "recipe"}
        models.append(table({**fields, "recipe": m.recipe.to_dict() if m.recipe else None}))
    document = {
        "atlas": table({"name": spec.name, "version": spec.version, "description": spec.description,
                        "authors": spec.authors, "license": spec.license, "url": spec.url, "out": str(spec.out)}),
        "build": table({"device": spec.device, "precision": spec.precision, "compile": spec.compile,
                        "shard_units": spec.shard_units, "batch_units": spec.batch_units, "seed": spec.seed}),
        "recipe": table(spec.recipe.to_dict()),
        "pictures": {part: table(r.to_dict()) for part, r in spec.pictures.items()},
        "dataset": table({"images": spec.images and str(spec.images), "labels": spec.labels and str(spec.labels),
                          "boxes": spec.boxes and str(spec.boxes), "k": spec.k, "batch_size": spec.batch_size,
                          "workers": spec.workers, "limit": spec.limit, "related": spec.related,
                          "related_k": spec.related_k, "sketch_dims": spec.sketch_dims}),
        **({"labels": table({k: str(v) if isinstance(v, Path) else v
                             for k, v in dataclasses.asdict(spec.label_sources).items()})} if spec.label_sources else {}),
        "models": models,
    }
    return "# the build spec this atlas was made from (resolved: absolute paths, full recipe)\n\n" \
        + tomli_w.dumps(document)
