"""Sites compared (paper Figure 3 and appendix A, Figure 11): the same recipe on q, k, v, attn and the
residual stream next to the FFN units, for a few units of a few layers, written into the atlas as
ordinary shards of those sites. The paper finds only the FFN's wide hidden layer gives interpretable
images; the 768-wide sites look adversarial.
"""
from __future__ import annotations

import atlas
from atlas.format import SITES, AtlasError, unit_id

from ..recipe import Recipe, resolve_recipe
from ..plan import parse_selection
from ..schedule import VisualizeJob, visualize_selection
from ..sites import available_sites, find_layers
from .common import AnalysisJob

NAME = "sites"


def default_layers(layers: list[int]) -> list[int]:
    """First, middle and last layer."""
    return sorted({layers[0], layers[len(layers) // 2], layers[-1]})


def atlas_recipe(out, name: str, layer: int) -> Recipe | None:
    """The recipe the atlas already used for ``name``'s FFN units, if any."""
    try:
        attrs = atlas.open(out).shard_attrs(name, layer, "ffn")
    except AtlasError:
        return None
    recipe = attrs.get("recipe")
    return resolve_recipe(recipe.pop("preset"), **recipe) if recipe else None


def applies(lm, job: AnalysisJob) -> str | None:
    """None when the model has FFN units to compare the other sites with, else why not."""
    try:
        find_layers(lm.model, "ffn", lm.input_size)
    except AtlasError as e:
        return str(e)
    return None


def run(lm, job: AnalysisJob, device) -> dict:
    """Visualize the chosen units at every available site; returns what was visualized."""
    by_site = {site: {x.index: x for x in find_layers(lm.model, site, lm.input_size)}
               for site in available_sites(lm.model, lm.input_size)}
    ffn = sorted(by_site["ffn"])
    layers = parse_selection(job.layers, ffn, "layers") if job.layers else default_layers(ffn)
    width = min(x.units for found in by_site.values() for i, x in found.items() if i in layers)
    units = parse_selection(job.units or "0-3", list(range(width)), "units")
    recipe = atlas_recipe(job.out, job.name, layers[0]) or resolve_recipe("quick")
    done = {}
    for site, found in by_site.items():
        present = [layer for layer in layers if layer in found]
        if present:
            visualize_selection(lm, VisualizeJob(out=job.out, name=job.name, recipe=recipe, site=site,
                                                 layers=",".join(map(str, present)),
                                                 units=",".join(map(str, units)), seed=job.seed, device=str(device)))
            done[site] = present
    return {"layers": layers, "units": units, "sites": done, "recipe": recipe.to_dict()}


def describe(results: dict) -> dict:
    """Title, text and figures (unit ids per layer and site) for every model's results."""
    figures = []
    for model, r in results.items():
        for layer in r["layers"]:
            rows = [{"label": site, "units": [[f"U{u:04d}", unit_id(model, site, layer, u)] for u in r["units"]]}
                    for site in SITES if layer in r["sites"].get(site, [])]
            figures.append({"title": f"{model}, layer {layer}", "rows": rows})
    return {
        "title": "Sites compared",
        "summary": "The same optimization applied to keys, queries, values, the attention output and the residual "
                   "stream, next to the feed-forward hidden units. The paper finds the FFN's wide hidden layer "
                   "interpretable and the others adversarial-looking (Figures 3 and 11).",
        "method": "For the listed layers and units, each available site is visualized with the recipe the atlas "
                  "used for the FFN units (or the quick preset), and stored as ordinary shards of that site.",
        "tables": [{"caption": "What was visualized", "columns": ["model", "layers", "units", "sites"],
                    "rows": [[m, ", ".join(map(str, r["layers"])), ", ".join(map(str, r["units"])),
                              ", ".join(r["sites"])] for m, r in results.items()]}],
        "charts": [],
        "figures": figures,
    }
