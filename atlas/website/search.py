"""The website's static search index: script files a browser loads from disk or any host, none of which
grows with all units at once (docs/FORMAT.md "Website").

    search/catalog.js      every model, site and layer with its unit ranges (grows with layers): ids
    search/terms.js        every term (a class name, a flag, a concept) with its number of units (grows with
                           classes and concepts)
    search/p/<t>-<k>.js    the units of term t, strongest first, POSTING_CHUNK per file: a query loads chunk 0

A class's units are those its flag says are mostly of that class (``class_selective``, with the
threshold the shard stores), by their share; a flag's units by their strength; a concept's units those
with it among their LABEL_RANKS best labels of a source, best ranks first, then by source (their scores
are not comparable), then by score. A concept's
entries also carry the source (its index in atlas.labels.SOURCES) and the rank.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from ..format import unit_runs
from ..labels import SOURCES
from .context import Renderer
from .urls import write_if_changed

POSTING_CHUNK = 1000        # units per postings file
LABEL_RANKS = 3             # a unit is found by each of its 3 best concepts of every label source


def term_id(kind: str, name: str) -> str:
    """A short, file-safe name for a search term."""
    return hashlib.sha256(f"{kind}:{name}".encode()).hexdigest()[:12]


def render_search(r: Renderer, summaries: dict) -> None:
    """The catalog, the terms and their postings, and the search page."""
    models = sorted({m for m, _, _ in summaries})
    sites = sorted({s for _, s, _ in summaries})
    catalog = {"names": models, "sites": sites, "models": {}}
    postings: dict[tuple[str, str], list] = {}
    for (m, s, layer), summ in sorted(summaries.items()):
        catalog["models"].setdefault(m, {}).setdefault(s, {})[f"{layer:02d}"] = \
            [list(run) for run in unit_runs([int(u) for u in summ.units])]
        key = (models.index(m), sites.index(s), layer)
        strength = np.where(np.isfinite(summ.activation), summ.activation, summ.data_max)
        for i, u in enumerate(summ.units.tolist()):
            entry = [*key, int(u)]
            top = summ.top_class[i]
            if top and "class_selective" in summ.flags[i]:
                postings.setdefault(("class", top[0]), []).append(entry + [round(float(top[1]), 4)])
            for flag in summ.flags[i]:
                value = float(strength[i]) if np.isfinite(strength[i]) else 0.0
                postings.setdefault(("flag", flag), []).append(entry + [value])
            for x in summ.labels[i] if summ.labels else []:
                if 0 <= x.rank < LABEL_RANKS:
                    postings.setdefault(("concept", x.concept.lower()), []).append(
                        entry + [round(x.score, 4), list(SOURCES).index(x.source), x.rank])
    terms = []
    for (kind, name), entries in sorted(postings.items()):
        entries.sort(key=lambda e: (e[6], e[5], -e[4], e[:4]) if kind == "concept" else (-e[4], e[:4]))
        tid = term_id(kind, name)
        terms.append([kind, name, len(entries), tid])
        for k in range(0, len(entries), POSTING_CHUNK):
            name_k = f"{tid}-{k // POSTING_CHUNK}"
            _script(r, f"search/p/{name_k}.js", f"AtlasSearch.postings({json.dumps(name_k)}, "
                                                f"{json.dumps(entries[k:k + POSTING_CHUNK])});\n")
    _script(r, "search/catalog.js", "AtlasSearch.catalog(" + json.dumps(catalog) + ");\n")
    _script(r, "search/terms.js", "AtlasSearch.terms(" + json.dumps(terms) + ");\n")
    r.page("search.html", "search.html")


def _script(r: Renderer, rel: str, text: str) -> None:
    r.written.add(rel)
    write_if_changed(r.site_dir / rel, text)
