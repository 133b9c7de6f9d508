"""`build.py export ATLAS --format parquet --out DIR`: the atlas as Parquet tables a hub can host as is.

    DIR/README.md                                the dataset card (YAML header that `datasets` reads)
    DIR/units/<model>/<site>/data-00000.parquet  one row per unit, files of at most --max-file-mb
    DIR/dataset/data-00000.parquet               the dataset index: row, path, label, class_name

A unit row holds its id, model, site, layer and unit; each optimized picture (``image`` for the
paper's, ``fourier_image`` for the Fourier one) as PNG bytes in the `datasets` Image convention
(a struct of ``bytes`` and ``path``), with its activation and activation map; the top-k dataset rows
with their scores and maps; the statistics; the flags; and the related units. Rows are read shard by
shard in bulk (the reader API reads a unit at a time). Needs pyarrow: ``pip install -e '.[export]'``.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .flags import FLAG_NAMES
from .folder import own_folder
from .format import AtlasError, PICTURES, command, unit_id
from .reader import Atlas

UNIT_FEATURES_NOTE = "maps are lists of rows of floats (float16 in the atlas), on the unit's patch grid"


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise AtlasError(f"{command('export')} needs pyarrow: pip install 'vit-atlas[export]' (from a checkout: "
                         "pip install -e '.[export]')") from None
    return pyarrow


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _unit_schema(pa, pictures: list[str]):
    map_type = pa.list_(pa.list_(pa.float32()))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("id", pa.string()), ("model", pa.string()), ("site", pa.string()), ("layer", pa.int16()),
              ("unit", pa.int32())]
    for part in pictures:
        prefix = "" if part == "viz" else f"{part}_"
        fields += [(f"{prefix}image", image_type), (f"{prefix}activation", pa.float32()), (f"{prefix}map", map_type),
                   (f"{prefix}preset", pa.string())]
    fields += [("topk_index", pa.list_(pa.int64())), ("topk_score", pa.list_(pa.float32())),
               ("topk_map", pa.list_(map_type)), ("stats_mean", pa.float32()), ("stats_max", pa.float32()),
               ("stats_positive", pa.float32()), ("flags", pa.list_(pa.string())), ("flag_class", pa.int64()),
               ("flag_class_name", pa.string()), ("flag_class_share", pa.float32()), ("flag_extent", pa.float32()),
               ("flag_concentration", pa.float32()),
               ("related", pa.list_(pa.struct([("scope", pa.string()), ("id", pa.string()), ("corr", pa.float32())])))]
    return pa.schema(fields)


def _hf_metadata(pictures: list[str]) -> bytes:
    """The schema metadata `datasets` reads to know which columns are images."""
    features = {("image" if p == "viz" else f"{p}_image"): {"_type": "Image"} for p in pictures}
    return json.dumps({"info": {"features": features}}).encode()


def _shard_rows(a: Atlas, model: str, site: str, layer: int, ref, pictures: list[str]) -> list[tuple[dict, int]]:
    """Every unit row of one shard, read in bulk through the reader (``Atlas.shard_data``), with its
    approximate size in bytes."""
    sd = a.shard_data(ref)
    cols = {part: sd.picture(part) for part in pictures if part in ref.parts}
    if sd.probed:
        (values, _), flags, stats = sd.flag_values, sd.flags, sd.stats
    rows = []
    for r, u in enumerate(sd.units.tolist()):
        row = {"id": unit_id(model, site, layer, u), "model": model, "site": site, "layer": layer, "unit": u}
        for part, data in cols.items():
            prefix = "" if part == "viz" else f"{part}_"
            row[f"{prefix}image"] = {"bytes": _png(data.image[r]), "path": f"{row['id']}.{part}.png"}
            row[f"{prefix}activation"] = float(data.activation[r])
            row[f"{prefix}map"] = data.map[r].astype(np.float32).tolist()
            row[f"{prefix}preset"] = data.recipe.get("preset")
        cells, maps = 0, len(cols)
        if cols:
            cells = int(np.prod(next(iter(cols.values())).map.shape[1:]))
        if sd.probed:
            keep = sd.topk_index[r] >= 0
            cells, maps = int(np.prod(sd.topk_map.shape[2:])), maps + int(keep.sum())
            row.update(topk_index=sd.topk_index[r][keep].tolist(), topk_score=sd.topk_score[r][keep].tolist(),
                       topk_map=sd.topk_map[r][keep].astype(np.float32).tolist(),
                       stats_mean=float(stats["mean"][r]), stats_max=float(stats["max"][r]),
                       stats_positive=float(stats["positive"][r]))
            cls = int(values["class"][r])
            row.update(flags=flags[r], flag_class=cls,
                       flag_class_name=a.dataset.class_name(cls) if cls >= 0 and a.has_dataset else None,
                       flag_class_share=float(values["class_share"][r]), flag_extent=float(values["extent"][r]),
                       flag_concentration=float(values["concentration"][r]))
        row["related"] = [{"scope": x.scope, "id": x.id, "corr": x.corr}
                          for x in a.related_units(model, site, layer, u)]
        size = sum(len(row[k]["bytes"]) for k in row if k.endswith("image") and row[k]) + 4 * maps * cells + 512
        rows.append((row, size))
    return rows


class _ParquetFiles:
    """Parquet files of bounded size: rows go out in batches, and a batch that would take the current
    file past ``max_bytes`` starts the next file. A batch's bytes are predicted from its rows' estimate
    times the largest written/estimated ratio seen so far (Parquet's list offsets and pages add to it)."""

    def __init__(self, pa, folder: Path, schema, max_bytes: int):
        self.pa, self.folder, self.schema, self.max_bytes = pa, folder, schema, max_bytes
        self.rows, self.size, self.files = [], 0, []
        self.sink = self.writer = None
        self.ratio = 1.5

    def add(self, row: dict, size: int) -> None:
        self.rows.append(row)
        self.size += size
        if self.size >= min(16 * 2**20, self.max_bytes // 4):
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq
        if not self.rows:
            return
        if self.writer is not None and self.sink.tell() + self.size * self.ratio > self.max_bytes:
            self._close_file()
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"data-{len(self.files):05d}.parquet"
            self.files.append(path)
            self.sink = self.pa.OSFile(str(path), "wb")
            self.writer = pq.ParquetWriter(self.sink, self.schema, compression="zstd")
        before = self.sink.tell()
        self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
        self.ratio = max(self.ratio, (self.sink.tell() - before) / max(self.size, 1))
        self.rows, self.size = [], 0

    def _close_file(self) -> None:
        self.writer.close()
        self.sink.close()
        self.writer = self.sink = None

    def close(self) -> list[Path]:
        self._flush()
        if self.writer is not None:
            self._close_file()
        return self.files


EXPORT_MARKER = ".vit-atlas-export"    # marks a folder an export owns (it may replace what the export wrote)
LABELS_CONFIG = "labels"               # the config (and folder) of every unit's concept labels
MAPS_CONFIG = "maps"                # the config (and folder) of every layer map's unit positions
EXPORT_ITEMS = ("units", "dataset", LABELS_CONFIG, MAPS_CONFIG, "README.md")
STAGING = ".export-staging"           # the export being written; moved into place when complete
PREVIOUS = ".export-previous"         # the export being replaced, while the new one moves in
COMPLETE = "COMPLETE"                 # in STAGING: everything is written, only the swap remains


def config_name(model: str, site: str) -> str:
    """The dataset card's config of a model's site: ``<model>.<site>``. A site has no '.', so the last '.'
    splits it back: two tables never share a name (``<model>-<site>`` made model m-sae's ffn and model
    m's sae-ffn one config)."""
    return f"{model}.{site}"


def _owned_folder(out: Path, root: Path) -> Path:
    """``out`` if the export may write there: new, empty, or an earlier export (it holds the marker);
    never the atlas itself, a folder inside it, or a folder holding it."""
    atlas_root, target = root.resolve(), out.resolve()
    if target == atlas_root or atlas_root in target.parents or target in atlas_root.parents:
        raise AtlasError(f"--out {out} is the atlas {root}, inside it or above it; export into a folder of its own")
    return own_folder(out, "--out", lambda folder: (folder / EXPORT_MARKER).is_file(),
                      "is not empty and is not an export (it has no .vit-atlas-export); give a new or empty folder")


def _swap_in(out: Path) -> None:
    """Move a complete staged export into place (the previous export first aside, then gone). Every
    step can be interrupted: ``_recover`` finishes the swap from wherever it stopped."""
    staging, previous = out / STAGING, out / PREVIOUS
    previous.mkdir(exist_ok=True)
    for name in EXPORT_ITEMS:
        if (staging / name).exists():
            if (out / name).exists():
                os.replace(out / name, previous / name)
            os.replace(staging / name, out / name)
    shutil.rmtree(previous)
    shutil.rmtree(staging)


def _recover(out: Path) -> None:
    """Finish what a killed export left: a complete staged export is moved in; an incomplete one is
    dropped (the previous export, never touched before the swap, stays as it was)."""
    staging, previous = out / STAGING, out / PREVIOUS
    if (staging / COMPLETE).is_file():
        _swap_in(out)
    else:
        shutil.rmtree(staging, ignore_errors=True)
        if previous.exists():   # cannot happen without COMPLETE; kept safe all the same
            for name in EXPORT_ITEMS:
                if (previous / name).exists() and not (out / name).exists():
                    os.replace(previous / name, out / name)
            shutil.rmtree(previous, ignore_errors=True)


def export_parquet(root: str | Path, out: str | Path, max_file_mb: float = 256, progress: bool = True) -> Path:
    """Write the atlas at ``root`` as Parquet tables and a dataset card into ``out``; returns the card.

    The export is written into ``out/.export-staging`` and moved into place when complete, so a killed or
    failed export leaves the previous one as it was, and the same command completes it; ``out`` must be
    new, empty, or an earlier export (marked by ``.vit-atlas-export``)."""
    pa = _pyarrow()
    root, out = Path(root), Path(out)
    if not math.isfinite(max_file_mb) or max_file_mb <= 0:
        raise AtlasError(f"--max-file-mb must be a positive number of MiB, not {max_file_mb}")
    a = Atlas(root)
    if not a.models:
        raise AtlasError(f"{root} holds no shards: nothing to export")
    out = _owned_folder(out, root)
    (out / EXPORT_MARKER).write_text(json.dumps({"atlas": str(root.resolve())}) + "\n", encoding="utf-8")
    _recover(out)
    damaged = a.damaged_shards()
    for rel, why in sorted(damaged.items()):
        print(f"warning: leaving out {rel}: {why} (run `{command(f'verify {root}')}`)")
    if damaged:
        a = Atlas(root, frozenset(damaged))
    staging = out / STAGING
    staging.mkdir()
    try:
        card = _write_export(pa, a, staging, max_file_mb, progress)
        (staging / COMPLETE).write_text("", encoding="utf-8")
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)       # frees the disk; the previous export is untouched
        if isinstance(e, OSError) and (getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)):
            raise AtlasError(f"no space left on the device of {out} while exporting; the partial export was removed "
                             "and the previous one is intact: free some space and run the same command again") from None
        raise
    _swap_in(out)
    return out / card.name


