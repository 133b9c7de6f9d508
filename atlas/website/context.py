"""The context of every page: what the templates get (the mkdocs ``get_context`` step), as plain
dicts built from the atlas, and the Jinja environment that renders them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from .. import __version__
from ..charts import heatmap, histogram, lines
from ..dataset import images_inside
from ..format import FORMAT_VERSION, unit_id
from ..media import data_uri, map_png, webp
from ..reader import Atlas
from .cite import bibtex_escape, bibtex_key
from .collect import LayerSummary, atlas_info, dataset_or_none, strongest, top_classes
from .urls import TILE_SIZE, page_path, relative_root, view_key, viz_path, write_if_changed


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
    env.filters["pct"] = percent
    return env


def percent(share: float, digits: int = 0) -> str:
    """0.425 -> '42%' (or '42.5%' with one digit); '–' for NaN or inf (a damaged or empty statistic)."""
    return f"{100 * share:.{digits}f}%" if np.isfinite(share) else "–"


def dataset_images(root: Path, dataset) -> Path:
    """Where the probed images are: the folder dataset.h5 records, or, for an atlas moved or copied with
    its images inside (the demo), that folder in the atlas."""
    if dataset.root.is_dir():
        return dataset.root
    inside = images_inside(root, dataset)
    return root / inside if inside else dataset.root


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# How the website names each picture part.
PICTURE_LABELS = {"viz": "paper recipe", "fourier": "Fourier"}


class Renderer:
    """What every page of one render shares (the atlas, its description, the Jinja environment), and
    each page's context: the mkdocs ``get_context`` step. Worker processes build their own."""

    def __init__(self, root: Path, site_dir: Path, base_url: str, images_root: Path | None,
                 skip: frozenset[str] = frozenset()):
        self.root, self.site_dir = root, site_dir
        self.base_url = base_url.rstrip("/") + "/" if base_url else ""
        self.atlas = Atlas(root, skip)
        self.manifest = self.atlas.manifest or {"models": self.atlas.models_info, "shards": self.atlas.shard_entries}
        self.info = atlas_info(self.atlas)
        self.env = environment()
        self.dataset = dataset_or_none(self.atlas)
        self.images_root = images_root or (dataset_images(root, self.dataset) if self.dataset else None)
        self.key = bibtex_key(self.info)
        self._attrs: dict = {}

    def page(self, template: str, path: str, **context) -> bool:
        """Render ``template`` to site-relative ``path``."""
        html = self.env.get_template(template).render(
            root=relative_root(path), atlas=self.info, builder_version=__version__, format_version=FORMAT_VERSION,
            models=self.atlas.models, path=path, **context)
        return write_if_changed(self.site_dir / path, html)

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
               "flags": None, "related": [],
               "neighbours": neighbours, "layer_page": layer_page,
               "permalink": self.permalink(page_path(model, site, layer, index)),
               "weights": attrs.get("weights"), "arch": attrs.get("arch"),
               "bibkey": self.key + "_" + "".join(ch if ch.isalnum() else "_" for ch in unit.id)}
        ctx["pictures"] = [self.picture_context(unit, part, attrs) for part in unit.pictures]
        ctx["viz"] = next((p for p in ctx["pictures"] if p["part"] == "viz"), None)
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
                ctx["top_classes"] = top_classes(np.array([t.index for t in top]), self.dataset.labels,
                                                  self.dataset.class_names)
            ctx["flags"] = unit.flags
            ctx["related"] = self.related_context(unit)
            s = unit.stats
            marker = unit.activation if "viz" in unit.parts else None
            ctx["stats"] = {"mean": s.mean, "max": s.max, "positive": s.positive, "dead": s.dead,
                            "images": int(s.hist.sum()),
                            "hist": histogram(s.hist, s.hist_edges, marker, "optimized image" if marker is not None else "",
                                              title=f"scores of all dataset images for {unit.id}")}
        return ctx

    def related_context(self, unit) -> list[dict]:
        """The unit's related units by scope, each linking to its page, with its paper picture's tile."""
        groups: dict[str, list] = {}
        for r in unit.related:
            if not (self.atlas.has(r.id, "viz") or self.atlas.has(r.id, "probe")):
                continue  # a unit the probe scored but the atlas does not keep
            size = self.manifest.get("models", {}).get(r.id.split("/", 1)[0], {}).get("image_size") or [0]
            groups.setdefault(r.scope, []).append(
                {"id": r.id, "href": f"{r.id}.html", "corr": r.corr,
                 "src": viz_path(r.id, tile=max(size) > TILE_SIZE) if self.atlas.has(r.id, "viz") else None})
        return [{"scope": scope, "units": units} for scope, units in groups.items()]

    def picture_context(self, unit, part: str, attrs: dict) -> dict:
        """What the unit page shows of one of the unit's optimized pictures."""
        pic = unit.picture(part)
        steps = attrs.get(part, {}).get("loss_steps", list(range(len(pic.loss))))
        return {"part": part, "label": PICTURE_LABELS.get(part, part), "src": viz_path(unit.id, part=part),
                "activation": pic.activation, "seed": pic.seed, "recipe": pic.recipe, "image": pic.image,
                "run_seed": attrs.get(part, {}).get("seed", attrs.get("seed")),
                "map": data_uri(map_png(pic.map, float(np.nanmax(pic.map)) if pic.map.size else 0)),
                "loss": lines({"loss": list(zip(steps, pic.loss.tolist()))}, width=420, height=120,
                              title=f"loss during optimization ({PICTURE_LABELS.get(part, part)})",
                              x_label="step", y_label="loss"),
                "size": attrs.get("image_size")}

    def render_unit(self, model: str, site: str, layer: int, index: int, neighbours: dict, layer_page: str) -> None:
        """Write a unit's page and its optimized pictures (and their tiles)."""
        unit = self.atlas.unit(model, layer, index, site=site)
        ctx = self.unit_context(unit, neighbours, layer_page)
        for pic in ctx["pictures"]:
            image = pic.pop("image")
            write_if_changed(self.site_dir / pic["src"], webp(image, quality=80))
            if max(image.shape[:2]) > TILE_SIZE:
                write_if_changed(self.site_dir / viz_path(unit.id, tile=True, part=pic["part"]),
                                 webp(image, TILE_SIZE, 80))
        self.page("unit.html", page_path(model, site, layer, index), **ctx)


