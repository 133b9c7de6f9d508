"""The atlas format: folder layout, names and unit ids (docs/FORMAT.md is the specification).

An atlas is a folder::

    manifest.json                      what the atlas holds, with sizes and sha256
    dataset.h5                         the probe's image index (once probed)
    shards/<model>/<site>/L<ll>/U<start>-<stop>.h5

A shard holds one contiguous unit range of one (model, site, layer); row r is unit
``unit_start + r``. Its parts (``viz``, ``probe``) may be written at different times.
"""
from __future__ import annotations

import re

FORMAT_VERSION = "1.10"
MANIFEST = "manifest.json"
DATASET = "dataset.h5"
RELATED = "related.h5"      # related units of every probed unit (rebuilt after each probe)
SCORES = "scores"           # scores/<model>-<site>.h5: per-image scores or their sketch
SHARDS = "shards"
CITATION = "CITATION.cff"
ANALYSES = "analyses"       # analyses/<name>.json
LABELS = "labels"           # labels/<model>.<site>.h5: the concepts each unit is described by (atlas.labels)
MAPS = "maps"              # maps/<model>.<site>.h5: each layer's map, units placed by their scores (atlas.maps)
LIVE = "live"              # live/<model>/: the model in ONNX for the website's live view (atlas.live)
BLOCKS = "blocks"           # blocks/<shard path>.sha256: the sha256 of each block of that shard, 32 bytes each
# Folders and files of an atlas that are not its data (the manifest does not list them):
WEBSITE = "site"            # the rendered website (the folder's name predates the glossary: a site is a unit site)
SPEC_COPY = "spec.toml"     # the resolved build spec an atlas was built from
LOGS = "logs"               # logs/<host>-<pid>.jsonl: the build log
LOCKS = ".locks"            # .locks/<name>.<generation>: owned locks
CACHE = ".cache"            # the manifest's hash cache
PROBE_STATE = ".probe"      # a probe's running state, resumed after a kill
QUARANTINE = "quarantine"   # unreadable shards moved aside, with the reason
TMP_MARK = ".tmp-"          # <name>.tmp-<host>-<pid>: a file being written
# Every folder of an atlas that ViT Atlas writes into or sweeps: each must be a real directory, with no
# symbolic link anywhere below it (atlas.folder.prepare_atlas_folder), before a command writes.
ATLAS_FOLDERS = (SHARDS, BLOCKS, SCORES, ANALYSES, LABELS, MAPS, LIVE, WEBSITE, LOGS, LOCKS, CACHE, PROBE_STATE, QUARANTINE)

SITES = ("ffn", "q", "k", "v", "attn", "block")
SAE_SITE = re.compile(r"^sae-[a-z0-9][a-z0-9_\-]*$")   # the latents of a sparse autoencoder: sae-<name>

# Optimized pictures: one part per parametrization ("viz" is the paper's, pixel-parametrized).
PICTURES = {"viz": "pixel", "fourier": "fourier"}
PICTURE_LABELS = {"viz": "paper recipe", "fourier": "Fourier"}     # what the website calls each picture part
PICTURE_DATASETS = ("image", "activation", "map", "seed", "loss")

# The datasets each shard part holds; a part is present when all of its datasets are.
PARTS = {
    **{part: tuple(f"{part}/{name}" for name in PICTURE_DATASETS) for part in PICTURES},
    "probe": ("topk/index", "topk/score", "topk/map",
              "stats/mean", "stats/max", "stats/positive", "stats/hist", "stats/hist_edges"),
}

# Datasets read one unit at a time are chunked one row per chunk.
ROW_CHUNKED = tuple(f"{part}/{name}" for part in PICTURES for name in ("image", "map")) + ("topk/map",)


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_SITE = r"[a-z][a-z0-9_\-]*"
MODEL_NAME = re.compile(f"^{_NAME}$")
SITE_NAME = re.compile(f"^{_SITE}$")
UNIT_ID = re.compile(rf"^(?P<model>{_NAME})/(?P<site>{_SITE})/L(?P<layer>\d{{2,}})/U(?P<unit>\d{{4,}})$")

# The paths an atlas's data may name (a manifest entry, a shard attribute, a remote listing): each
# is checked against these rules before it is joined to a folder (``data_path``), so nothing read
# from an atlas can pick a place outside it to read or write.
SHARD_PATH = re.compile(rf"^{SHARDS}/(?P<model>{_NAME})/(?P<site>{_SITE})/L(?P<layer>\d{{2,}})/"
                        r"U(?P<start>\d{5,})-(?P<stop>\d{5,})\.h5$")
DATA_PATH = re.compile(rf"^(?:{re.escape(DATASET)}|{re.escape(RELATED)}|(?:{SCORES}|{LABELS}|{MAPS})/{_NAME}\.h5|"
                       rf"analyses/{_NAME}\.json|{LIVE}/{_NAME}/(?:model\.onnx|weights-\d{{3}}\.bin|live\.json))$")