def _write_export(pa, a: Atlas, out: Path, max_file_mb: float, progress: bool) -> Path:
    """Write the tables and the card of atlas ``a`` into the (empty) folder ``out``; returns the card."""
    from tqdm import tqdm
    configs, total = [], sum(r.unit_stop - r.unit_start for m in a.models for s in a.sites(m)
                             for layer in a.layers(m, s) for r in a.shards(m, s, layer))
    bar = tqdm(total=total, unit="unit", desc="export", disable=not progress, dynamic_ncols=True)
    for model in a.models:
        for site in a.sites(model):
            refs = [(layer, r) for layer in a.layers(model, site) for r in a.shards(model, site, layer)]
            pictures = [p for p in PICTURES if any(p in r.parts for _, r in refs)]
            schema = _unit_schema(pa, pictures).with_metadata({"huggingface": _hf_metadata(pictures)})
            writer = _ParquetFiles(pa, out / "units" / model / site, schema, int(max_file_mb * 2**20))
            for layer, ref in refs:
                for row, size in _shard_rows(a, model, site, layer, ref, pictures):
                    writer.add(row, size)
                bar.update(ref.unit_stop - ref.unit_start)
            files = writer.close()
            configs.append({"name": config_name(model, site), "path": f"units/{model}/{site}/*.parquet", "files": len(files),
                            "schema": schema, "images": {c for c in schema.names if c.endswith("image")}})
    bar.close()
    if a.has_dataset:
        d = a.dataset
        index_table = pa.table({"row": pa.array(np.arange(len(d)), pa.int64()), "path": pa.array(d.paths, pa.string()),
                                "label": pa.array(np.asarray(d.labels), pa.int64()),
                                "class_name": pa.array([d.class_name(int(x)) for x in d.labels], pa.string())})
        import pyarrow.parquet as pq
        (out / "dataset").mkdir(parents=True, exist_ok=True)
        pq.write_table(index_table, out / "dataset" / "data-00000.parquet", compression="zstd")
        configs.append({"name": "dataset_index", "path": "dataset/*.parquet", "schema": index_table.schema,
                        "images": set()})
    for name, table in ((MAPS_CONFIG, _maps_table(pa, a)), (LABELS_CONFIG, _labels_table(pa, a))):
        if table is not None:                   # one small table each: one file, its config named as its folder
            import pyarrow.parquet as pq
            (out / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out / name / "data-00000.parquet", compression="zstd")
            configs.append({"name": name, "path": f"{name}/*.parquet", "schema": table.schema, "images": set()})
    card = out / "README.md"
    card.write_text(dataset_card(a, configs), encoding="utf-8")
    return card


