"""Reading an atlas: ``atlas.open(DIR).unit(model, layer, index)`` reads only that unit's rows."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import h5py
import numpy as np

from .dataset import Dataset
from .flags import FLAG_NAMES, THRESHOLDS, VALUE_NAMES, flag_values, flags_of
from .labels import Label, label_file, read_label_file, unit_labels
from .maps import LayerMap, map_file, read_maps
from .format import (AtlasError, DATASET, MODEL_NAME, PICTURES, RELATED, SITE_NAME, command, parse_unit_id, score_file,
                     unit_id)
from .manifest import describe_shards, read_manifest, sha256_file
from .remote import RemoteAtlas, is_url
from .shard import picture_recipe, read_attrs, shard_problems


class Picture(NamedTuple):
    """One optimized picture of a unit: the paper's (part "viz") or another parametrization's."""
    part: str             # the shard part: "viz" (pixel, the paper's recipe), "fourier", ...
    image: np.ndarray     # uint8 [H, W, 3]
    activation: float     # the unit's activation for the stored image (unaugmented, fp32)
    map: np.ndarray       # float16 [h, w]: the unit on the patch grid for that image
    seed: int             # the unit's own seed
    loss: np.ndarray      # the loss at the part's loss_steps
    recipe: dict          # the recipe that made it (preset, parametrization, ...)


class RelatedUnit(NamedTuple):
    """A unit that fires on the same images: its scope, id and correlation over the probe's images."""
    scope: str            # "same layer", "same model" or "other models"
    id: str               # unit id
    corr: float           # correlation of the two units' per-image scores (estimated: a sketch)


@dataclass(frozen=True)
class UnitFlags:
    """What kind of unit this is (atlas.flags): the values, and the flags they give."""
    class_share: float       # share of the top-k images in their most common class
    top_class: str | None    # that class's name (None without labels)
    extent: float            # mean fraction of the grid above half the map's maximum (top-k maps)
    concentration: float     # mean share of the positive activation on the most active token
    dead: bool
    class_selective: bool
    local: bool
    global_: bool            # "global" (a keyword in Python)
    outlier_tokens: bool

    @property
    def names(self) -> list[str]:
        """The flags that are set, by their names in FLAG_NAMES."""
        return [n for n in FLAG_NAMES if getattr(self, "global_" if n == "global" else n)]


class TopImage(NamedTuple):
    """One of a unit's most activating dataset images."""
    index: int          # row of dataset.h5
    score: float        # mean over patch tokens of the unit's activation
    map: np.ndarray     # float16 [h, w] activation on the patch grid


@dataclass(frozen=True)
class UnitStats:
    """A unit's activation statistics over the whole probed dataset."""
    mean: float
    max: float
    positive: float          # fraction of images with a positive score
    hist: np.ndarray         # counts per bin
    hist_edges: np.ndarray   # bin edges (len(hist) + 1)

    @property
    def dead(self) -> bool:
        """No image of the dataset gives the unit a positive score."""
        return self.positive == 0


@dataclass(frozen=True)
class ShardInfo:
    """A shard of an atlas: its path (relative to the atlas), unit range and parts."""
    path: str
    unit_start: int
    unit_stop: int
    parts: tuple[str, ...]


class PictureRows(NamedTuple):
    """One picture part of every unit of a shard, read in bulk (see ``Picture`` for one unit)."""
    part: str
    image: np.ndarray        # uint8 [n, H, W, 3]
    activation: np.ndarray   # float32 [n]
    map: np.ndarray          # float16 [n, h, w]
    seed: np.ndarray         # int64 [n]
    loss: np.ndarray         # float32 [n, L]
    loss_steps: list         # the steps the loss columns sample
    recipe: dict
    run_seed: int | None     # the run's seed, from which each unit's seed is derived


