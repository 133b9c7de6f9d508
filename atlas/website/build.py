"""Rendering an atlas into its website: collect what every page shows, then write (the mkdocs order).

1. collect: per-layer summaries (``collect.summarize_layer``) and the packs to make, each with the
   digest of what it is made from (``data.unit_pack_jobs``, ``data.thumb_pack_jobs``);
2. packs, in worker processes (``data.PackBuilder``): dataset thumbnails, then the unit packs; a pack
   whose digest is unchanged is kept without reading its shards;
3. strips (``data.strips_pack``, copied out of the unit packs), then the pages, the search index and
   the citation files, in the main process;
4. files the last render recorded and this one did not produce (a removed layer) are removed, and what
   this render wrote is recorded (atlas.website.listing). Every file is written only when its bytes
   change, and atomically.
"""
from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ..analyses import analysis_files, parse_analysis
from ..flags import FLAG_LABELS, FLAG_NAMES
from ..labels import SOURCE_TITLES, SOURCES
from ..live import LIVE_CHOICES, live_folder
from ..folder import check_owned_folder, own_folder, remove_recorded
from ..format import ANALYSES, CITATION, PICTURE_LABELS, WEBSITE, AtlasError, command, parse_unit_id
from ..reader import Atlas
from ..manifest import sha256_file
from ..shard import remove_stale_temps
from .cite import PAPER_BIBTEX, atlas_bibtex, citation_cff
from .collect import LayerSummary, strongest_units, summarize_layer
from .context import Renderer, analysis_charts, example_unit, human_bytes, templates_dir, tile
from .data import (SCRIPT_SUFFIX, STRIP_UNITS, PackBuilder, script_twin, strip_layers, strips_pack,
                   thumb_pack_jobs, unit_pack_jobs)
from .check import PACK_LIST
from .live import publish_live, publish_samples
from .listing import read_listing, write_listing
from .packs import read_header, unit_pack_path
from .search import render_search
from .urls import (LIVE_PAGE, MARKER, PAGE_UNITS, RESERVED, UNIT_VIEW, check_url, content_security_policy, map_data_path, map_path, page_path,
                   write_if_changed)

OFFLINE_LIMIT = 512 * 10**6     # "auto": script twins for pages opened from disk up to this many bytes of shards
FEATURED_MODELS = 4             # models whose strongest units the index page shows

_WORKER: PackBuilder | None = None


def _start_worker(*args) -> None:
    global _WORKER
    _WORKER = PackBuilder(*args)


def _unit_pack(job) -> int:
    _WORKER.unit_pack(job)
    return job.count


def _thumb_pack(job) -> tuple[int, list[int]]:
    return _WORKER.thumb_pack(job)


def website_folder(root: Path, out: str | Path | None) -> Path:
    """Where to render: ``root/site`` (the atlas's own: a real folder, never a link), or ``out``; either
    new, empty or a website rendered before (it holds the marker file), with no symbolic link inside;
    never someone else's folder. Checked writable."""
    refusal = ("is not empty and was not rendered by ViT Atlas (it has no .vit-atlas-website); its files would be "
               "overwritten: give a new or empty folder")
    rendered = lambda folder: (folder / MARKER).is_file()    # noqa: E731
    if out:
        return own_folder(out, "--out", rendered, refusal)
    site_dir = root / WEBSITE
    check_owned_folder(site_dir)
    return own_folder(site_dir, "the website folder", rendered, refusal + " (or render with --out elsewhere)")


def offline_wanted(choice: str, a: Atlas, data_url: str) -> bool:
    """Whether to write script twins of the packs (pages opened from disk): ``on``, ``off``, or ``auto``
    (on when the data lives beside the pages and the shards total at most OFFLINE_LIMIT bytes)."""
    if choice not in ("auto", "on", "off"):
        raise AtlasError(f"--offline must be auto, on or off, not {choice!r}")
    if choice != "auto":
        return choice == "on"
    return not data_url and sum(int(e.get("bytes") or 0) for e in a.shard_entries) <= OFFLINE_LIMIT