BLOCKS_PATH = re.compile(rf"^blocks/(?P<shard>{SHARD_PATH.pattern[1:-1]})\.sha256$")
MAX_UNITS = 10**7          # a layer wider than this is not a layer (a manifest claiming it is, is damaged)


def picture_part(parametrization: str) -> str:
    """The shard part a picture of this parametrization is stored in ("viz" for pixel images)."""
    for part, kind in PICTURES.items():
        if kind == parametrization:
            return part
    raise AtlasError(f"no picture part holds {parametrization!r} images (parts: {', '.join(PICTURES)})")


class AtlasError(Exception):
    """A problem the user can fix; the message says how."""


_PROGRAM = ["vit-atlas"]     # how the user runs ViT Atlas (builder.cli.main sets it): messages name commands so


def set_program(name: str) -> None:
    """Say how the user runs ViT Atlas (``vit-atlas``, ``python build.py``, ``python -m builder``)."""
    _PROGRAM[0] = name


def command(args: str) -> str:
    """A command as the user types it, for messages: ``command("verify atlas")`` -> ``vit-atlas verify atlas``."""
    return f"{_PROGRAM[0]} {args}"


def check_model_name(name: str) -> str:
    """Return ``name`` if it can name a model in an atlas (it becomes a folder and part of unit ids)."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise AtlasError(
            f"model name {name!r} cannot be used in an atlas: use letters, digits, '_', '.' and '-' "
            "(start with a letter or digit); pass --name to choose another")
    return name


def data_path(rel, kind: str, where: str) -> str:
    """``rel`` if it is an atlas path of ``kind`` ("shard", "data file" or "block hashes"), else
    AtlasError naming ``where`` it came from (a manifest field, a shard attribute). Only such paths
    are ever joined to an atlas folder or a cache: relative, inside the atlas, of the format's names."""
    rules = {"shard": (SHARD_PATH, "shards/<model>/<site>/L<ll>/U<start>-<stop>.h5"),
             "data file": (DATA_PATH, "dataset.h5, related.h5, scores/<name>.h5, labels/<name>.h5, maps/<name>.h5, "
                                      "analyses/<name>.json or live/<model>/{model.onnx,weights-NNN.bin,live.json}"),
             "block hashes": (BLOCKS_PATH, "blocks/<shard path>.sha256")}
    pattern, shape = rules[kind]
    if not isinstance(rel, str) or not pattern.fullmatch(rel) or any(part in ("", ".", "..") for part in rel.split("/")):
        raise AtlasError(f"{where} is {str(rel)[:120]!r}, not a {kind} path of the atlas format ({shape}); "
                         "refusing to read or write outside the atlas: the atlas is damaged or hostile")
    return rel


# A unit id as a template: {name} or {name:width} (zero-padded to at least that width). The website's
# script fills the same template (atlas.website passes it to the pages).
UNIT_ID_TEMPLATE = "{model}/{site}/L{layer:2}/U{unit:4}"


def fill(template: str, **values) -> str:
    """``template`` with each {name} or {name:width} replaced by its value (numbers zero-padded)."""
    return re.sub(r"\{(\w+)(?::(\d+))?\}", lambda m: str(values[m[1]]).zfill(int(m[2] or 0)), template)


def unit_id(model: str, site: str, layer: int, unit: int) -> str:
    """The stable id of a unit: ``<model>/<site>/L<ll>/U<uuuu>`` (zero-padded, wider when needed)."""
    return fill(UNIT_ID_TEMPLATE, model=model, site=site, layer=layer, unit=unit)


def parse_unit_id(text: str) -> tuple[str, str, int, int]:
    """Split a unit id into (model, site, layer, unit); raises AtlasError on a malformed id."""
    m = UNIT_ID.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or not (m["site"] in SITES or SAE_SITE.fullmatch(m["site"])):
        raise AtlasError(f"{text!r} is not a unit id; expected <model>/<site>/L<ll>/U<uuuu>, "
                         "e.g. vit_atlas_demo/ffn/L03/U0042")
    return m["model"], m["site"], int(m["layer"]), int(m["unit"])


def score_file(model: str, site: str) -> str:
    """Atlas-relative path of the probe's per-image scores of (model, site)."""
    return f"{SCORES}/{model}-{site}.h5"


def shard_path(model: str, site: str, layer: int, unit_start: int, unit_stop: int) -> str:
    """Relative path of the shard for units [unit_start, unit_stop) of one (model, site, layer)."""
    return f"{SHARDS}/{model}/{site}/L{layer:02d}/U{unit_start:05d}-{unit_stop:05d}.h5"


def unit_runs(units: list[int]) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of sorted unit indices."""
    runs = []
    for u in units:
        if runs and runs[-1][1] == u:
            runs[-1][1] = u + 1
        else:
            runs.append([u, u + 1])
    return [tuple(r) for r in runs]