def tile(r: Renderer, summ: LayerSummary, i: int) -> dict:
    """A unit's tile on layer pages and strips: its paper picture (``src``) and every picture it has."""
    uid = unit_id(summ.model, summ.site, summ.layer, int(summ.units[i]))
    big = r.manifest.get("models", {}).get(summ.model, {}).get("image_size") or [0]
    small = max(big) > TILE_SIZE
    pictures = [{"part": part, "label": PICTURE_LABELS.get(part, part), "src": viz_path(uid, tile=small, part=part)}
                for part, has in summ.pictures.items() if has[i]]
    return {"uid": uid, "index": int(summ.units[i]), "href": f"{uid}.html",
            "src": next((p["src"] for p in pictures if p["part"] == "viz"), None), "pictures": pictures,
            "top_class": summ.top_class[i], "activation": float(summ.activation[i]),
            "dead": bool(summ.dead[i]), "flags": summ.flags[i], "extent": float(summ.extent[i]),
            "share": summ.top_class[i][1] / summ.top_class[i][2] if summ.top_class[i] else 0.0}


def featured(r: Renderer, summaries: dict) -> list[dict]:
    """For the index page: each model's strongest unit of every FFN layer, shallow to deep."""
    featured = []
    for (m, s, layer), summ in sorted(summaries.items()):
        if s == "ffn" and np.isfinite(summ.activation).any():
            tile_ = tile(r, summ, int(strongest(summ)[0]))
            featured.append({**tile_, "label": f"{m} L{layer:02d}"})
    return featured


def figure_tile(r: Renderer, label: str, uid: str) -> dict:
    """A tile for a unit an analysis shows (its optimized image, linking to its page)."""
    model = uid.split("/", 1)[0]
    size = r.manifest.get("models", {}).get(model, {}).get("image_size") or [0]
    return {"label": label, "href": f"{uid}.html", "src": viz_path(uid, tile=max(size) > TILE_SIZE),
            "alt": f"Optimized image of unit {uid}"}


def example_unit(summaries: dict) -> dict:
    """The unit the downloads page's snippet loads: the first FFN unit when there is one."""
    (m, s, layer), summ = min(summaries.items(), key=lambda kv: (kv[0][1] != "ffn", kv[0]))
    return {"model": m, "site": s, "layer": layer, "index": int(summ.units[0]),
            "uid": unit_id(m, s, layer, int(summ.units[0]))}


def analysis_charts(data: dict) -> list[Markup]:
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