class ShardData:
    """Every unit of one shard, read in bulk and on demand: what the website, the export and verify read
    instead of one ``Unit`` at a time. Arrays have one row per unit, ``units[i]`` being row i's index."""

    def __init__(self, atlas: "Atlas", ref: ShardInfo):
        self.atlas, self.ref, self.path, self.parts = atlas, ref, ref.path, ref.parts
        self.units = np.arange(ref.unit_start, ref.unit_stop)

    def _read(self, name: str):
        try:
            return self.atlas.file(self.path)[name][()]
        except (OSError, KeyError, ValueError) as e:
            raise self.atlas.damaged(self.path, f"{name} cannot be read: {str(e).splitlines()[0][:120]}") from None

    @cached_property
    def attrs(self) -> dict:
        """The shard's attributes, and each part's under its name (``attrs["probe"]["k"]``, ...)."""
        f = self.atlas.file(self.path)
        attrs = read_attrs(f)
        for part in (*PICTURES, "probe"):
            if part in f:
                attrs[part] = read_attrs(f[part])
        return attrs

    def picture(self, part: str, images: bool = True) -> PictureRows | None:
        """The picture part ``part`` of every unit (None when the shard lacks it); ``images=False``
        leaves the images out (an empty array), for readers that need the numbers only."""
        if part not in self.parts:
            return None
        f, attrs = self.atlas.file(self.path), self.attrs.get(part, {})
        loss = self._read(f"{part}/loss")
        return PictureRows(part, self._read(f"{part}/image") if images else np.zeros((0,), np.uint8),
                           self._read(f"{part}/activation"), self._read(f"{part}/map"), self._read(f"{part}/seed"),
                           loss, list(attrs.get("loss_steps", range(loss.shape[1] if loss.ndim > 1 else 0))),
                           picture_recipe(f, part), attrs.get("seed", self.attrs.get("seed")))

    def activation(self, part: str = "viz") -> np.ndarray:
        """The picture's activation per unit (NaN where the shard lacks the part)."""
        if part not in self.parts:
            return np.full(len(self.units), np.nan, np.float32)
        return self._read(f"{part}/activation")

    @property
    def probed(self) -> bool:
        """Whether the shard holds the probe part."""
        return "probe" in self.parts

    @cached_property
    def topk_index(self) -> np.ndarray:
        """int64 [n, k]: dataset rows of each unit's top images (-1 empty)."""
        return self._read("topk/index")

    @cached_property
    def topk_score(self) -> np.ndarray:
        """float32 [n, k]."""
        return self._read("topk/score")

    @cached_property
    def topk_map(self) -> np.ndarray:
        """float16 [n, k, h, w]."""
        return self._read("topk/map")

    @cached_property
    def stats(self) -> dict[str, np.ndarray]:
        """mean, max, positive [n], hist [n, bins], hist_edges [bins + 1]."""
        return {name: self._read(f"stats/{name}") for name in ("mean", "max", "positive", "hist", "hist_edges")}

    @cached_property
    def flag_values(self) -> tuple[dict[str, np.ndarray], dict]:
        """Each unit's flag values (atlas.flags.VALUE_NAMES) and the thresholds that cut them."""
        try:
            return shard_flag_values(self.atlas.file(self.path), slice(None), self.atlas.image_classes)
        except (OSError, KeyError, ValueError) as e:
            raise self.atlas.damaged(self.path, f"its flags cannot be read: {str(e).splitlines()[0][:120]}") from None

    @cached_property
    def flags(self) -> list[list[str]]:
        """Per unit, the names of its flags (atlas.flags.FLAG_NAMES)."""
        values, thresholds = self.flag_values
        positive = self.stats["positive"]
        out = []
        for r in range(len(self.units)):
            on = flags_of({k: v[r] for k, v in values.items()}, float(positive[r]), thresholds)
            out.append([name for name in FLAG_NAMES if on[name]])
        return out


