"""How often the demo's labels name what the generator drew (issue 31), with the atlas API alone.

    python benchmarks/label_truth.py [ATLAS]        # default ./atlas-demo

For every FFN unit the probe flags class-selective (its top images mostly of one class, i.e. one shape):
whether the shape is among the unit's top 3 labels from netdissect (pixel masks), from invert (image-level
attributes), from either of the two (the issue's criterion: >= 90%), and from clip-dissect (the demo's
image-text model, its own words: the open vocabulary's agreement with the generator's truth). Prints one
JSON record.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

import atlas

TOP = 3


def main(root: str = "atlas-demo") -> dict:
    a = atlas.open(root)
    hits, counts = defaultdict(int), defaultdict(int)
    per_layer = defaultdict(lambda: defaultdict(list))
    for model in a.models:
        if "ffn" not in a.sites(model) or not a.label_sources(model, "ffn"):
            continue
        for layer, index in ((layer, i) for layer in a.layers(model, "ffn") for i in a.units(model, layer, "ffn")):
            u = a.unit(model, layer, index)
            if not u.flags.class_selective:
                continue
            shape = u.flags.top_class
            counts["units"] += 1
            found = defaultdict(list)
            for label in u.labels:
                if 0 <= label.rank < TOP:
                    found[label.source].append(label.concept)
            for source in ("netdissect", "invert", "clip-dissect"):
                ok = shape in found[source]
                hits[source] += ok
                per_layer[f"{model} L{layer}"][source].append(ok)
            hits["netdissect and invert"] += shape in found["netdissect"] and shape in found["invert"]
            hits["netdissect or invert"] += shape in found["netdissect"] or shape in found["invert"]
    n = max(counts["units"], 1)
    record = {"atlas": str(root), "class_selective_units": counts["units"],
              "shape_in_top3": {k: round(v / n, 4) for k, v in hits.items()},
              "per_layer": {layer: {s: f"{sum(v)}/{len(v)}" for s, v in d.items()} for layer, d in sorted(per_layer.items())}}
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main(*sys.argv[1:])