def render(root: str | Path, out: str | Path | None = None, workers: int | None = None, progress: bool = True,
           base_url: str = "", images: str | Path | None = None, data_url: str = "", offline: str = "auto",
           fresh: bool = False, live: str = "auto") -> Path:
    """Render the atlas at ``root`` into ``out`` (default ``root/site``); returns the index page's path.

    ``images`` overrides where the dataset's images are (dataset.h5 records the folder it was probed
    from); ``base_url`` makes permalinks and citations absolute; ``data_url`` is where the packs will be
    hosted when apart from the pages (docs/HOSTING.md); ``offline`` writes the packs as scripts too, so
    the website works opened from disk; ``fresh`` makes every pack again instead of keeping those whose
    sources and bytes are unchanged (for a website received from elsewhere, whose record is its own); ``live``
    publishes the models' live models (auto: those small enough, on: all, an error for a model without one, off).
    """
    root = Path(root)
    for flag, url in (("--data-url", data_url), ("--base-url", base_url)):
        if url:
            check_url(url, flag)
    site_dir = website_folder(root, out)
    remove_stale_temps(site_dir)       # what a killed render left; a host would publish it
    damaged = Atlas(root).damaged_shards()
    for rel, why in sorted(damaged.items()):
        print(f"warning: leaving out {rel}: {why} (run `{command(f'verify {root}')}`; rerunning the "
              "command that built it recomputes it)")
    skip = frozenset(damaged)
    r = Renderer(root, site_dir, base_url, Path(images) if images else None, skip, data_url)
    a = r.atlas
    if not a.models:
        raise AtlasError(f"{root} holds no shards yet: run `{command('visualize')}` or `probe` first")
    clash = RESERVED & set(a.models)
    if clash:
        raise AtlasError(f"model names {sorted(clash)} collide with the website's own files; rebuild with --name")
    if live not in LIVE_CHOICES:
        raise AtlasError(f"--live {live!r}: one of {', '.join(LIVE_CHOICES)}")
    twins = offline_wanted(offline, a, r.data_url)
    recorded = read_listing(site_dir)
    if recorded is None:                 # a new folder is marked as the renderer's before anything is written
        write_listing(site_dir, r.info["name"], {})
    for asset in (templates_dir() / "static").iterdir():
        if asset.is_file():               # the live view's runtime (static/ort/) is published with a live model only
            r.write(f"assets/{asset.name}", asset.read_bytes())
    r.live, r.live_runtime = publish_live(r, live)
    cff = citation_cff(r.info, r.manifest)
    if os.access(root, os.W_OK):
        write_if_changed(root / CITATION, cff)
    r.write(CITATION, cff)

    summaries = {(m, s, layer): summarize_layer(a, m, s, layer)
                 for m in a.models for s in a.sites(m) for layer in a.layers(m, s)}
    _write_packs(r, summaries, skip, twins, workers or min(8, os.cpu_count() or 1), progress,
                 {} if fresh else recorded or {})
    strips = _write_strips(r, summaries, twins)
    _render_layers_and_models(r, summaries, strips)
    render_search(r, summaries)
    _render_top_pages(r, summaries, strips)
    listing = _write_pack_list(r)
    _remove_unproduced(r, recorded)
    write_listing(site_dir, r.info["name"], listing)
    return site_dir / "index.html"


def _write_packs(r: Renderer, summaries: dict, skip: frozenset[str], twins: bool, workers: int, progress: bool,
                 recorded: dict[str, str]) -> None:
    """Thumbnail packs, then unit packs, by a pool of worker processes; a pack whose source digest is
    unchanged and whose bytes still hash to ``recorded`` (the last render's record) is kept."""
    a = r.atlas
    thumbs, units = thumb_pack_jobs(a, summaries), unit_pack_jobs(a, summaries)
    for job in [*thumbs, *units]:
        r.written.add(job.path)
        if twins:
            r.written.add(job.path + SCRIPT_SUFFIX)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    args = (r.root, r.site_dir, skip, r.images_root, twins, recorded)
    total = sum(len(j.rows) for j in thumbs) + sum(len(s.units) for s in summaries.values())
    with tqdm(total=total, unit="unit", desc="render", disable=not progress, dynamic_ncols=True) as bar, \
            ctx.Pool(workers, initializer=_start_worker, initargs=args) as pool:
        missing = []
        for done, lost in pool.imap_unordered(_thumb_pack, thumbs):
            missing += lost
            bar.update(done)
        for count in pool.imap_unordered(_unit_pack, units):
            bar.update(count)
    if missing:
        print(f"warning: {len(missing)} dataset images could not be read for thumbnails (pass --images DIR)")