class Unit:
    """One unit of an atlas; each property reads its own rows from the shard on first use."""

    def __init__(self, atlas: "Atlas", model: str, site: str, layer: int, index: int, shard: ShardInfo):
        self.atlas, self.model, self.site, self.layer, self.index = atlas, model, site, layer, index
        self.shard = shard.path
        self.row = index - shard.unit_start
        self.parts = shard.parts

    def __repr__(self) -> str:
        return f"<Unit {self.id}>"

    @property
    def id(self) -> str:
        """Stable id ``<model>/<site>/L<ll>/U<uuuu>``."""
        return unit_id(self.model, self.site, self.layer, self.index)

    def _require(self, part: str) -> None:
        if part not in self.parts:
            how = "probe" if part == "probe" else "visualize" + ("" if part == "viz" else f" --preset {part}")
            raise AtlasError(f"{self.id}: shard {self.shard} has no {part!r} part yet (run `{command(how)}`)")

    def _read(self, name: str, part: str):
        self._require(part)
        f = self.atlas.file(self.shard)
        try:
            return f[name][self.row]
        except (OSError, KeyError, ValueError) as e:
            raise self.atlas.damaged(self.shard, f"{name} cannot be read: {str(e).splitlines()[0][:120]}") from None

    @cached_property
    def image(self) -> np.ndarray:
        """The optimized image, uint8 [H, W, 3]."""
        return self._read("viz/image", "viz")

    @cached_property
    def activation(self) -> float:
        """The unit's activation for the stored (uint8, unaugmented) image."""
        return float(self._read("viz/activation", "viz"))

    @cached_property
    def map(self) -> np.ndarray:
        """The optimized image's activation map, float16 [h, w] on the patch grid."""
        return self._read("viz/map", "viz")

    @cached_property
    def seed(self) -> int:
        """The unit's own random seed (docs/FORMAT.md: derived from model, site, layer, unit, seed)."""
        return int(self._read("viz/seed", "viz"))

    @cached_property
    def loss(self) -> np.ndarray:
        """The loss at the steps listed in the shard's ``viz`` attribute ``loss_steps``."""
        return self._read("viz/loss", "viz")

    @property
    def pictures(self) -> list[str]:
        """The picture parts this unit has: "viz" (the paper's) first, then "fourier", ..."""
        return [part for part in PICTURES if part in self.parts]

    def picture(self, part: str = "viz") -> Picture:
        """One of the unit's optimized pictures, with the recipe that made it."""
        if part not in PICTURES:
            raise AtlasError(f"no picture part {part!r}; pictures are {', '.join(PICTURES)}")
        f = self.atlas.file(self.shard)
        read = lambda name: self._read(f"{part}/{name}", part)  # noqa: E731
        recipe = picture_recipe(f, part)
        return Picture(part, read("image"), float(read("activation")), read("map"), int(read("seed")),
                       read("loss"), recipe)

    @cached_property
    def flags(self) -> UnitFlags:
        """The unit's flags: stored by the probe (format 1.3), else derived from its top-k data."""
        self._require("probe")
        values, thresholds = shard_flag_values(self.atlas.file(self.shard), slice(self.row, self.row + 1),
                                               self.atlas.image_classes)
        values = {name: value[0] for name, value in values.items()}
        on = flags_of(values, self.stats.positive, thresholds)
        name = self.atlas.dataset.class_name(int(values["class"])) if int(values["class"]) >= 0 else None
        return UnitFlags(float(values["class_share"]), name, float(values["extent"]), float(values["concentration"]),
                         on["dead"], on["class_selective"], on["local"], on["global"], on["outlier_tokens"])

    @property
    def related(self) -> list[RelatedUnit]:
        """The units most correlated with this one over the probe's images (``related.h5``): the k best in
        its layer, elsewhere in its model, and in other models; empty when the atlas has none."""
        return self.atlas.related_units(self.model, self.site, self.layer, self.index)

    @property
    def labels(self) -> list[Label]:
        """The concepts this unit is described by (``labels/<model>.<site>.h5``, written by `vit-atlas label`):
        per source (netdissect, invert, clip-dissect) its best concepts with their scores, best first; empty
        when the atlas holds no labels for it."""
        return self.atlas.unit_labels(self.model, self.site, self.layer, self.index)

    @cached_property
    def topk(self) -> list[TopImage]:
        """The most activating dataset images, best first."""
        index = self._read("topk/index", "probe")
        score = self._read("topk/score", "probe")
        maps = self._read("topk/map", "probe")
        rows = len(self.atlas.dataset) if self.atlas.has_dataset else None
        if rows is not None and ((index < -1) | (index >= rows)).any():
            raise self.atlas.damaged(self.shard, f"topk/index of row {self.row} names images outside dataset.h5's "
                                                 f"{rows} rows")
        return [TopImage(int(i), float(s), m) for i, s, m in zip(index, score, maps) if i >= 0]

    @cached_property
    def stats(self) -> UnitStats:
        """Activation statistics over the whole probed dataset."""
        return UnitStats(float(self._read("stats/mean", "probe")), float(self._read("stats/max", "probe")),
                         float(self._read("stats/positive", "probe")), self._read("stats/hist", "probe"),
                         self.atlas.file(self.shard)["stats/hist_edges"][()])