def _layer_table(pa, a: Atlas, rows_of, types: dict):
    """One table of rows from every (model, site, layer) of the atlas, ``rows_of(model, site, layer)`` giving
    each layer's rows as dicts; columns typed by ``types`` (others strings). None when no layer has a row."""
    rows = [row for model in a.models for site in a.sites(model) for layer in a.layers(model, site)
            for row in rows_of(model, site, layer)]
    if not rows:
        return None
    return pa.table({k: pa.array([r[k] for r in rows], types.get(k, pa.string())) for k in rows[0]})


def _maps_table(pa, a: Atlas):
    """Every layer map of the atlas as one table (a row per laid-out unit: model, site, layer, unit, x, y; NaN
    for a unit set aside), or None when it holds none."""
    def rows_of(model, site, layer):
        found = a.layer_map(model, site, layer)
        return [{"model": model, "site": site, "layer": layer, "unit": unit, "x": x, "y": y}
                for unit, (x, y) in zip(found.units.tolist(), found.xy.tolist())] if found else []
    return _layer_table(pa, a, rows_of, {"layer": pa.int32(), "unit": pa.int32(), "x": pa.float32(), "y": pa.float32()})


def _labels_table(pa, a: Atlas):
    """Every unit label of the atlas as one table (a row per label: model, site, layer, unit, source, rank,
    concept, category, score, p_value, threshold; an OR-formula has rank -1), or None when it holds none."""
    def rows_of(model, site, layer):
        return [{"model": model, "site": site, "layer": layer, "unit": unit, "source": x.source, "rank": x.rank,
                 "concept": x.concept, "category": x.category, "score": x.score, "p_value": x.p_value,
                 "threshold": x.threshold}
                for unit, labels in a.layer_labels(model, site, layer).items() for x in labels]
    return _layer_table(pa, a, rows_of, {"layer": pa.int32(), "unit": pa.int32(), "rank": pa.int32(),
                                         "score": pa.float32(), "p_value": pa.float64(), "threshold": pa.float32()})