def _write_pack_list(r: Renderer) -> dict[str, str]:
    """``data/packs.json`` (every pack with its size, sha256 and source digest), then the sha256 of every
    file this render produced: the website's record (atlas.website.listing)."""
    listing = {rel: sha256_file(r.site_dir / rel) for rel in r.written}
    packs = {}
    for rel in sorted(p for p in r.written if p.endswith(".pack")):
        with open(r.site_dir / rel, "rb") as f:
            header = read_header(f.read(1 << 20))
            packs[rel] = {"bytes": f.seek(0, 2), "sha256": listing[rel], "source": header.get("source")}
    r.write(PACK_LIST, json.dumps(packs, indent=0, sort_keys=True) + "\n")
    listing[PACK_LIST] = sha256_file(r.site_dir / PACK_LIST)
    return listing


def _write_strips(r: Renderer, summaries: dict, twins: bool) -> dict[str, str]:
    """Each model's strips pack (tiles copied out of the unit packs just written); returns model -> its path."""
    out = {}
    for m, layers in strip_layers(summaries).items():
        rel, data = strips_pack(lambda path: (r.site_dir / path).read_bytes(), m, layers)
        r.write(rel, data)
        if twins:
            r.write(rel + SCRIPT_SUFFIX, script_twin(rel, data))
        out[m] = rel
    return out


def concept_filters(summ: LayerSummary) -> list[tuple[str, list[tuple[str, str, int]]]]:
    """The layer page's "best label" filter: per label source, each category its units' best concepts fall in,
    with how many units (of the whole layer) that is."""
    counts = Counter((x.source, x.category) for i in range(len(summ.units)) for x in summ.best_labels(i))
    return [(SOURCE_TITLES[source], [(f"{source}:{cat}", cat, n) for (s, cat), n in sorted(counts.items()) if s == source])
            for source in SOURCES if any(s == source for s, _ in counts)]


MAP_RELATED = 4       # same-layer related units a map draws as links from the unit under the pointer
# the label source a map colours by, the first the layer has: image-level labels describe most units, while
# netdissect's best concept is often below its detector bar
MAP_SOURCES = ("invert", "clip-dissect", "netdissect")


def best_labels(summ: LayerSummary):
    """The label source a layer's views name units by (the first of ``MAP_SOURCES`` the layer has, or None) and a
    function giving unit row i's best label of it (or None)."""
    sources = [s for s in MAP_SOURCES if any(x.source == s for i in range(len(summ.units)) for x in summ.best_labels(i))]
    source = sources[0] if sources else None
    return source, lambda i: next((b for b in summ.best_labels(i) if b.source == source), None)


def map_points(a: Atlas, summ: LayerSummary) -> dict | None:
    """What a layer's map page draws, or None when the atlas has no map of the layer: per unit on the map
    [unit, x, y, flag bits, category index (-1 none), activation, concept index (-1 none), related units], and
    the names the indices stand for. Categories and concepts are of the best label of the first of
    ``MAP_SOURCES`` the layer has; flag bits follow atlas.flags.FLAG_NAMES."""
    found = a.layer_map(summ.model, summ.site, summ.layer)
    if found is None:
        return None
    at = {int(u): i for i, u in enumerate(summ.units)}
    source, best_of = best_labels(summ)
    categories, concepts, points = [], [], []
    for unit, (x, y) in zip(found.units.tolist(), found.xy.tolist()):
        i = at.get(unit)
        if i is None or not (x == x and y == y):
            continue
        best = best_of(i)
        cat = concept = -1
        if best is not None:
            categories += [best.category] if best.category not in categories else []
            concepts += [best.concept] if best.concept not in concepts else []
            cat, concept = categories.index(best.category), concepts.index(best.concept)
        bits = sum(1 << k for k, name in enumerate(FLAG_NAMES) if name in summ.flags[i])
        related = [int(parse_unit_id(x.id)[3]) for x in a.related_units(summ.model, summ.site, summ.layer, unit)
                   if x.scope == "same layer"][:MAP_RELATED]
        act = float(summ.activation[i])
        points.append([unit, round(x, 4), round(y, 4), bits, cat, round(act, 4) if act == act else None, concept, related])
    return {"points": points, "flags": list(FLAG_NAMES), "categories": categories, "concepts": concepts,
            "source": source,
            "trustworthiness": found.trustworthiness if found.trustworthiness == found.trustworthiness else None,
            "params": {k: found.params.get(k) for k in ("method", "n_neighbors", "min_dist", "seed", "input")}}


