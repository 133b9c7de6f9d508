"""The context of every page: what the templates get (the mkdocs ``get_context`` step), as plain
dicts built from the atlas, and the Jinja environment that renders them. Only the pages a person
navigates between are HTML; the unit view is one page that reads the packs (atlas.website.data)."""
from __future__ import annotations

import json
import shlex
from importlib import resources
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from .. import __version__
from ..charts import heatmap, lines
from ..dataset import images_inside
from ..format import FORMAT_VERSION, PICTURE_LABELS, AtlasError, unit_id
from ..reader import Atlas
from .cite import bibtex_escape, bibtex_key
from .collect import LayerSummary, atlas_info
from .urls import check_url, content_security_policy, relative_root, script_layout, unit_address, write_if_changed


def templates_dir() -> Path:
    """The site_templates folder (Jinja templates and static assets), shipped in the package."""
    return Path(str(resources.files("site_templates")))


def environment() -> Environment:
    """The Jinja environment: autoescaping on, undefined names are errors."""
    env = Environment(loader=FileSystemLoader(str(templates_dir())), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["bibtex"] = bibtex_escape
    env.filters["si"] = human_bytes
    env.filters["pct"] = percent
    env.filters["pystr"] = python_string
    env.filters["shell"] = shlex.quote
    env.globals["blank"] = BLANK
    return env


# What an <img> in a page shows until the script has read its picture out of a pack: a transparent pixel.
BLANK = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def python_string(text: str) -> str:
    """``text`` as a Python string literal for a snippet (a folder may be named with quotes)."""
    return json.dumps(str(text), ensure_ascii=False)


def percent(share: float, digits: int = 0) -> str:
    """0.425 -> '42%' (or '42.5%' with one digit); '–' for NaN or inf (a damaged or empty statistic)."""
    return f"{100 * share:.{digits}f}%" if share is not None and np.isfinite(share) else "–"


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


class Renderer:
    """What every page of one render shares (the atlas, its description, the Jinja environment, where
    its packs are), and each navigation page's context: the mkdocs ``get_context`` step."""

    def __init__(self, root: Path, site_dir: Path, base_url: str, images_root: Path | None,
                 skip: frozenset[str] = frozenset(), data_url: str = ""):
        self.root, self.site_dir = root, site_dir
        self.base_url = base_url.rstrip("/") + "/" if base_url else ""
        self.data_url = data_url.rstrip("/") + "/" if data_url else ""
        self.atlas = Atlas(root, skip)
        self.manifest = self.atlas.manifest or {"models": self.atlas.models_info, "shards": self.atlas.shard_entries}
        self.info = atlas_info(self.atlas)
        self.env = environment()
        self.dataset = self.atlas.dataset if self.atlas.has_dataset else None
        self.images_root = images_root or (dataset_images(root, self.dataset) if self.dataset else None)
        self.key = bibtex_key(self.info)
        self.csp = content_security_policy(self.data_url)
        self.live: list[dict] = []          # the live models this render publishes (atlas.website.live)
        self.live_runtime: dict | None = None  # what the live page needs of the runtime published with them
        self.written: set[str] = set()      # website-relative paths this render produced

    def page(self, template: str, path: str, **context) -> bool:
        """Render ``template`` to site-relative ``path``."""
        shared = {"root": relative_root(path), "atlas": self.info, "builder_version": __version__,
                  "format_version": FORMAT_VERSION, "models": self.atlas.models, "path": path, "csp": self.csp,
                  "data_url": self.data_url, "layout": self.layout, "live": bool(self.live)}
        html = self.env.get_template(template).render(**{**shared, **context})
        self.written.add(path)
        return write_if_changed(self.site_dir / path, html)

    @property
    def layout(self) -> str:
        """What base.html hands the pages' scripts: script_layout and the models published live."""
        return json.dumps({**script_layout(), "live": [p["model"] for p in self.live]}, separators=(",", ":"))

    def write(self, rel: str, data: bytes | str) -> None:
        """Write a website file at site-relative ``rel`` (when its bytes changed) and record it as produced."""
        self.written.add(rel)
        write_if_changed(self.site_dir / rel, data)

    def open_path(self) -> str:
        """What a reader passes to ``atlas.open``: the hosted atlas's URL, else the atlas folder's name."""
        return self.atlas_url() or self.root.resolve().name

    def atlas_url(self) -> str:
        """Where the atlas folder is hosted: --base-url without its trailing "site/" (the website lives in
        the atlas folder), else the spec's url; empty when unknown."""
        base = self.base_url or (self.info.get("url") or "")
        try:
            check_url(base, "the atlas's url") if base else None
        except AtlasError as e:         # the manifest's (untrusted): a page never carries it unchecked
            print(f"warning: {e}; the pages name no hosted address")
            return ""
        if base.rstrip("/").endswith("/site"):
            base = base.rstrip("/")[:-len("site")]
        return base


def tile(summ: LayerSummary, i: int, label: str = "") -> dict:
    """A unit's tile on layer pages and strips: its id, address, the pictures it has, what it is."""
    u = int(summ.units[i])
    uid = unit_id(summ.model, summ.site, summ.layer, u)
    top = summ.top_class[i]
    return {"uid": uid, "index": u, "href": unit_address(summ.model, summ.site, summ.layer, u),
            "pictures": [{"part": part, "label": PICTURE_LABELS.get(part, part)}
                         for part, has in summ.pictures.items() if has[i]],
            "top_class": top, "activation": float(summ.activation[i]), "dead": bool(summ.dead[i]),
            "flags": summ.flags[i], "extent": float(summ.extent[i]), "share": top[1] if top else 0.0,
            "label": label, "layer_key": f"{summ.site}/{summ.layer}",
            "concepts": [(x.source, x.category, x.concept) for x in summ.best_labels(i)]}


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


def example_unit(summaries: dict, r: Renderer) -> dict:
    """The unit the downloads and cite pages show: the first FFN unit when there is one."""
    (m, s, layer), summ = min(summaries.items(), key=lambda kv: (kv[0][1] != "ffn", kv[0]))
    u = int(summ.units[0])
    address = unit_address(m, s, layer, u)
    return {"model": m, "site": s, "layer": layer, "index": u, "uid": unit_id(m, s, layer, u), "href": address,
            "permalink": (r.base_url or "https://host/atlas/site/") + address}