def _feature(pa, t, image: bool = False):
    """The `datasets` feature of an Arrow type, as the card's YAML holds it: a dtype, a list, or a
    struct's fields."""
    if image:
        return {"dtype": "image"}
    if pa.types.is_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner):
            return {"list": [{"name": f.name, **_feature(pa, f.type)} for f in inner]}
        if pa.types.is_list(inner):
            return {"list": _feature(pa, inner)}
        return {"list": _dtype(pa, inner)}
    return {"dtype": _dtype(pa, t)}


def _dtype(pa, t) -> str:
    return {pa.string(): "string", pa.binary(): "binary"}.get(t, str(t))


def dataset_card(a: Atlas, configs: list[dict]) -> str:
    """README.md with the YAML header the Hugging Face hub and `datasets` read: a config per model and
    site (and the dataset index), each with its features as the Parquet files hold them."""
    import pyarrow as pa
    info = (a.manifest or {}).get("atlas") or {}
    name = info.get("name") or a.root.resolve().name
    license_ = (info.get("license") or "other").lower()
    header = {
        "license": license_, "pretty_name": f"{name}: a ViT Atlas neuron atlas",
        "tags": ["interpretability", "vision-transformer", "feature-visualization"],
        "configs": [{"config_name": c["name"], "data_files": [{"split": "train", "path": c["path"]}]} for c in configs],
        "dataset_info": [{"config_name": c["name"],
                          "features": [{"name": f.name, **_feature(pa, f.type, f.name in c["images"])}
                                       for f in c["schema"]]} for c in configs]}
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000).rstrip()]
    units = next(c["name"] for c in configs if c["name"] not in ("dataset_index", LABELS_CONFIG, MAPS_CONFIG))
    lines += ["---", "", f"# {name}", "", info.get("description") or "A neuron atlas of vision transformers.", "",
              "Exported from a ViT Atlas atlas by `vit-atlas export`. One row per unit "
              "(the post-GELU hidden units of each block's MLP, and other sites where the atlas has them):",
              "", "- `image` (and `fourier_image` where built): the image optimized to maximally activate the unit, "
              "PNG; `activation`: the unit's mean activation over patch tokens for it; `map`: its values on the "
              "patch grid; `preset`: the recipe that made it;",
              "- `topk_index`, `topk_score`, `topk_map`: the most activating dataset images (rows of the "
              "`dataset_index` config), their scores and activation maps;",
              "- `stats_*`: mean, max and share of positive scores over the whole dataset;",
              f"- `flags` ({', '.join(FLAG_NAMES)}) and the values behind them (`flag_*`);",
              "- `related`: the most correlated units in the same layer, the same model and other models.", "",
              f"The `{LABELS_CONFIG}` config (where the atlas is labelled): a row per concept a unit is described by, "
              "from `source` netdissect (score: IoU of its thresholded maps with the concept's masks; `threshold`), "
              "invert (AUC of its image scores for the concept; `p_value`, two-sided Mann-Whitney; rank -1: the "
              "best OR of concepts) or clip-dissect (soft-WPMI over an open vocabulary); rank 0 is the best.", "",
              f"The `{MAPS_CONFIG}` config (where the atlas has layer maps): each unit's position `x`, `y` in "
              "[0, 1] on its layer's map (UMAP of the correlations of the units' scores; NaN: set aside).", "",
              f"Maps: {UNIT_FEATURES_NOTE}. Unit ids (`<model>/<site>/L<ll>/U<uuuu>`) are the atlas website's own.",
              "", "```python", "from datasets import load_dataset",
              f"units = load_dataset(\"path/to/this/folder\", \"{units}\", split=\"train\")", "```", ""]
    if info.get("license"):
        lines += [f"License of the atlas: {info['license']}. Dataset images keep their own terms.", ""]
    return "\n".join(lines)
