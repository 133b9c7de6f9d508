"""Rendering an atlas into its website: collect what every page shows, then write (the mkdocs order).

Unit pages and dataset thumbnails are written by a pool of worker processes, each with its own
``Renderer`` (made once per process by the pool's initializer); layer, model, search and top pages
are written by the main process. A file is written only when its bytes change, and atomically.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..flags import FLAG_NAMES
from ..folder import own_folder
from ..format import CITATION, AtlasError
from ..images import ImageError, load_rgb
from ..media import model_view, webp
from ..reader import Atlas
from ..shard import remove_stale_temps
from .cite import PAPER_BIBTEX, atlas_bibtex, citation_cff
from .collect import LayerSummary, ThumbnailJob, strongest, summarize_layer, thumbnail_jobs
from .context import (PICTURE_LABELS, Renderer, analysis_charts, example_unit, featured, figure_tile, templates_dir,
                      tile)
from .search import render_search
from .urls import (MARKER, PAGE_UNITS, RESERVED, THUMB_SIZE, complete_webp, page_path, write_if_changed)

STRIP_UNITS = 10           # strongest units shown per layer on the model page
FLAG_LABELS = {"dead": "dead units", "class_selective": "class-selective units", "local": "local units",
               "global": "global units", "outlier_tokens": "outlier-token units"}
SLICE_UNITS = 64           # unit pages per worker job


@dataclass(frozen=True)
class UnitPagesJob:
    """A worker's share of one layer's unit pages: positions [start, stop) of ``units``."""
    model: str
    site: str
    layer: int
    units: list[int]
    start: int
    stop: int


_WORKER: Renderer | None = None


def _start_worker(root: str, site_dir: str, base_url: str, images_root: str | None, skip: frozenset[str]) -> None:
    global _WORKER
    _WORKER = Renderer(Path(root), Path(site_dir), base_url, Path(images_root) if images_root else None, skip)


def _unit_pages(job: UnitPagesJob) -> int:
    """Worker: render the unit pages of one slice of a layer; returns how many."""
    m, s, layer, units = job.model, job.site, job.layer, job.units
    for pos in range(job.start, job.stop):
        neighbours = {"prev": page_path(m, s, layer, units[pos - 1]) if pos > 0 else None,
                      "next": page_path(m, s, layer, units[pos + 1]) if pos + 1 < len(units) else None}
        _WORKER.render_unit(m, s, layer, units[pos], neighbours, page_path(m, s, layer, page=pos // PAGE_UNITS + 1))
    return job.stop - job.start


def _thumbnail(job: ThumbnailJob) -> tuple[int, str | None]:
    """Worker: the WebP thumbnail of a dataset row as the model saw it (resize + center crop)."""
    target = Path(job.target)
    if complete_webp(target):
        return job.row, None
    try:
        view = model_view(load_rgb(job.source), job.data_config)
    except (ImageError, OSError) as e:
        return job.row, str(e)
    write_if_changed(target, webp(view, THUMB_SIZE, 80))
    return job.row, None


def website_folder(root: Path, out: str | Path | None) -> Path:
    """Where to render: ``root/site`` (the atlas's own), or ``out`` if it is new, empty or a website
    rendered before (it holds the marker file); never someone else's folder. Checked writable."""
    site_dir = Path(out) if out else root / "site"
    ours = (lambda folder: True) if not out else (lambda folder: (folder / MARKER).exists())
    return own_folder(site_dir, "--site", ours, "is not empty and was not rendered by ViT Atlas; its files would be "
                                               "overwritten: give a new or empty folder")


def render(root: str | Path, out: str | Path | None = None, workers: int | None = None, progress: bool = True,
           base_url: str = "", images: str | Path | None = None) -> Path:
    """Render the atlas at ``root`` into ``out`` (default ``root/site``); returns the index page's path.

    ``images`` overrides where the dataset's images are (dataset.h5 records the folder it was probed
    from); ``base_url`` makes permalinks and citations absolute.
    """
    root = Path(root)
    site_dir = website_folder(root, out)
    remove_stale_temps(site_dir)       # what a killed render left; a host would publish it
    damaged = Atlas(root).damaged_shards()
    for rel, why in sorted(damaged.items()):
        print(f"warning: leaving out {rel}: {why} (run `python build.py verify {root}`; rerunning the "
              "command that built it recomputes it)")
    skip = frozenset(damaged)
    r = Renderer(root, site_dir, base_url, Path(images) if images else None, skip)
    a = r.atlas
    if not a.models:
        raise AtlasError(f"{root} holds no shards yet: run `python build.py visualize` or `probe` first")
    clash = RESERVED & set(a.models)
    if clash:
        raise AtlasError(f"model names {sorted(clash)} collide with the website's own files; rebuild with --name")
    write_if_changed(site_dir / MARKER, json.dumps({"atlas": r.info["name"]}) + "\n")
    workers = workers or min(8, os.cpu_count() or 1)
    for asset in (templates_dir() / "static").iterdir():
        write_if_changed(site_dir / "assets" / asset.name, asset.read_bytes())
    cff = citation_cff(r.info, r.manifest)
    if os.access(root, os.W_OK):
        write_if_changed(root / CITATION, cff)
    write_if_changed(site_dir / CITATION, cff)

    summaries = {(m, s, layer): summarize_layer(a, m, s, layer)
                 for m in a.models for s in a.sites(m) for layer in a.layers(m, s)}
    jobs = [UnitPagesJob(m, s, layer, summ.units.tolist(), start, min(start + SLICE_UNITS, len(summ.units)))
            for (m, s, layer), summ in summaries.items() for start in range(0, len(summ.units), SLICE_UNITS)]
    thumbs = thumbnail_jobs(a, r.layer_attrs, r.images_root, site_dir)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_start_worker,
                  initargs=(str(root), str(site_dir), base_url, str(images) if images else None, skip)) as pool:
        bar = tqdm(total=sum(j.stop - j.start for j in jobs) + len(thumbs), unit="page", desc="render",
                   disable=not progress, dynamic_ncols=True)
        missing = []
        for row, error in pool.imap_unordered(_thumbnail, thumbs, chunksize=16):
            if error:
                missing.append(row)
            bar.update(1)
        for pages in pool.imap_unordered(_unit_pages, jobs):
            bar.update(pages)
        bar.close()
    if missing:
        print(f"warning: {len(missing)} dataset images could not be read for thumbnails (pass --images DIR)")
    _render_layers_and_models(r, summaries)
    render_search(r, summaries)
    _render_top_pages(r, summaries)
    return site_dir / "index.html"