def _render_layers_and_models(r: Renderer, summaries: dict[tuple, LayerSummary], strips: dict[str, str]) -> None:
    by_model: dict[str, list] = {}
    for (m, s, layer), summ in summaries.items():
        info = r.manifest.get("models", {}).get(m, {}).get("sites", {}).get(s, {}).get(f"{layer:02d}", {})
        pages = summ.pages()
        points = map_points(r.atlas, summ)
        if points is not None:
            data = map_data_path(m, s, layer)
            r.write(data, f"window.AtlasMaps.add({json.dumps(data)}, {json.dumps(points, allow_nan=False)});\n")
            r.page("map.html", map_path(m, s, layer), model=m, site=s, layer=layer, info=info, map=points,
                   map_data=data, layer_href=page_path(m, s, layer, pages[0]),
                   source_title=SOURCE_TITLES.get(points["source"], ""))
        links = []
        for p in pages:
            shown = summ.units[summ.on_page(p)]
            links.append((p, page_path(m, s, layer, p), f"{int(shown[0])}–{int(shown[-1])}"))
        for k, p in enumerate(pages):
            tiles = [tile(summ, int(i)) for i in summ.on_page(p)]
            r.page("layer.html", page_path(m, s, layer, p), model=m, site=s, layer=layer, info=info,
                   picture_parts=[(part, PICTURE_LABELS.get(part, part)) for part in summ.pictures],
                   flag_filters=[(name, FLAG_LABELS[name]) for name in FLAG_NAMES
                                 if any(name in f for f in summ.flags)],
                   concept_filters=concept_filters(summ), map_href=map_path(m, s, layer) if points else None,
                   tiles=tiles, page=p, page_index=k, page_links=links,
                   pack=unit_pack_path(m, s, layer, (p - 1) * PAGE_UNITS))
        order = strongest_units(summ, STRIP_UNITS)
        by_model.setdefault(m, []).append({"site": s, "layer": layer, "info": info, "units": len(summ.units),
                                           "href": page_path(m, s, layer, pages[0]),
                                           "strip": [tile(summ, i) for i in order],
                                           "dead": int(summ.dead.sum()), "beats": summ.beats_dataset()})
    for m, layers in by_model.items():
        info = r.manifest.get("models", {}).get(m, {})
        beats = [sum(x["beats"][i] for x in layers) for i in (0, 1)]
        r.page("model.html", f"{m}/index.html", model=m, model_info=info, beats=beats, strips=strips[m],
               layers=sorted(layers, key=lambda x: (x["site"] != "ffn", x["site"], x["layer"])))


def _read_analyses(root: Path) -> dict[str, dict]:
    """The atlas's analysis results by name; a file that is not an analysis is skipped with a warning
    (`build.py verify` names it; rerunning the analysis replaces it)."""
    found = {}
    for path in analysis_files(root):
        try:
            found[path.stem] = parse_analysis(path)
        except ValueError as e:
            print(f"warning: skipping {ANALYSES}/{path.name}: not an analysis result ({str(e)[:120]}); "
                  f"rerun `{command(f'analyze {path.stem} ...')}` to replace it")
    return found


