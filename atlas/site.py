"""Rendering an atlas folder into a static site (``<atlas>/site/``) through the Jinja templates.

URL scheme (relative to the site root; stable for an atlas version, docs/FORMAT.md "Site"):

    index.html                               the atlas
    <model>/index.html                       a model: its layers with their strongest units
    <model>/<site>/L<ll>/index.html          a layer's units (page-2.html, ... past 256 units)
    <model>/<site>/L<ll>/U<uuuu>.html        a unit: the unit id + ".html"
    search.html, downloads.html, cite.html, analyses/<name>.html
    img/viz/<model>/<site>/L<ll>/U<uuuu>.webp (and _t.webp tiles), img/data/<view>/<row>.webp
    search/meta.js, search/classes-<n>.js    the static search index (script-loaded: works on file://)

Pages are rendered in parallel processes; a file is written only when its bytes change.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import multiprocessing as mp
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from tqdm import tqdm

from . import __version__
from .charts import heatmap, histogram, lines
from .format import CITATION, FORMAT_VERSION, AtlasError, unit_id, unit_runs
from .images import ImageError, load_rgb
from .media import data_uri, map_png, model_view, webp
from .reader import Atlas

PAGE_UNITS = 256           # units per layer page
STRIP_UNITS = 10           # strongest units shown per layer on the model page
TILE_SIZE = 96             # layer-grid tiles
THUMB_SIZE = 128           # dataset thumbnails
CLASS_SHARD_ENTRIES = 4000  # search entries per class-index file
RESERVED = {"assets", "img", "search", "analyses", "index.html", "search.html", "downloads.html", "cite.html"}

PAPER_BIBTEX = """@article{ghiasi2022vision,
  title   = {What do Vision Transformers Learn? A Visual Exploration},
  author  = {Ghiasi, Amin and Kazemi, Hamid and Borgnia, Eitan and Reich, Steven and Shu, Manli and
             Goldblum, Micah and Wilson, Andrew Gordon and Goldstein, Tom},
  journal = {arXiv preprint arXiv:2212.06727},
  year    = {2022}
}"""


def templates_dir() -> Path:
    """The site_templates folder (Jinja templates and static assets)."""
    import site_templates
    return Path(site_templates.__file__).resolve().parent


def environment() -> Environment:
    """The Jinja environment: autoescaping on, undefined names are errors."""
    env = Environment(loader=FileSystemLoader(str(templates_dir())), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["bibtex"] = bibtex_escape
    env.filters["si"] = human_bytes
    return env


def bibtex_escape(text: str) -> str:
    """Escape text for a BibTeX field."""
    out = str(text)
    for ch in "\\{}":
        out = out.replace(ch, {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}"}[ch])
    for ch in "&%$#_":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def write_if_changed(path: Path, data: bytes | str) -> bool:
    """Write ``data`` unless the file already holds exactly it; returns whether it wrote."""
    data = data.encode() if isinstance(data, str) else data
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def page_path(model: str, site: str, layer: int, unit: int | None = None, page: int = 1) -> str:
    """Site-relative path of a unit page (unit given) or a layer page."""
    if unit is not None:
        return f"{unit_id(model, site, layer, unit)}.html"
    return f"{model}/{site}/L{layer:02d}/" + ("index.html" if page == 1 else f"page-{page}.html")


def viz_path(uid: str, tile: bool = False) -> str:
    """Site-relative path of a unit's optimized image (or its tile)."""
    return f"img/viz/{uid}{'_t' if tile else ''}.webp"


def relative_root(path: str) -> str:
    """'../' repeated for a site-relative page path."""
    return "../" * path.count("/")


@dataclass
class LayerSummary:
    """What layer pages, strips and search need of every unit of a layer, read in bulk."""
    model: str
    site: str
    layer: int
    units: np.ndarray          # unit indices present
    activation: np.ndarray     # optimized image's activation (nan without viz)
    data_max: np.ndarray       # dataset max score (nan without probe)
    dead: np.ndarray           # bool
    top_class: list            # (name, count, k) or None per unit
    shard_of: list             # (shard path, row) per unit

    def beats_dataset(self) -> tuple[int, int]:
        """(units whose optimized image activates them more than their best dataset image does,
        live units having both numbers): how far the optimization got beyond the data."""
        both = np.isfinite(self.activation) & np.isfinite(self.data_max) & ~self.dead
        return int((self.activation[both] > self.data_max[both]).sum()), int(both.sum())


