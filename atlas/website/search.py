"""The website's static search index: script files a browser loads from disk or any host."""
from __future__ import annotations

import json
import zlib

import numpy as np

from ..flags import FLAG_NAMES
from ..format import unit_id, unit_runs
from .context import Renderer
from .urls import TILE_SIZE, write_if_changed

CLASS_SHARD_ENTRIES = 4000  # search entries per class-index file



def render_search(r: Renderer, summaries: dict) -> None:
    """The static search index (classes, units with images) and the search page."""
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
        write_if_changed(r.site_dir / f"search/classes-{k}.js", f"AtlasSearch.classes({k}, " + json.dumps(part) + ");\n")
    meta = {"models": {}, "classes": [[name, shard_of[name], len(entries[name])] for name in names],
            "tiles": {}}
    for (m, s, layer), summ in summaries.items():
        with_viz = summ.units[np.isfinite(summ.activation)].tolist()
        meta["models"].setdefault(m, {}).setdefault(s, {})[f"{layer:02d}"] = {
            "units": [int(summ.units[0]), int(summ.units[-1]) + 1],
            "viz": [list(r) for r in unit_runs(with_viz)]}
        size = r.manifest.get("models", {}).get(m, {}).get("image_size") or [0]
        meta["tiles"][m] = max(size) > TILE_SIZE
    write_if_changed(r.site_dir / "search/meta.js", "AtlasSearch.meta(" + json.dumps(meta) + ");\n")
    flags: dict = {}
    for (m, s, layer), summ in summaries.items():
        runs = {name: [list(run) for run in unit_runs([int(u) for u, f in zip(summ.units, summ.flags) if name in f])]
                for name in FLAG_NAMES}
        flags.setdefault(m, {}).setdefault(s, {})[f"{layer:02d}"] = {k: v for k, v in runs.items() if v}
    write_if_changed(r.site_dir / "search/flags.js", "AtlasSearch.flags(" + json.dumps(flags) + ");\n")
    r.page("search.html", "search.html")