def _render_top_pages(r: Renderer, summaries: dict[tuple, LayerSummary], strips: dict[str, str]) -> None:
    m = r.manifest
    shards = m.get("shards", [])
    files = m.get("files", [])
    dataset = None
    if r.dataset:
        d = r.dataset
        dataset = {"images": len(d), "classes": len(d.class_names), "layout": d.attrs.get("layout"),
                   "root": str(d.root), "skipped": len(d.skipped), "labelled": int((d.labels >= 0).sum())}
    analyses = _read_analyses(r.root)
    models, featured = [], []
    for name in r.atlas.models:
        info = m.get("models", {}).get(name, {})
        sites = {s: len(layers) for s, layers in info.get("sites", {}).items()}
        units = sum(v.get("units") or 0 for layers in info.get("sites", {}).values() for v in layers.values())
        first = r.atlas.sites(name)[0]
        recipe = r.atlas.shard_attrs(name, r.atlas.layers(name, first)[0], first).get("recipe")
        models.append({"name": name, "arch": info.get("arch"), "weights": info.get("weights"), "sites": sites,
                       "units": units, "image_size": info.get("image_size"), "recipe": recipe,
                       "layers": max(sites.values()) if sites else 0})
        if len(featured) < FEATURED_MODELS:
            tiles = [tile(summ, strongest_units(summ, 1)[0], label=f"{mm} L{layer:02d}")
                     for (mm, s, layer), summ in sorted(summaries.items())
                     if mm == name and s == "ffn" and strongest_units(summ, 1)]
            if tiles:
                featured.append({"model": name, "strips": strips[name], "tiles": tiles})
    total_bytes = sum(s["bytes"] for s in shards) + sum(f["bytes"] for f in files)
    example = example_unit(summaries, r)
    r.page("index.html", "index.html", model_rows=models, dataset=dataset, analyses=sorted(analyses),
           featured=featured, history=m.get("history", []), total_bytes=total_bytes, shard_count=len(shards))
    r.page(UNIT_VIEW, UNIT_VIEW, bibkey=r.key, base_url=r.base_url, open_path=r.open_path())
    moved = (templates_dir() / "moved.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(moved.encode()).digest()).decode()
    r.page("404.html", "404.html", moved=moved,         # inline, allowed by its hash: a 404 page is served at any
           csp=r.csp.replace("script-src 'self'", f"script-src 'self' 'sha256-{digest}'"))    # depth, no path holds
    r.page("downloads.html", "downloads.html", shards=shards, files=files, dataset=dataset,
           remote_url=r.atlas_url() or "https://example.org/path/to/atlas/", open_path=r.open_path(),
           example=example, total_bytes=total_bytes)
    r.page("cite.html", "cite.html", cff=citation_cff(r.info, m), atlas_bibtex=atlas_bibtex(r.info, m, r.key),
           paper_bibtex=PAPER_BIBTEX, example=example)
    if r.live:
        _render_live_page(r, summaries)
    for name, data in analyses.items():
        figures = [{"title": fig["title"],
                    "rows": [{"label": row["label"], "tiles": [{"label": label, "uid": uid, "href": _address(uid)}
                                                               for label, uid in row["units"]]}
                             for row in fig["rows"]]} for fig in data.get("figures", [])]
        r.page("analysis.html", f"analyses/{name}.html", name=name, analysis=data, charts=analysis_charts(data),
               figures=figures)


def _render_live_page(r: Renderer, summaries: dict[tuple, LayerSummary]) -> None:
    """live.html: the live view of every published live model (its runtime's script loaded with its SRI hash;
    WebAssembly compiled, which its Content-Security-Policy alone allows), and per model the words it shows
    under each unit: ``live/<model>/labels.json``, each output's best label per unit (as the layer's map names
    them), in the order of the output's units."""
    for p in r.live:
        names = {}
        for (m, site, layer), summ in summaries.items():
            if m == p["model"]:
                source, best_of = best_labels(summ)
                names[f"{site}/L{layer:02d}"] = {"source": source, "units": {
                    int(u): best.concept for i, u in enumerate(summ.units) if (best := best_of(i)) is not None}}
        r.write(f"{live_folder(p['model'])}/labels.json", json.dumps(names, separators=(",", ":")))
    models = [{**p, "size": human_bytes(p["bytes"])} for p in r.live]
    page = r.live_runtime
    r.page(LIVE_PAGE, LIVE_PAGE, live_models=models, runtime=page, samples=publish_samples(r),
           models_json=json.dumps([{"model": p["model"], "record": p["record"]} for p in r.live]),
           runtime_json=json.dumps(page), csp=content_security_policy(r.data_url, wasm=True))


def _address(uid: str) -> str:
    return f"{UNIT_VIEW}#{uid}"


def _remove_unproduced(r: Renderer, recorded: dict[str, str] | None) -> None:
    """Remove the files the last render recorded and this one did not produce (packs of a removed layer,
    pages of a removed model), then the folders that left empty. Nothing else is touched: a file nobody
    recorded (a user's notes, a website rendered before the record existed) stays."""
    if recorded is None:
        stray = [p for p in r.site_dir.rglob("*") if p.is_file() and p.relative_to(r.site_dir).as_posix()
                 not in r.written and p.name != MARKER]
        if stray:
            print(f"note: {r.site_dir} was rendered by a version that did not record its files: {len(stray)} files "
                  "this render did not produce stay (delete the folder and render again to drop them)")
        return
    remove_recorded(r.site_dir, set(recorded) - r.written)