class Atlas:
    """An atlas folder opened for reading. Use ``atlas.open(DIR)``."""

    def __init__(self, root: str | Path, skip: frozenset[str] = frozenset(), allow_hosts=()):
        self._read_files: dict = {}    # data files read whole (label files, layer maps), by atlas path
        self.remote = RemoteAtlas(str(root), allow_hosts) if is_url(root) else None
        if self.remote:
            self.root, self.manifest = self.remote.fetch_manifest()
        else:
            self.root = Path(root)
            if not self.root.is_dir():
                raise AtlasError(f"{self.root} is not an atlas folder (it does not exist)")
            self.manifest = read_manifest(self.root)
        self._entries = {e["path"]: e for e in (self.manifest or {}).get("shards", [])}
        if self.manifest is not None:
            shards, self.models_info = self.manifest.get("shards", []), self.manifest.get("models", {})
        else:  # an atlas still being built: read the shards themselves
            shards, self.models_info = describe_shards(self.root, quarantine_damaged=False)
            self.manifest = None
        self.shard_entries = shards
        self._index: dict[tuple[str, str, int], list[ShardInfo]] = {}
        self._refs: dict[str, ShardInfo] = {}
        for e in shards:
            if e["path"] in skip:
                continue
            key = (e["model"], e["site"], int(e["layer"]))
            ref = ShardInfo(e["path"], int(e["unit_start"]), int(e["unit_stop"]), tuple(e["parts"]))
            self._index.setdefault(key, []).append(ref)
            self._refs[ref.path] = ref
        for refs in self._index.values():
            refs.sort(key=lambda r: r.unit_start)
        self._files: dict[str, h5py.File] = {}

    def __enter__(self) -> "Atlas":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the shard files this atlas has opened."""
        for f in self._files.values():
            f.close()
        self._files.clear()

    def file(self, rel: str) -> h5py.File:
        """The shard at ``rel`` opened read-only (kept open, up to 64 at a time)."""
        f = self._files.get(rel)
        if f is None:
            if len(self._files) >= 64:
                self._files.pop(next(iter(self._files))).close()
            try:
                f = self.remote.shard(self._entries[rel]) if self.remote else h5py.File(self.root / rel, "r")
            except OSError as e:
                raise self.damaged(rel, str(e).splitlines()[0][:160]) from None
            try:
                problems = self._shard_problems(rel, f)
            except (OSError, KeyError, ValueError, TypeError) as e:
                problems = [f"its structure cannot be read ({str(e).splitlines()[0][:120]})"]
            if problems:
                f.close()
                raise self.damaged(rel, problems[0])
            self._files[rel] = f
        return f

    def _shard_problems(self, rel: str, f: h5py.File, values: bool = False) -> list[str]:
        """What is wrong with shard ``rel`` (open as ``f``): its unit range against the one its path and
        the manifest give, then its schema (atlas.shard.shard_problems)."""
        ref = self._refs[rel]
        attrs = read_attrs(f)
        if (attrs.get("unit_start"), attrs.get("unit_stop")) != (ref.unit_start, ref.unit_stop):
            return [f"it holds units {attrs.get('unit_start')}..{attrs.get('unit_stop')}, not the "
                    f"{ref.unit_start}..{ref.unit_stop} its path and the manifest name"]
        return shard_problems(f, len(self.dataset) if values else None, values)

    def damaged(self, rel: str, why: str) -> AtlasError:
        """The error for a shard that cannot be used: which, why, and what to run."""
        return AtlasError(f"shard {rel} of {self.root} cannot be used ({why}): run `{command('verify')} "
                          f"{self.root}`, then the command that built it to recompute it")

    def damaged_shards(self) -> dict[str, str]:
        """The shards this atlas lists that cannot be used, with why: unreadable, not of the schema, top-k
        rows outside the dataset, or (a local atlas with a manifest) bytes that differ from the manifest's
        sha256. What readers of every unit (the website, the export) leave out; `build.py verify` says more."""
        bad = {}
        rows = len(self.dataset) if self.has_dataset else None   # a damaged dataset.h5 is the atlas's problem
        for rel in sorted(self._refs):
            try:
                f = self.file(rel)
                problems = self._shard_problems(rel, f, values=rows is not None)
                entry = self._entries.get(rel)
                if not problems and entry and not self.remote and sha256_file(self.root / rel) != entry["sha256"]:
                    problems = ["its bytes differ from the manifest's sha256"]
            except AtlasError as e:
                problems = [str(e).split(" cannot be used (", 1)[-1].rsplit("): run", 1)[0]]
            except (OSError, KeyError, ValueError) as e:
                problems = [str(e).splitlines()[0][:120]]
            if problems:
                bad[rel] = problems[0]
        return bad

    @property
    def models(self) -> list[str]:
        """Names of the models in the atlas."""
        return sorted({m for m, _, _ in self._index})

    def sites(self, model: str) -> list[str]:
        """Sites of ``model`` that the atlas holds."""
        return sorted({s for m, s, _ in self._index if m == model})

    def layers(self, model: str, site: str = "ffn") -> list[int]:
        """Layers of (model, site) that the atlas holds."""
        return sorted(layer for m, s, layer in self._index if m == model and s == site)

    def units(self, model: str, layer: int, site: str = "ffn") -> Sequence[int]:
        """The unit indices of a layer that the atlas holds, ascending: a ``range`` when its shards are
        contiguous, else a list (a layer visualized with ``--units 0,2,5-7`` has holes)."""
        refs = self.shards(model, site, layer)
        if all(a.unit_stop == b.unit_start for a, b in zip(refs, refs[1:])):
            return range(refs[0].unit_start, refs[-1].unit_stop)
        return [u for r in refs for u in range(r.unit_start, r.unit_stop)]

    def shards(self, model: str, site: str, layer: int) -> list[ShardInfo]:
        """The shards of (model, site, layer), by unit range; AtlasError if there are none."""
        refs = self._index.get((model, site, layer))
        if not refs:
            have = ", ".join(f"{m}/{s}/L{layer_:02d}" for m, s, layer_ in sorted(self._index)[:8]) or "nothing"
            raise AtlasError(f"the atlas at {self.root} has no {model}/{site}/L{layer:02d} (it has {have})")
        return refs

    def unit(self, model: str, layer: int, index: int, site: str = "ffn") -> Unit:
        """The unit ``index`` of ``layer``; raises AtlasError if the atlas does not hold it."""
        refs = self.shards(model, site, layer)
        i = bisect.bisect_right([r.unit_start for r in refs], index) - 1
        if i < 0 or index >= refs[i].unit_stop:
            runs = ", ".join(f"{r.unit_start}..{r.unit_stop - 1}" for r in refs[:4]) + (", ..." if len(refs) > 4 else "")
            raise AtlasError(f"{unit_id(model, site, layer, index)} is not in the atlas (units {runs} are)")
        return Unit(self, model, site, layer, index, refs[i])

    def has(self, uid: str, part: str) -> bool:
        """Whether the atlas holds unit ``uid`` with ``part`` ("viz", "probe", ...)."""
        model, site, layer, index = parse_unit_id(uid)
        refs = self._index.get((model, site, layer), [])
        return any(r.unit_start <= index < r.unit_stop and part in r.parts for r in refs)

    def unit_by_id(self, text: str) -> Unit:
        """The unit with id ``<model>/<site>/L<ll>/U<uuuu>``."""
        model, site, layer, index = parse_unit_id(text)
        return self.unit(model, layer, index, site=site)

    def shard_data(self, ref: ShardInfo) -> ShardData:
        """Every unit of the shard ``ref`` (from ``shards``), read in bulk on demand."""
        return ShardData(self, ref)

    def shard_attrs(self, model: str, layer: int, site: str = "ffn") -> dict:
        """Attributes of the first shard of a layer (recipe, seed, grid, ...)."""
        f = self.file(self.shards(model, site, layer)[0].path)
        attrs = read_attrs(f)
        for part in (*PICTURES, "probe"):
            if part in f:
                attrs[part] = read_attrs(f[part])
        return attrs

    @cached_property
    def _related(self) -> dict | None:
        path = self.data_file(RELATED)
        if path is None:
            return None
        try:
            data = read_related(path)
        except AtlasError as e:
            print(f"warning: leaving out related units: {e}")
            return None
        data["index"] = {tuple(k): i for i, k in enumerate(data["keys"].tolist())}
        return data

    def related_units(self, model: str, site: str, layer: int, unit: int) -> list[RelatedUnit]:
        """The related units of a unit (see ``Unit.related``)."""
        r = self._related
        if not r or model not in r["models"] or site not in r["sites"]:
            return []
        i = r["index"].get((r["models"].index(model), r["sites"].index(site), layer, unit))
        if i is None:
            return []
        found = []
        for scope, (rows, corrs) in enumerate(zip(r["rows"][i], r["corr"][i])):
            for row, corr in zip(rows, corrs):
                if row >= 0:
                    m, s, l, u = r["keys"][row]
                    found.append(RelatedUnit(r["scopes"][scope], unit_id(r["models"][m], r["sites"][s], int(l), int(u)),
                                             float(corr)))
        return found

    def label_sources(self, model: str, site: str) -> dict[str, dict]:
        """The label file of (model, site), read and checked (atlas.labels.read_label_file); {} when there is
        none, or (with a warning) when it cannot be read."""
        return self._read_whole(label_file(model, site), read_label_file, f"the labels of {model}/{site}")

    def unit_labels(self, model: str, site: str, layer: int, unit: int) -> list[Label]:
        """The labels of a unit (see ``Unit.labels``)."""
        return unit_labels(self.label_sources(model, site), layer, unit)

    def layer_labels(self, model: str, site: str, layer: int) -> dict[int, list[Label]]:
        """The labels of every labelled unit of a layer, by unit (see ``Unit.labels``), read in bulk."""
        sources = self.label_sources(model, site)
        units = sorted({u for data in sources.values() for (l, u) in data["index"] if l == layer})
        return {u: unit_labels(sources, layer, u) for u in units}

    def layer_map(self, model: str, site: str, layer: int) -> LayerMap | None:
        """The map of one layer (``atlas.maps.LayerMap``: each unit's position in [0, 1]², how it was made, its
        trustworthiness), written by `vit-atlas map`; None when the atlas holds none."""
        return self._read_whole(map_file(model, site), read_maps, f"the maps of {model}/{site}").get(layer)

    def _read_whole(self, rel: str, read: Callable[[Path], dict], what: str) -> dict:
        """The data file ``rel`` read whole by ``read``, once; {} when the atlas has none or (with a warning
        naming ``what``) when it cannot be read."""
        if rel not in self._read_files:
            path = self.data_file(rel)
            try:
                self._read_files[rel] = read(path) if path is not None else {}
            except AtlasError as e:
                print(f"warning: leaving out {what}: {e}")
                self._read_files[rel] = {}
        return self._read_files[rel]

    def image_scores(self, model: str, site: str) -> ImageScores:
        """Every probed image's score for every probed unit of (model, site), from the probe's exact score file;
        AtlasError saying how to get it when there is none or it is a sketch."""
        path = self.data_file(score_file(model, site))
        if path is None:
            raise AtlasError(f"{self.root} holds no per-image scores of {model}/{site}: run the probe (with --related "
                             "exact) first")
        return read_scores(path)

    def data_file(self, name: str) -> Path | None:
        """The local path of a whole data file (``dataset.h5``, ``related.h5``, ...), fetched and checked
        against the manifest when the atlas is remote; None when the atlas has none."""
        entry = next((e for e in (self.manifest or {}).get("files", []) if e["path"] == name), None)
        if self.remote:
            return self.remote.whole(name, entry["sha256"], entry["bytes"]) if entry else None
        path = self.root / name
        if entry and not path.exists():
            print(f"warning: {self.root} lists {name} in its manifest but it is missing "
                  f"(run `{command(f'verify {self.root}')}`)")
        return path if path.exists() else None

    def image_classes(self) -> np.ndarray | None:
        """The dataset's class of every image, by row (-1: unlabelled), or None when the atlas holds no
        dataset.h5 (a unit's labels are ``Unit.labels``: concepts, not image classes)."""
        return self.dataset.labels if self.has_dataset else None

    @property
    def has_dataset(self) -> bool:
        """Whether the atlas holds a probe's image index (dataset.h5)."""
        return self.data_file(DATASET) is not None

    @cached_property
    def dataset(self) -> Dataset:
        """The probe's image index; raises AtlasError before any probe ran."""
        path = self.data_file(DATASET)
        if path is None:
            raise AtlasError(f"{self.root} has no {DATASET} yet: run `{command(f'probe ... --out {self.root}')}`")
        return Dataset(path)


def shard_flag_values(f, rows, labels: Callable[[], np.ndarray | None]) -> tuple[dict[str, np.ndarray], dict]:
    """A probed shard's flag values for ``rows`` (an index or slice of its units) and the thresholds that
    cut them: the stored ``flags/*`` (format 1.3), else derived from its top-k data as the probe would
    (``labels()`` gives the dataset's image classes, read only then)."""
    if "flags/extent" in f:
        values = {name: f[f"flags/{name}"][rows] for name in VALUE_NAMES}
    else:
        values = flag_values(f["topk/index"][rows], f["topk/map"][rows], labels())
    return values, read_attrs(f["probe"]).get("flag_thresholds") or THRESHOLDS


@dataclass
class ImageScores:
    """Every probed image's score (its mean activation) for every unit of one (model, site): a probe's
    exact score file (``scores/<model>-<site>.h5``)."""
    layer: np.ndarray          # int [U]: column j is unit (layer[j], unit[j])
    unit: np.ndarray           # int [U]
    scores: np.ndarray         # float16 [N, U]: row i is dataset row i

    def columns(self, layer: int) -> np.ndarray:
        """The columns of one layer's units."""
        return np.flatnonzero(self.layer == layer)


def read_scores(path: Path) -> ImageScores:
    """An exact score file read whole (its scores stay float16, as stored); AtlasError when it is not one
    (a sketch holds no per-image scores)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("mode") != "exact":
                raise AtlasError(f"{path} holds a sketch of the probe's scores, not every image's score: probe again "
                                 f"with --related exact (float16, images x units x 2 bytes) to keep them")
            out = ImageScores(f["layer"][()].astype(np.int64), f["unit"][()].astype(np.int64), f["scores"][()])
    except (OSError, KeyError, ValueError) as e:
        raise AtlasError(f"{path} is not a score file ({str(e).splitlines()[0][:120]})") from None
    if out.scores.ndim != 2 or out.scores.shape[1] != len(out.layer) or len(out.unit) != len(out.layer):
        raise AtlasError(f"{path}: its scores, layers and units do not agree in shape")
    return out


def read_related(path: Path) -> dict:
    """``related.h5`` read whole and checked (docs/FORMAT.md): model and site lists of the format's
    names, rows and correlations of matching shapes, every row index inside the table, and ``sources``
    (the [score file, sha256] pairs it was built from; None before format 1.4). AtlasError when
    it is not such a file."""
    try:
        with h5py.File(path, "r") as f:
            attrs = read_attrs(f)
            keys = np.stack([f[n][()] for n in ("model", "site", "layer", "unit")], 1).astype(np.int64)
            data = {"models": attrs["models"], "sites": attrs["sites"], "scopes": attrs["scopes"], "keys": keys,
                    "rows": f["related/row"][()], "corr": f["related/corr"][()], "method": attrs.get("method"),
                    "sources": attrs.get("sources")}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise AtlasError(f"{path.name} is not a readable related-units file ({str(e).splitlines()[0][:100]})") from None
    rows, corr, n = data["rows"], data["corr"], len(keys)
    sources = data["sources"]
    if sources is not None and not (isinstance(sources, list) and all(
            isinstance(s, list) and len(s) == 2 and all(isinstance(v, str) for v in s) for s in sources)):
        raise AtlasError(f"{path.name}: its sources attribute is not a list of [score file, sha256] pairs")
    named = all(isinstance(x, list) and all(isinstance(v, str) for v in x)
                for x in (data["models"], data["sites"], data["scopes"]))
    if not named or not all(MODEL_NAME.fullmatch(m) for m in data["models"]) or \
            not all(SITE_NAME.fullmatch(s) for s in data["sites"]):
        raise AtlasError(f"{path.name}: its models, sites or scopes are not lists of the format's names")
    if rows.ndim != 3 or rows.shape[0] != n or rows.shape[1] != len(data["scopes"]) or corr.shape != rows.shape:
        raise AtlasError(f"{path.name}: related/row {rows.shape} and related/corr {corr.shape} do not fit its "
                         f"{n} units and {len(data['scopes'])} scopes")
    if ((rows < -1) | (rows >= n)).any() or (keys[:, 0] >= len(data["models"])).any() or \
            (keys[:, 1] >= len(data["sites"])).any() or (keys < 0).any():
        raise AtlasError(f"{path.name}: rows or unit keys point outside its own table")
    return data


def open(root: str | Path, allow_hosts=()) -> Atlas:  # noqa: A001 - the API the project promises is atlas.open
    """Open the atlas folder ``root`` for reading, or a hosted atlas by its URL ("https://host/path/atlas/":
    the manifest is fetched, shards are read lazily by verified range requests; atlas.remote). A hosted
    atlas is read from its own host only; ``allow_hosts`` names others its redirects may lead to."""
    return Atlas(root, allow_hosts=allow_hosts)