def _top_classes(indices: np.ndarray, labels: np.ndarray, names: list[str]) -> list[tuple[str, int]]:
    valid = indices[indices >= 0]
    if not len(valid) or not names:
        return []
    counts = Counter(int(labels[i]) for i in valid if labels[i] >= 0)
    return [(names[c], n) for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def summarize_layer(a: Atlas, model: str, site: str, layer: int) -> LayerSummary:
    """Bulk-read a layer's shards into a LayerSummary."""
    refs = a.shards(model, site, layer)
    units, act, dmax, dead, top, where = [], [], [], [], [], []
    dataset = _dataset_or_none(a)
    for ref in refs:
        f = a.file(ref.path)
        n = ref.unit_stop - ref.unit_start
        units.append(np.arange(ref.unit_start, ref.unit_stop))
        act.append(f["viz/activation"][()] if "viz" in ref.parts else np.full(n, np.nan))
        if "probe" in ref.parts:
            dmax.append(f["stats/max"][()])
            dead.append(f["stats/positive"][()] == 0)
            index = f["topk/index"][()]
            for row in index:
                classes = _top_classes(row, dataset.labels, dataset.class_names) if dataset else []
                top.append((classes[0][0], classes[0][1], int((row >= 0).sum())) if classes else None)
        else:
            dmax.append(np.full(n, np.nan))
            dead.append(np.zeros(n, bool))
            top += [None] * n
        where += [(ref.path, r) for r in range(n)]
    return LayerSummary(model, site, layer, np.concatenate(units), np.concatenate(act), np.concatenate(dmax),
                        np.concatenate(dead), top, where)


def _dataset_or_none(a: Atlas):
    try:
        return a.dataset
    except AtlasError:
        return None


def atlas_info(a: Atlas) -> dict:
    """The atlas's name, version and description (manifest "atlas", with defaults)."""
    info = dict((a.manifest or {}).get("atlas") or {})
    info.setdefault("name", a.root.resolve().name)
    info.setdefault("version", "1")
    info.setdefault("description", "")
    info.setdefault("authors", [])
    info.setdefault("license", "")
    info.setdefault("url", "")
    return info


def citation_cff(info: dict, manifest: dict) -> str:
    """CITATION.cff for the atlas, with the method's paper as a reference."""
    released = (manifest.get("updated") or _dt.date.today().isoformat())[:10]
    authors = info.get("authors") or [{"name": "ViT Atlas contributors"}]
    lines_ = ["cff-version: 1.2.0",
              "message: If you use this atlas, please cite it as below, and the paper whose method built it.",
              "type: dataset", f"title: {json.dumps(info['name'])}", f"version: {json.dumps(str(info['version']))}",
              f"date-released: {released}", "authors:"]
    for author in authors:
        author = {"name": author} if isinstance(author, str) else author
        first = True
        for key, value in author.items():
            lines_.append(f"  {'- ' if first else '  '}{key}: {json.dumps(value)}")
            first = False
    if info.get("url"):
        lines_.append(f"url: {json.dumps(info['url'])}")
    if info.get("license"):
        lines_.append(f"license: {json.dumps(info['license'])}")
    lines_ += ["references:", "  - type: article",
               '    title: "What do Vision Transformers Learn? A Visual Exploration"',
               "    authors:"]
    for family, given in (("Ghiasi", "Amin"), ("Kazemi", "Hamid"), ("Borgnia", "Eitan"), ("Reich", "Steven"),
                          ("Shu", "Manli"), ("Goldblum", "Micah"), ("Wilson", "Andrew Gordon"), ("Goldstein", "Tom")):
        lines_ += [f"      - family-names: {family}", f"        given-names: {given}"]
    lines_ += ['    journal: "arXiv preprint arXiv:2212.06727"', "    year: 2022", ""]
    return "\n".join(lines_)


def atlas_bibtex(info: dict, manifest: dict, key: str) -> str:
    """BibTeX for the atlas as a whole."""
    year = (manifest.get("updated") or _dt.date.today().isoformat())[:4]
    authors = " and ".join((a if isinstance(a, str) else a.get("name", "")) for a in info.get("authors", [])) \
        or "{ViT Atlas contributors}"
    fields = [f"  title        = {{{bibtex_escape(info['name'])}: a neuron atlas of vision transformers}}",
              f"  author       = {{{authors}}}", f"  year         = {{{year}}}",
              f"  version      = {{{bibtex_escape(info['version'])}}}",
              f"  note         = {{Built with ViT Atlas {__version__}, atlas format {FORMAT_VERSION}}}"]
    if info.get("url"):
        fields.append(f"  howpublished = {{\\url{{{info['url']}}}}}")
    return "@misc{" + key + ",\n" + ",\n".join(fields) + "\n}"


def bibtex_key(info: dict) -> str:
    """A BibTeX key for the atlas: letters and digits of its name and version."""
    return "".join(ch for ch in f"{info['name']}v{info['version']}" if ch.isalnum()) or "atlas"


class _Renderer:
    """Shared state of one render; workers rebuild it from (root, site, options)."""

    def __init__(self, root: Path, site: Path, base_url: str, images_root: Path | None):
        self.root, self.site = root, site
        self.base_url = base_url.rstrip("/") + "/" if base_url else ""
        self.atlas = Atlas(root)
        self.manifest = self.atlas.manifest or {}
        self.info = atlas_info(self.atlas)
        self.env = environment()
        self.dataset = _dataset_or_none(self.atlas)
        self.images_root = images_root or (self.dataset.root if self.dataset else None)
        self.key = bibtex_key(self.info)
        self._attrs: dict = {}

    def page(self, template: str, path: str, **context) -> bool:
        """Render ``template`` to site-relative ``path``."""
        html = self.env.get_template(template).render(
            root=relative_root(path), atlas=self.info, builder_version=__version__, format_version=FORMAT_VERSION,
            models=self.atlas.models, path=path, **context)
        return write_if_changed(self.site / path, html)

    def layer_attrs(self, model: str, site: str, layer: int) -> dict:
        """A layer's shard attributes (read once per layer)."""
        key = (model, site, layer)
        if key not in self._attrs:
            self._attrs[key] = self.atlas.shard_attrs(model, layer, site)
        return self._attrs[key]

    def permalink(self, path: str) -> str:
        """A page's permanent address: absolute under --base-url, else relative to the site root."""
        return self.base_url + path

    def unit_context(self, unit, neighbours: dict, layer_page: str) -> dict:
        """Everything the unit page shows of ``unit``."""
        model, site, layer, index = unit.model, unit.site, unit.layer, unit.index
        attrs = self.layer_attrs(model, site, layer)
        ctx = {"uid": unit.id, "model": model, "site": site, "layer": layer, "index": index,
               "shard": unit.shard, "row": unit.row, "grid": attrs.get("grid"), "viz": None, "topk": [],
               "top_classes": [], "stats": None, "recipe": attrs.get("recipe"), "seed": attrs.get("seed"),
               "neighbours": neighbours, "layer_page": layer_page,
               "permalink": self.permalink(page_path(model, site, layer, index)),
               "weights": attrs.get("weights"), "arch": attrs.get("arch"),
               "bibkey": self.key + "_" + "".join(ch if ch.isalnum() else "_" for ch in unit.id)}
        if "viz" in unit.parts:
            ctx["viz"] = {"src": viz_path(unit.id), "activation": unit.activation, "seed": unit.seed,
                          "map": data_uri(map_png(unit.map, float(np.nanmax(unit.map)) if unit.map.size else 0)),
                          "loss": lines({"loss": list(zip(attrs["viz"]["loss_steps"], unit.loss.tolist()))},
                                        width=420, height=120, title="loss during optimization",
                                        x_label="step", y_label="loss"),
                          "size": attrs.get("image_size")}
        if "probe" in unit.parts:
            top = unit.topk
            scale = max((float(np.nanmax(t.map)) for t in top), default=0.0)
            rows = []
            view = view_key(attrs["probe"]["data_config"])
            for rank, t in enumerate(top):
                label = int(self.dataset.labels[t.index]) if self.dataset else -1
                rows.append({"rank": rank + 1, "src": f"img/data/{view}/{t.index}.webp", "score": t.score,
                             "path": self.dataset.paths[t.index] if self.dataset else str(t.index),
                             "class": self.dataset.class_name(label) if self.dataset else None,
                             "map": data_uri(map_png(t.map, scale))})
            ctx["topk"] = rows
            if self.dataset:
                ctx["top_classes"] = _top_classes(np.array([t.index for t in top]), self.dataset.labels,
                                                  self.dataset.class_names)
            s = unit.stats
            marker = unit.activation if "viz" in unit.parts else None
            ctx["stats"] = {"mean": s.mean, "max": s.max, "positive": s.positive, "dead": s.dead,
                            "images": int(s.hist.sum()),
                            "hist": histogram(s.hist, s.hist_edges, marker, "optimized image" if marker is not None else "",
                                              title=f"scores of all dataset images for {unit.id}")}
        return ctx

    def render_unit(self, model: str, site: str, layer: int, index: int, neighbours: dict, layer_page: str) -> None:
        """Write a unit's page and its optimized image (and tile)."""
        unit = self.atlas.unit(model, layer, index, site=site)
        ctx = self.unit_context(unit, neighbours, layer_page)
        if ctx["viz"]:
            write_if_changed(self.site / viz_path(unit.id), webp(unit.image, quality=80))
            if max(unit.image.shape[:2]) > TILE_SIZE:
                write_if_changed(self.site / viz_path(unit.id, tile=True), webp(unit.image, TILE_SIZE, 80))
        self.page("unit.html", page_path(model, site, layer, index), **ctx)


def _unit_job(args) -> int:
    """Worker: render the unit pages of one slice of a layer; returns how many."""
    root, site, base_url, images_root, model, site_name, layer, layer_units, start, stop = args
    r = _renderer(root, site, base_url, images_root)
    for pos in range(start, stop):
        neighbours = {"prev": page_path(model, site_name, layer, layer_units[pos - 1]) if pos > 0 else None,
                      "next": page_path(model, site_name, layer, layer_units[pos + 1])
                      if pos + 1 < len(layer_units) else None}
        up = page_path(model, site_name, layer, page=pos // PAGE_UNITS + 1)
        r.render_unit(model, site_name, layer, layer_units[pos], neighbours, up)
    return stop - start


_CACHE: dict = {}


def _renderer(root, site, base_url, images_root) -> _Renderer:
    key = (str(root), str(site), base_url, str(images_root))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _Renderer(Path(root), Path(site), base_url, Path(images_root) if images_root else None)
    return _CACHE[key]


def _thumb_job(args) -> tuple[int, str | None]:
    """Worker: the WebP thumbnail of dataset row ``row`` as the model saw it (resize + center crop)."""
    row, source, target, data_config = args
    target = Path(target)
    if target.exists():
        return row, None
    try:
        view = model_view(load_rgb(source), data_config)
    except (ImageError, OSError) as e:
        return row, str(e)
    write_if_changed(target, webp(view, THUMB_SIZE, 80))
    return row, None


def render(root: str | Path, out: str | Path | None = None, workers: int | None = None, progress: bool = True,
           base_url: str = "", images: str | Path | None = None) -> Path:
    """Render the atlas at ``root`` into ``out`` (default ``root/site``); returns the index page's path.

    ``images`` overrides where the dataset's images are (dataset.h5 records the folder it was probed
    from); ``base_url`` makes permalinks and citations absolute.
    """
    root = Path(root)
    site = Path(out) if out else root / "site"
    r = _Renderer(root, site, base_url, Path(images) if images else None)
    a = r.atlas
    if not a.models:
        raise AtlasError(f"{root} holds no shards yet: run `python build.py visualize` or `probe` first")
    clash = RESERVED & set(a.models)
    if clash:
        raise AtlasError(f"model names {sorted(clash)} collide with the site's own files; rebuild with --name")
    workers = workers or min(8, os.cpu_count() or 1)
    for asset in (templates_dir() / "static").iterdir():
        write_if_changed(site / "assets" / asset.name, asset.read_bytes())
    cff = citation_cff(r.info, r.manifest)
    write_if_changed(root / CITATION, cff)
    write_if_changed(site / CITATION, cff)

    summaries = {(m, s, layer): summarize_layer(a, m, s, layer)
                 for m in a.models for s in a.sites(m) for layer in a.layers(m, s)}
    jobs = []
    for (m, s, layer), summ in summaries.items():
        units = summ.units.tolist()
        for start in range(0, len(units), 64):
            jobs.append((str(root), str(site), base_url, str(images) if images else None, m, s, layer,
                         units, start, min(start + 64, len(units))))
    thumbs = _thumbnail_jobs(r, site)
    total_units = sum(j[9] - j[8] for j in jobs)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        bar = tqdm(total=total_units + len(thumbs), unit="page", desc="render", disable=not progress,
                   dynamic_ncols=True)
        missing = []
        for row, error in pool.imap_unordered(_thumb_job, thumbs, chunksize=16):
            if error:
                missing.append(row)
            bar.update(1)
        for pages in pool.imap_unordered(_unit_job, jobs):
            bar.update(pages)
        bar.close()
    if missing:
        print(f"warning: {len(missing)} dataset images could not be read for thumbnails (pass --images DIR)")
    _render_layers_and_models(r, summaries)
    _render_search(r, summaries)
    _render_top_pages(r, summaries)
    return site / "index.html"


def view_key(data_config: dict) -> str:
    """A short name for a model's view of the dataset (its eval resize and crop): thumbnails are
    stored per view, so models with different transforms in one atlas each get aligned maps."""
    keys = ("input_size", "crop_pct", "crop_mode", "interpolation")
    text = json.dumps({k: data_config.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _thumbnail_jobs(r: _Renderer, site: Path) -> list:
    """One job per (view, dataset row) that some unit of a probed model shows."""
    if not r.dataset:
        return []
    used: dict[str, set[int]] = {}
    configs: dict[str, dict] = {}
    for m in r.atlas.models:
        for s in r.atlas.sites(m):
            for layer in r.atlas.layers(m, s):
                probe = r.layer_attrs(m, s, layer).get("probe")
                if not probe:
                    continue
                key = view_key(probe["data_config"])
                configs[key] = probe["data_config"]
                for ref in r.atlas.shards(m, s, layer):
                    if "probe" in ref.parts:
                        rows = np.unique(r.atlas.file(ref.path)["topk/index"][()])
                        used.setdefault(key, set()).update(int(i) for i in rows if i >= 0)
    return [(row, str(r.images_root / r.dataset.paths[row]), str(site / f"img/data/{key}/{row}.webp"), configs[key])
            for key in sorted(used) for row in sorted(used[key])]


def _tile(r: _Renderer, summ: LayerSummary, i: int) -> dict:
    uid = unit_id(summ.model, summ.site, summ.layer, int(summ.units[i]))
    has_viz = np.isfinite(summ.activation[i])
    big = r.manifest.get("models", {}).get(summ.model, {}).get("image_size") or [0]
    tile = has_viz and max(big) > TILE_SIZE
    return {"uid": uid, "index": int(summ.units[i]), "href": f"{uid}.html",
            "src": viz_path(uid, tile=tile) if has_viz else None,
            "top_class": summ.top_class[i], "activation": float(summ.activation[i]),
            "dead": bool(summ.dead[i])}


def _strongest(summ: LayerSummary) -> np.ndarray:
    """A layer's units, strongest first: by the optimized image's activation, else the dataset max."""
    strength = np.where(np.isfinite(summ.activation), summ.activation, summ.data_max)
    return np.argsort(-np.nan_to_num(strength, nan=-np.inf), kind="stable")


def _featured(r: _Renderer, summaries: dict) -> list[dict]:
    """For the index page: each model's strongest unit of every FFN layer, shallow to deep."""
    featured = []
    for (m, s, layer), summ in sorted(summaries.items()):
        if s == "ffn" and np.isfinite(summ.activation).any():
            tile = _tile(r, summ, int(_strongest(summ)[0]))
            featured.append({**tile, "label": f"{m} L{layer:02d}"})
    return featured


def _render_layers_and_models(r: _Renderer, summaries: dict) -> None:
    by_model: dict[str, list] = {}
    for (m, s, layer), summ in summaries.items():
        tiles = [_tile(r, summ, i) for i in range(len(summ.units))]
        pages = max(1, -(-len(tiles) // PAGE_UNITS))
        info = r.manifest.get("models", {}).get(m, {}).get("sites", {}).get(s, {}).get(f"{layer:02d}", {})
        for p in range(1, pages + 1):
            r.page("layer.html", page_path(m, s, layer, page=p), model=m, site=s, layer=layer, info=info,
                   tiles=tiles[(p - 1) * PAGE_UNITS:p * PAGE_UNITS], page=p, pages=pages,
                   page_links=[(q, page_path(m, s, layer, page=q)) for q in range(1, pages + 1)])
        order = _strongest(summ)[:STRIP_UNITS]
        dead = int(summ.dead.sum())
        by_model.setdefault(m, []).append({"site": s, "layer": layer, "info": info, "units": len(tiles),
                                           "href": page_path(m, s, layer), "strip": [tiles[i] for i in order],
                                           "dead": dead, "beats": summ.beats_dataset()})
    for m, layers in by_model.items():
        info = r.manifest.get("models", {}).get(m, {})
        beats = [sum(x["beats"][i] for x in layers) for i in (0, 1)]
        r.page("model.html", f"{m}/index.html", model=m, model_info=info, beats=beats,
               layers=sorted(layers, key=lambda x: (x["site"] != "ffn", x["site"], x["layer"])))


def _render_search(r: _Renderer, summaries: dict) -> None:
    entries: dict[str, list] = {}
    for summ in summaries.values():
        for i, top in enumerate(summ.top_class):
            if top and top[1] * 2 >= top[2]:  # "mostly": at least half of the unit's top-k images
                uid = unit_id(summ.model, summ.site, summ.layer, int(summ.units[i]))
                entries.setdefault(top[0], []).append([uid, top[1], top[2], int(np.isfinite(summ.activation[i]))])
    names = sorted(entries)
    n_shards = max(1, -(-sum(len(v) for v in entries.values()) // CLASS_SHARD_ENTRIES))
    shard_of = {name: zlib.crc32(name.encode()) % n_shards for name in names}
    for k in range(n_shards):
        part = {name: sorted(entries[name], key=lambda e: -e[1]) for name in names if shard_of[name] == k}
        write_if_changed(r.site / f"search/classes-{k}.js", f"AtlasSearch.classes({k}, " + json.dumps(part) + ");\n")
    meta = {"models": {}, "classes": [[name, shard_of[name], len(entries[name])] for name in names],
            "tiles": {}}
    for (m, s, layer), summ in summaries.items():
        with_viz = summ.units[np.isfinite(summ.activation)].tolist()
        meta["models"].setdefault(m, {}).setdefault(s, {})[f"{layer:02d}"] = {
            "units": [int(summ.units[0]), int(summ.units[-1]) + 1],
            "viz": [list(r) for r in unit_runs(with_viz)]}
        size = r.manifest.get("models", {}).get(m, {}).get("image_size") or [0]
        meta["tiles"][m] = max(size) > TILE_SIZE
    write_if_changed(r.site / "search/meta.js", "AtlasSearch.meta(" + json.dumps(meta) + ");\n")
    r.page("search.html", "search.html")


def _render_top_pages(r: _Renderer, summaries: dict) -> None:
    m = r.manifest
    shards = m.get("shards", [])
    files = m.get("files", [])
    dataset = None
    if r.dataset:
        d = r.dataset
        dataset = {"images": len(d), "classes": len(d.class_names), "layout": d.attrs.get("layout"),
                   "root": str(d.root), "skipped": len(d.skipped), "labelled": int((d.labels >= 0).sum())}
    analyses = sorted(p.stem for p in (r.root / "analyses").glob("*.json")) if (r.root / "analyses").is_dir() else []
    models = []
    for name in r.atlas.models:
        info = m.get("models", {}).get(name, {})
        sites = {s: len(layers) for s, layers in info.get("sites", {}).items()}
        units = sum(v.get("units") or 0 for layers in info.get("sites", {}).values() for v in layers.values())
        recipe = None
        first = r.atlas.sites(name)[0]
        attrs = r.atlas.shard_attrs(name, r.atlas.layers(name, first)[0], first)
        recipe = attrs.get("recipe")
        models.append({"name": name, "arch": info.get("arch"), "weights": info.get("weights"), "sites": sites,
                       "units": units, "image_size": info.get("image_size"), "recipe": recipe,
                       "layers": max(sites.values()) if sites else 0})
    total_bytes = sum(s["bytes"] for s in shards) + sum(f["bytes"] for f in files)
    r.page("index.html", "index.html", model_rows=models, dataset=dataset, analyses=analyses,
           featured=_featured(r, summaries),
           history=m.get("history", []), total_bytes=total_bytes, shard_count=len(shards))
    r.page("downloads.html", "downloads.html", shards=shards, files=files, dataset=dataset,
           example=_example_unit(summaries), total_bytes=total_bytes)
    r.page("cite.html", "cite.html", cff=citation_cff(r.info, m), atlas_bibtex=atlas_bibtex(r.info, m, r.key),
           paper_bibtex=PAPER_BIBTEX, example=_example_unit(summaries))
    for name in analyses:
        data = json.loads((r.root / "analyses" / f"{name}.json").read_text())
        figures = [{"title": fig["title"],
                    "rows": [{"label": row["label"], "tiles": [_figure_tile(r, label, uid) for label, uid in row["units"]]}
                             for row in fig["rows"]]} for fig in data.get("figures", [])]
        r.page("analysis.html", f"analyses/{name}.html", name=name, analysis=data, charts=_analysis_charts(data),
               figures=figures)


def _figure_tile(r: _Renderer, label: str, uid: str) -> dict:
    """A tile for a unit an analysis shows (its optimized image, linking to its page)."""
    model = uid.split("/", 1)[0]
    size = r.manifest.get("models", {}).get(model, {}).get("image_size") or [0]
    return {"label": label, "href": f"{uid}.html", "src": viz_path(uid, tile=max(size) > TILE_SIZE),
            "alt": f"Optimized image of unit {uid}"}


def _example_unit(summaries: dict) -> dict:
    """The unit the downloads page's snippet loads: the first FFN unit when there is one."""
    (m, s, layer), summ = min(summaries.items(), key=lambda kv: (kv[0][1] != "ffn", kv[0]))
    return {"model": m, "site": s, "layer": layer, "index": int(summ.units[0]),
            "uid": unit_id(m, s, layer, int(summ.units[0]))}


def _analysis_charts(data: dict) -> list[Markup]:
    """Charts an analysis asks for in its JSON ("charts": [{"type": "lines"|"heatmap", ...}])."""
    charts = []
    for spec in data.get("charts", []):
        if spec["type"] == "lines":
            charts.append(lines({k: [tuple(p) for p in v] for k, v in spec["series"].items()},
                                title=spec.get("title", ""), x_label=spec.get("x_label", ""),
                                y_label=spec.get("y_label", ""), y_range=tuple(spec["y_range"]) if spec.get("y_range") else None))
        elif spec["type"] == "heatmap":
            charts.append(heatmap(np.array(spec["values"], float), title=spec.get("title", ""),
                                  fmt=spec.get("format", "{:.0%}")))
    return charts
