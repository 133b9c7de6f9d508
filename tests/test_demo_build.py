"""`python build.py`, end to end: the demo atlas with every stage, every analysis, and its website."""
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
from tests.helpers import load_every_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "atlas-demo"
    assert build.main(["demo", "--out", str(out)]) == 0
    return out


def test_the_demo_builds_a_complete_verified_atlas_and_site(demo):
    assert verify(demo) == []
    manifest = json.loads((demo / "manifest.json").read_text())
    layers = manifest["models"][VIT]["sites"]["ffn"]
    assert len(layers) == 6 and all(v["units"] == 256 and set(v["parts"]) == {"viz", "fourier", "probe"}
                                    for v in layers.values())
    assert {f["path"] for f in manifest["files"]} >= {"dataset.h5", "related.h5", f"scores/{VIT}-ffn.h5"}
    assert manifest["atlas"]["name"] == "vit-atlas-demo"
    website = demo / "site"
    from atlas.website.packs import read_unit
    assert (website / "index.html").exists() and read_unit(website, VIT, "ffn", 5, 255)[1]["id"] == f"{VIT}/ffn/L05/U0255"
    for name in ("token-mixing", "foreground-background", "frequency", "spatial", "sites"):
        assert (website / f"analyses/{name}.html").exists(), name
        assert name in (website / "index.html").read_text()


def test_the_downloads_snippet_runs_as_written(demo, monkeypatch):
    """The whole "Load it" snippet, run from the folder the atlas was downloaded into: it opens the
    atlas by its folder (not its display name) and loads the unit it names."""
    page = html.unescape((demo / "site/downloads.html").read_text())
    block = re.search(r"<h2>Load it</h2>\s*<pre><code>(.*?)</code></pre>", page, re.S).group(1)
    code = [line for line in block.split("import h5py")[0].splitlines() if not line.startswith("pip ")]
    named = re.search(r"^u = .*# (\S+)$", "\n".join(code), re.M).group(1)
    monkeypatch.chdir(demo.parent)
    scope = {}
    exec("\n".join(code), scope)
    assert scope["u"].id == named and scope["u"].image is not None
    scope["a"].close()


def test_every_config_of_the_demos_export_loads_with_datasets(demo, tmp_path):
    assert build.main(["export", str(demo), "--out", str(tmp_path / "export")]) == 0
    load_every_config(demo, tmp_path / "export")


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


def test_the_last_layer_is_mostly_global_and_earlier_layers_mostly_local(demo):
    """Spatial extent from the stored top-k maps: a measure that were noise would not change with depth."""
    share = {}
    with atlas.open(demo) as a:
        for layer in a.layers(VIT):
            flags = [a.unit(VIT, layer, u).flags for u in a.units(VIT, layer)]
            live = [f for f in flags if not f.dead]
            share[layer] = (np.mean([f.local for f in live]), np.mean([f.global_ for f in live]))
    assert share[5][1] > 0.5 and all(share[layer][0] > 0.5 for layer in range(5)), share
    assert share[0][0] - share[5][0] > 0.2


def test_related_units_sketch_recall_against_exact_on_the_demo(demo, tmp_path):
    """The demo's related units are exact; the sketch the probe uses at scale (d = 1024) must find at
    least 80% of them in every scope."""
    import shutil
    import h5py
    from builder.related import rebuild_related
    with h5py.File(demo / "related.h5") as f:
        assert f.attrs["method"] == "exact"
        exact = f["related/row"][()]
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("site", "images", "shards"))
    rebuild_related(copy, force_sketch=1024)
    with h5py.File(copy / "related.h5") as f:
        sketch = f["related/row"][()]
    for scope in (0, 1):
        recall = np.mean([len(set(exact[i, scope]) & set(sketch[i, scope])) / 8 for i in range(len(exact))])
        assert recall >= 0.8, (scope, recall)


def test_every_demo_unit_has_both_pictures(demo):
    with atlas.open(demo) as a:
        u = a.unit(VIT, 5, 17)
        assert u.pictures == ["viz", "fourier"] and u.picture("fourier").recipe["parametrization"] == "fourier"
        assert len(u.related) == 16 and {r.scope for r in u.related} == {"same layer", "same model"}


def test_one_unit_of_the_served_demo_is_read_remotely_with_little_transfer(demo, tmp_path, monkeypatch):
    import threading
    from atlas.serve import make_server
    monkeypatch.setenv("VIT_ATLAS_CACHE", str(tmp_path / "cache"))
    server = make_server(demo, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = atlas.open(f"http://127.0.0.1:{server.server_address[1]}/")
        unit = remote.unit(VIT, 3, 42)
        with atlas.open(demo) as local:
            assert np.array_equal(unit.image, local.unit(VIT, 3, 42).image)
            assert unit.activation == local.unit(VIT, 3, 42).activation
        shard_bytes = sum(s["bytes"] for s in json.loads((demo / "manifest.json").read_text())["shards"])
        assert remote.remote.fetched < 0.05 * shard_bytes
        # a served shard changed after the manifest was written is refused (restored afterwards)
        shard = demo / "shards" / VIT / "ffn" / "L02" / "U00000-00256.h5"
        original = shard.read_bytes()
        try:
            shard.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
            monkeypatch.setenv("VIT_ATLAS_CACHE", str(tmp_path / "cache2"))
            with pytest.raises(atlas.AtlasError, match="tampered"):
                atlas.open(f"http://127.0.0.1:{server.server_address[1]}/").unit(VIT, 2, 7).image
        finally:
            shard.write_bytes(original)
    finally:
        server.shutdown()
        server.server_close()
