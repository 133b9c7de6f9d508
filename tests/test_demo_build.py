"""`python build.py`, end to end: the demo atlas with every stage, every analysis, and its site."""
from __future__ import annotations

import html
import json
import re
from collections import Counter

import numpy as np
import pytest

import atlas
import build
from atlas.verify import verify
from builder.demo.models import CNN, VIT


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "atlas-demo"
    assert build.main(["demo", "--out", str(out)]) == 0
    return out


def test_the_demo_builds_a_complete_verified_atlas_and_site(demo):
    assert verify(demo) == []
    manifest = json.loads((demo / "manifest.json").read_text())
    layers = manifest["models"][VIT]["sites"]["ffn"]
    assert len(layers) == 6 and all(v["units"] == 256 and set(v["parts"]) == {"viz", "probe"} for v in layers.values())
    assert manifest["atlas"]["name"] == "vit-atlas-demo"
    site = demo / "site"
    assert (site / "index.html").exists() and (site / f"{VIT}/ffn/L05/U0255.html").exists()
    for name in ("token-mixing", "foreground-background", "frequency", "spatial", "sites"):
        assert (site / f"analyses/{name}.html").exists(), name
        assert name in (site / "index.html").read_text()


def test_the_downloads_snippet_loads_the_unit_it_names(demo):
    page = (demo / "site/downloads.html").read_text()
    line = re.search(r"^u = (a\.unit\(.*?\))\s+# (\S+)$", html.unescape(page), re.M)
    with atlas.open(demo) as a:
        assert eval(line.group(1), {"a": a}).id == line.group(2)


def test_optimized_images_beat_the_best_dataset_image_for_most_live_units(demo):
    beat = live = 0
    with atlas.open(demo) as a:
        for layer in a.layers(VIT):
            for u in a.units(VIT, layer):
                unit = a.unit(VIT, layer, u)
                if unit.stats.dead:
                    continue
                live += 1
                beat += unit.activation > unit.stats.max
    assert live > 1000 and beat / live >= 0.8


def test_late_units_prefer_a_class_and_the_analyses_compare_vit_and_cnn(demo):
    with atlas.open(demo) as a:
        labels = a.dataset.labels
        shares = [Counter(labels[t.index] for t in a.unit(VIT, 5, u).topk).most_common(1)[0][1] / 16
                  for u in a.units(VIT, 5)]
    assert np.mean(shares) >= 0.5        # chance is 1/8
    fg = json.loads((demo / "analyses/foreground-background.json").read_text())["results"]
    assert set(fg) == {VIT, CNN} and all(r["images"] == 1000 and r["accuracy"]["full"]["top1"] >= 0.9 for r in fg.values())
    mixing = json.loads((demo / "analyses/token-mixing.json").read_text())["results"][VIT]
    assert mixing["accuracy"] >= 0.9 and 0 <= mixing["patch_average"] <= 1