def _render_layers_and_models(r: Renderer, summaries: dict[tuple, LayerSummary]) -> None:
    by_model: dict[str, list] = {}
    for (m, s, layer), summ in summaries.items():
        tiles = [tile(r, summ, i) for i in range(len(summ.units))]
        pages = max(1, -(-len(tiles) // PAGE_UNITS))
        info = r.manifest.get("models", {}).get(m, {}).get("sites", {}).get(s, {}).get(f"{layer:02d}", {})
        for p in range(1, pages + 1):
            r.page("layer.html", page_path(m, s, layer, page=p), model=m, site=s, layer=layer, info=info,
                   picture_parts=[(part, PICTURE_LABELS.get(part, part)) for part in summ.pictures],
                   flag_filters=[(name, FLAG_LABELS[name]) for name in FLAG_NAMES
                                 if any(name in f for f in summ.flags)],
                   tiles=tiles[(p - 1) * PAGE_UNITS:p * PAGE_UNITS], page=p, pages=pages,
                   page_links=[(q, page_path(m, s, layer, page=q)) for q in range(1, pages + 1)])
        order = strongest(summ)[:STRIP_UNITS]
        by_model.setdefault(m, []).append({"site": s, "layer": layer, "info": info, "units": len(tiles),
                                           "href": page_path(m, s, layer), "strip": [tiles[i] for i in order],
                                           "dead": int(summ.dead.sum()), "beats": summ.beats_dataset()})
    for m, layers in by_model.items():
        info = r.manifest.get("models", {}).get(m, {})
        beats = [sum(x["beats"][i] for x in layers) for i in (0, 1)]
        r.page("model.html", f"{m}/index.html", model=m, model_info=info, beats=beats,
               layers=sorted(layers, key=lambda x: (x["site"] != "ffn", x["site"], x["layer"])))


def _read_analyses(root: Path) -> dict[str, dict]:
    """The atlas's analysis results by name; a file that is not an analysis is skipped with a warning
    (`build.py verify` names it; rerunning the analysis replaces it)."""
    found = {}
    folder = root / "analyses"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                raise ValueError("no results table")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            print(f"warning: skipping analyses/{path.name}: not an analysis result ({str(e)[:120]}); "
                  f"rerun `python build.py analyze {path.stem} ...` to replace it")
            continue
        found[path.stem] = data
    return found


def atlas_url(r: Renderer) -> str:
    """Where the atlas folder is hosted, for `atlas.open(URL)`: --base-url without its trailing "site/"
    (the website lives in the atlas folder), else the spec's url, else a placeholder."""
    base = r.base_url or (r.info.get("url") or "")
    if base.rstrip("/").endswith("/site"):
        base = base.rstrip("/")[:-len("site")]
    return base if base else "https://example.org/path/to/atlas/"


def _render_top_pages(r: Renderer, summaries: dict[tuple, LayerSummary]) -> None:
    m = r.manifest
    shards = m.get("shards", [])
    files = m.get("files", [])
    dataset = None
    if r.dataset:
        d = r.dataset
        dataset = {"images": len(d), "classes": len(d.class_names), "layout": d.attrs.get("layout"),
                   "root": str(d.root), "skipped": len(d.skipped), "labelled": int((d.labels >= 0).sum())}
    analyses = _read_analyses(r.root)
    models = []
    for name in r.atlas.models:
        info = m.get("models", {}).get(name, {})
        sites = {s: len(layers) for s, layers in info.get("sites", {}).items()}
        units = sum(v.get("units") or 0 for layers in info.get("sites", {}).values() for v in layers.values())
        first = r.atlas.sites(name)[0]
        recipe = r.layer_attrs(name, first, r.atlas.layers(name, first)[0]).get("recipe")
        models.append({"name": name, "arch": info.get("arch"), "weights": info.get("weights"), "sites": sites,
                       "units": units, "image_size": info.get("image_size"), "recipe": recipe,
                       "layers": max(sites.values()) if sites else 0})
    total_bytes = sum(s["bytes"] for s in shards) + sum(f["bytes"] for f in files)
    r.page("index.html", "index.html", model_rows=models, dataset=dataset, analyses=sorted(analyses),
           featured=featured(r, summaries),
           history=m.get("history", []), total_bytes=total_bytes, shard_count=len(shards))
    r.page("downloads.html", "downloads.html", shards=shards, files=files, dataset=dataset, remote_url=atlas_url(r),
           example=example_unit(summaries), total_bytes=total_bytes)
    r.page("cite.html", "cite.html", cff=citation_cff(r.info, m), atlas_bibtex=atlas_bibtex(r.info, m, r.key),
           paper_bibtex=PAPER_BIBTEX, example=example_unit(summaries))
    for name, data in analyses.items():
        figures = [{"title": fig["title"],
                    "rows": [{"label": row["label"], "tiles": [figure_tile(r, label, uid) for label, uid in row["units"]]}
                             for row in fig["rows"]]} for fig in data.get("figures", [])]
        r.page("analysis.html", f"analyses/{name}.html", name=name, analysis=data, charts=analysis_charts(data),
               figures=figures)
