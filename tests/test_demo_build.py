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
    for name in ("token-mixing", "foreground-background", "frequency", "spatial", "sites", "concepts-by-depth"):
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


def test_optimized_images_beat_the_best_dataset_image_for_most_firing_units(demo):
    beat = fourier = firing = 0
    with atlas.open(demo) as a:
        for layer in a.layers(VIT):
            for u in a.units(VIT, layer):
                unit = a.unit(VIT, layer, u)
                if unit.stats.dead:
                    continue
                firing += 1
                beat += unit.activation > unit.stats.max
                fourier += unit.picture("fourier").activation > unit.stats.max
    assert firing > 1000 and beat / firing >= 0.95 and fourier / firing >= 0.95, (beat / firing, fourier / firing)


def test_late_units_prefer_a_class_and_the_analyses_compare_vit_and_cnn(demo):
    with atlas.open(demo) as a:
        labels = a.dataset.labels
        shares = [Counter(labels[t.index] for t in a.unit(VIT, 5, u).topk).most_common(1)[0][1] / 16
                  for u in a.units(VIT, 5)]
    assert np.mean(shares) >= 0.5        # chance is 1/8
    fg = json.loads((demo / "analyses/foreground-background.json").read_text())["results"]
    from builder.spec import load_spec
    limit = load_spec(demo / "spec.toml").limit                                     # the demo spec's, 500
    assert set(fg) == {VIT, CNN} and all(r["images"] == limit and r["accuracy"]["full"]["top1"] >= 0.9 for r in fg.values())
    mixing = json.loads((demo / "analyses/token-mixing.json").read_text())["results"][VIT]
    assert mixing["accuracy"] >= 0.9 and 0 <= mixing["patch_average"] <= 1


def test_the_last_layer_is_mostly_global_and_earlier_layers_mostly_local(demo):
    """Spatial extent from the stored top-k maps: a measure that were noise would not change with depth."""
    share = {}
    with atlas.open(demo) as a:
        for layer in a.layers(VIT):
            flags = [a.unit(VIT, layer, u).flags for u in a.units(VIT, layer)]
            firing = [f for f in flags if not f.dead]
            share[layer] = (np.mean([f.local for f in firing]), np.mean([f.global_ for f in firing]))
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


def test_the_demo_timer_splits_the_build_by_every_site_and_picture_the_atlas_holds(demo):
    """benchmarks/demo_time.py's split comes from the run logs; the sites and pictures it names are
    the ones the atlas API lists, and each has taken time."""
    from benchmarks.demo_time import stage_seconds
    stages = stage_seconds(demo)
    with atlas.open(demo) as a:
        expected = {f"visualize {site} {part}" for site in a.sites(VIT)
                    for part in a.unit(VIT, a.layers(VIT, site)[0], 0, site).pictures}
    assert {k for k in stages if k.startswith("visualize")} == expected
    assert {"visualize ffn fourier", "visualize sae-l3-topk viz"} <= expected
    assert all(v > 0 for v in stages.values()) and stages["probe"] > 0


def test_the_isa_caps_of_the_demo_timer_take_effect_in_a_child_process():
    import os
    from benchmarks.demo_time import ISA_CAPS, capability
    assert capability({**os.environ, **ISA_CAPS["default"]}) == "DEFAULT"


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
            latent = remote.unit(VIT, 3, 42, site="sae-l3-topk")           # an SAE latent, read the same way
            assert latent.activation == local.unit(VIT, 3, 42, site="sae-l3-topk").activation
            assert [t.index for t in latent.topk] == [t.index for t in local.unit(VIT, 3, 42, site="sae-l3-topk").topk]
        shard_bytes = sum(s["bytes"] for s in json.loads((demo / "manifest.json").read_text())["shards"])
        assert remote.remote.fetched < 0.05 * shard_bytes
        with atlas.open(demo) as local:                                  # labels: one checked file, fetched whole
            assert unit.labels == local.unit(VIT, 3, 42).labels and {x.source for x in unit.labels} == \
                {"netdissect", "invert", "clip-dissect"}
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


SAE = "sae-l3-topk"


def test_the_demos_sae_site_holds_its_latents_and_they_beat_the_data(demo):
    """The committed SAE's 256 latents on block 3: reader, probe and both pictures; at least 90% of the
    firing latents' pictures beat their best dataset image; its explained variance and L0 re-derived on
    the demo's own images (not those it was trained on) with a plain numpy encoder."""
    from safetensors.numpy import load_file
    from builder.demo.models import WEIGHTS
    manifest = json.loads((demo / "manifest.json").read_text())
    assert set(manifest["models"][VIT]["sites"][SAE]["03"]["parts"]) == {"viz", "fourier", "probe"}
    beat = {"viz": 0, "fourier": 0}
    firing = 0
    with atlas.open(demo) as a:
        assert list(a.units(VIT, 3, site=SAE)) == list(range(256))
        assert a.shard_attrs(VIT, 3, site=SAE)["sae"]["activation"] == "topk"
        for u in a.units(VIT, 3, site=SAE):
            unit = a.unit(VIT, 3, u, site=SAE)
            if unit.stats.dead:
                continue
            firing += 1
            for part in beat:
                beat[part] += unit.picture(part).activation > unit.stats.max
        assert firing >= 200 and all(b / firing >= 0.9 for b in beat.values()), (firing, beat)
        # explained variance and L0 of the committed SAE on block 3's patch tokens of the probe's images
        import timm.data
        import torch
        from atlas.images import load_rgb
        from builder.models import ModelSource, load_model
        from builder.demo.models import weights_file
        lm = load_model(ModelSource(VIT, checkpoint=str(weights_file(VIT))))
        transform = timm.data.create_transform(**lm.data_config, is_training=False)
        x = torch.stack([transform(load_rgb(a.dataset.root / p)) for p in a.dataset.paths[::4]])
    got = {}
    handle = lm.model.blocks[3].register_forward_hook(lambda m, i, o: got.setdefault("t", o.detach()))
    with torch.no_grad():
        lm.model(x)
    handle.remove()
    tokens = got["t"][:, 1:].reshape(-1, 64).double().numpy()
    w = load_file(str(WEIGHTS / "l3-topk" / "sae_weights.safetensors"))
    pre = (tokens - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    f = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=1)[:, :8]
    np.put_along_axis(f, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
    recon = f @ w["W_dec"] + w["b_dec"]
    explained = 1 - ((tokens - recon) ** 2).sum() / ((tokens - tokens.mean(0)) ** 2).sum()
    print(f"demo SAE on the demo's images: explained variance {explained:.3f}, L0 {(f > 0).sum(1).mean():.2f}")
    assert explained > 0.8 and (f > 0).sum(1).mean() <= 8


def test_demo_latents_and_neurons_are_related_and_shown_side_by_side(demo):
    """A latent's related units elsewhere in the model are neurons (co-activating over the probe's
    images), and the website's record lists them in its related strip; and the other way round."""
    from atlas.website.packs import read_unit
    with atlas.open(demo) as a:
        latent = a.unit(VIT, 3, 5, site=SAE)
        neurons = [r for r in latent.related if r.scope == "same model" and "/ffn/" in r.id]
        assert neurons and all(r.corr > 0.3 for r in neurons[:1]), latent.related
        _, meta, _ = read_unit(demo / "site", VIT, SAE, 3, 5)
        assert [r[1] for r in meta["related"]] == [r.id for r in latent.related]
        backwards = [a.unit(VIT, 3, u).related for u in range(0, 256, 16)]
        assert any(f"/{SAE}/" in r.id for related in backwards for r in related)


def test_the_demos_sae_pages_search_and_related_links_work_in_a_browser(demo, tmp_path):
    from tests.helpers import chromium, nginx
    browser = chromium()
    try:
        with nginx(demo, tmp_path / "nginx") as base:
            _walk_an_sae_unit(browser, base + "site/")
    finally:
        browser.quit()


def _walk_an_sae_unit(browser, site: str) -> None:
    """Open a latent's page, follow its related strip to a neuron, find it by search, list its layer."""
    from selenium.webdriver.common.by import By
    from tests.helpers import wait_for
    uid = f"{VIT}/{SAE}/L03/U0005"
    browser.get(site + "unit.html#" + uid)
    assert wait_for(lambda: browser.find_element(By.ID, "unit-view").get_attribute("data-state") == "ready")
    assert browser.find_element(By.ID, "unit-id").text == uid
    link = [a for a in browser.find_elements(By.CSS_SELECTOR, "#related a.related-unit")
            if "/ffn/" in a.get_attribute("data-id")][0]
    target = link.get_attribute("data-id")
    link.click()
    assert wait_for(lambda: browser.find_element(By.ID, "unit-id").text == target)
    browser.get(site + f"search.html?q={SAE}/L03/U0005")
    assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#search-results a"))
    assert browser.find_element(By.CSS_SELECTOR, "#search-results code").text == uid
    browser.get(site + f"{VIT}/{SAE}/L03/index.html")
    assert wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "ul.tiles > li")) == 256)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_demos_labels_show_search_and_filter_in_a_browser_over_every_server(demo, tmp_path):
    """Issue 31 in Chromium, over nginx, Python's http.server and file://: a unit's labels as the reader has
    them, each a link to its search; search by "stripes", "red" and "star"; the layer page's best-label
    filter; the concepts-by-depth page."""
    from tests.helpers import chromium, nginx, plain_http
    browser = chromium()
    try:
        with nginx(demo, tmp_path / "nginx") as base:
            _walk_labels(browser, base + "site/", demo)
        with plain_http(demo) as base:
            _walk_labels(browser, base + "site/", demo)
        _walk_labels(browser, (demo / "site").as_uri() + "/", demo)
    finally:
        browser.quit()


def _walk_labels(browser, site: str, demo) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from atlas.labels import SOURCES
    from tests.helpers import wait_for
    a = atlas.open(demo)
    labels = {(m, s, layer): a.layer_labels(m, s, layer) for m in a.models for s in a.sites(m) for layer in a.layers(m, s)}
    # the unit view: the unit best described as stripes by netdissect shows every label the reader gives it
    (m, s, layer), unit, _ = max(((key, u, x.score) for key, units in labels.items() for u, xs in units.items()
                                  for x in xs if x.source == "netdissect" and x.concept == "stripes"), key=lambda t: t[2])
    uid = f"{m}/{s}/L{layer:02d}/U{unit:04d}"
    browser.get(site + "unit.html#" + uid)
    assert wait_for(lambda: browser.find_element(By.ID, "unit-view").get_attribute("data-state") == "ready")
    section = browser.find_element(By.ID, "labels-section")
    assert section.is_displayed()
    for source in SOURCES:
        shown = [li.get_attribute("data-concept") for li in
                 section.find_elements(By.CSS_SELECTOR, f'.label-source[data-source="{source}"] li')]
        assert shown == [x.concept for x in labels[m, s, layer][unit] if x.source == source], source
    first = section.find_element(By.CSS_SELECTOR, '.label-source[data-source="netdissect"] li a')
    assert first.get_attribute("href").endswith("search.html?q=" + first.text)
    # search by concept: the units with the word among their three best concepts of any source, best ranks first
    # ("ring" is also a class of the demo)
    for word in ("stripes", "red", "star", "ring"):
        described = {f"{m}/{s}/L{layer:02d}/U{u:04d}" for (m, s, layer), units in labels.items() for u, xs in units.items()
                     for x in xs if x.concept == word and 0 <= x.rank < 3}
        browser.get(site + "search.html?q=" + word)
        assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#search-results li"))
        items = browser.find_elements(By.CSS_SELECTOR, "#search-results li")
        ids = [li.find_element(By.TAG_NAME, "code").text for li in items]
        concept_ids = [i for i, li in zip(ids, items) if li.find_element(By.CSS_SELECTOR, ".meta").text.startswith(word + ":")]
        assert ids[:len(concept_ids)] == concept_ids and concept_ids[0] in described, word      # concepts come first
        assert set(concept_ids) <= described and len(concept_ids) == min(len(described), 200), word
        # a unit matching both the concept and the class is one unit: the word named once, a count of units or a bound
        status = browser.find_element(By.ID, "search-status").text
        assert status.count(word) == 1, status
        if "strongest loaded" not in status and len(ids) < 200:
            assert status.startswith(f"{len(set(ids))} units "), status
    # the layer page's filter: exactly the units whose best netdissect concept is a colour
    layer_key = (VIT, "ffn", 5)
    want = sum(any(x.source == "netdissect" and x.rank == 0 and x.category == "color" for x in xs)
               for xs in labels[layer_key].values())
    browser.get(site + f"{VIT}/ffn/L05/index.html")
    assert wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "ul.tiles > li")) == 256)
    Select(browser.find_element(By.ID, "concept-filter")).select_by_value("netdissect:color")
    assert wait_for(lambda: len([li for li in browser.find_elements(By.CSS_SELECTOR, "ul.tiles > li")
                                 if li.is_displayed()]) == want)
    # the analysis page: a table per source with a row per layer
    browser.get(site + "analyses/concepts-by-depth.html")
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table caption")]
    assert any("netdissect" in c for c in captions) and any("clip-dissect" in c for c in captions)
    rows = browser.find_elements(By.CSS_SELECTOR, "table")[0].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 6
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    a.close()


def test_every_demo_layer_has_a_map_whose_neighbours_coactivate(demo):
    """Issue 33's bar: trustworthiness (10 neighbours, against the score correlations) >= 0.85 on every layer."""
    with atlas.open(demo) as a:
        for site in ("ffn", SAE):
            for layer in a.layers(VIT, site):
                found = a.layer_map(VIT, site, layer)
                assert found is not None and found.trustworthiness >= 0.85, (site, layer)
                assert np.isfinite(found.xy).all(1).sum() >= 200


def test_the_demos_map_pans_zooms_hovers_and_opens_a_unit_over_every_server(demo, tmp_path):
    """Issue 33 in Chromium over nginx (requests counted from its log), http.server and file://."""
    from tests.helpers import chromium, nginx, plain_http
    browser = chromium(1280, 1800)          # the whole map in view: pointer offsets are from its middle
    try:
        with nginx(demo, tmp_path / "nginx") as base:
            _walk_map(browser, base + "site/", tmp_path / "nginx" / "access.log")
        with plain_http(demo) as base:
            _walk_map(browser, base + "site/")
        _walk_map(browser, (demo / "site").as_uri() + "/")
    finally:
        browser.quit()


def _walk_map(browser, site: str, log=None) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from tests.helpers import wait_for
    requests = lambda: log.read_text().splitlines() if log else []              # noqa: E731
    before = len(requests())
    browser.get(site + f"{VIT}/ffn/L05/map.html")
    assert wait_for(lambda: browser.find_element(By.ID, "layer-map").get_attribute("data-state") == "ready")
    first = requests()[before:]
    if log:                       # the first screen: the page, its style and script, the map's data; no tile
        assert sum("/maps/" in line for line in first) == 1 and not any(".pack" in line for line in first), first
    canvas = browser.find_element(By.ID, "map-canvas")
    rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
    at = lambda i: browser.execute_script("return window.AtlasMap.screen(window.AtlasMap.points[arguments[0]])", i)  # noqa: E731
    move = lambda q: ActionChains(browser).move_to_element_with_offset(  # noqa: E731
        canvas, int(q[0] - rect["width"] / 2), int(q[1] - rect["height"] / 2)).perform()
    unit = browser.execute_script("return window.AtlasMap.points[7][0]")
    move(at(7))                                                          # hover: the card names the unit
    card = browser.find_element(By.ID, "map-card")
    assert wait_for(lambda: card.is_displayed() and f"U{unit:04d}" in card.text)
    x0 = browser.execute_script("return window.AtlasMap.view.x")
    ActionChains(browser).click_and_hold().move_by_offset(120, 40).release().perform()      # pan
    assert abs(browser.execute_script("return window.AtlasMap.view.x") - x0 - 120) < 2
    q = at(7)
    for _ in range(10):                                                  # zoom in on it
        browser.execute_script("var c = arguments[0], r = c.getBoundingClientRect(); c.dispatchEvent(new WheelEvent("
                               "'wheel', {deltaY: -250, clientX: r.left + arguments[1], clientY: r.top + arguments[2], "
                               "bubbles: true, cancelable: true}));", canvas, q[0], q[1])
    visible = lambda: browser.execute_script("return window.AtlasMap.visible().map(function (p) { return p[0]; })")  # noqa: E731
    assert wait_for(lambda: visible() and browser.execute_script("return window.AtlasMap.fetched.tiles") == len(visible()))
    if log:                       # tiles fetched: only those in view (each a range of its pack, plus the header)
        packs = [line for line in requests()[before:] if ".pack" in line]
        assert 1 <= len(packs) <= len(visible()) + 1, (len(packs), len(visible()))
    move(at(7))
    ActionChains(browser).click().perform()                               # click: its unit view
    assert wait_for(lambda: browser.find_element(By.ID, "unit-id").text == f"{VIT}/ffn/L05/U{unit:04d}")
    assert wait_for(lambda: browser.find_element(By.ID, "mini-map").get_attribute("data-state") == "ready")
    assert browser.find_element(By.ID, "map-link").get_attribute("href").endswith(f"map.html#{VIT}/ffn/L05/U{unit:04d}")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def _demo_reference(path) -> tuple[np.ndarray, dict]:
    """timm's eval transform of an image file for the demo ViT, and each output of its live model: per unit (mean, max) over
    the patch grid: FFN units from timm's own modules by forward hooks, the SAE's latents by its checkpoint's
    encoder on block 3's tokens, the other sites through the probe's reading of them (builder.sites)."""
    import torch
    from PIL import Image
    from builder.models import ModelSource, load_model
    from builder.sae import load_sae
    from builder.sites import find_layers, run_to, sae_layer
    from builder.demo.models import WEIGHTS
    lm = load_model(ModelSource(VIT, checkpoint=str(WEIGHTS / f"{VIT}.safetensors")))
    x = lm.eval_transform()(Image.open(path).convert("RGB"))[None]
    got = {}
    hooks = [lm.model.blocks[i].mlp.act.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(("ffn", i), o))
             for i in range(6)]
    with torch.no_grad():
        lm.model(x)
    for h in hooks:
        h.remove()
    prefix = lm.model.num_prefix_tokens
    out = {key: (v[0, prefix:].mean(0).numpy(), v[0, prefix:].max(0).values.numpy()) for key, v in got.items()}
    sae = load_sae(WEIGHTS / "l3-topk")
    layers = [sae_layer(lm.model, sae, lm.input_size)] + [
        layer for site in ("q", "k", "v", "attn", "block") for layer in find_layers(lm.model, site, lm.input_size)]
    with torch.no_grad():
        for layer, grid in zip(layers, run_to(lm.model, x, layers)):
            flat = grid[0].reshape(-1, grid.shape[-1])
            out[(layer.site, layer.index)] = (flat.mean(0).numpy(), flat.max(0).values.numpy())
    return x[0].numpy(), out


def test_the_demos_live_view_gives_what_pytorch_gives_over_every_server(demo, tmp_path):
    """Issue 32 on the demo: its live model (FFN, the SAE's latents, the other sites) in Chromium over nginx and
    http.server, on PNG images of several sizes: the input bit for bit timm's, every unit's mean and max PyTorch's
    to 1e-4; the website grows by the runtime's files and at most 2 MB."""
    from PIL import Image
    from atlas.live import read_live
    from tests.helpers import choose_live_image, chromium, nginx, open_live, plain_http
    live = read_live(demo, VIT)
    sites = {o["site"] for o in live.record["outputs"]}
    assert {"ffn", "sae-l3-topk"} <= sites and live.record["check"]["passed"] and live.record["storage"] == "fp32"
    site = demo / "site"
    runtime = sum(p.stat().st_size for p in (site / "assets" / "ort").iterdir())
    added = sum(p.stat().st_size for p in (site / "live").rglob("*") if p.is_file()) + \
        (site / "live.html").stat().st_size + (site / "assets" / "live.js").stat().st_size
    assert added <= 2e6, added
    vendor = json.loads((site / "assets" / "ort" / "VENDOR.json").read_text())
    assert runtime == sum(f["bytes"] for f in vendor["files"].values()) + sum(
        (site / "assets" / "ort" / n).stat().st_size for n in ("LICENSE", "VENDOR.json"))
    source = Image.open(next((demo / "images").rglob("*.png"))).convert("RGB")
    files = []
    for w, h in ((64, 64), (100, 70), (45, 120), (80, 260)):             # the last: Pillow 13 resamples it vertically first
        path = tmp_path / f"demo-{w}x{h}.png"
        source.resize((w, h), Image.NEAREST).save(path)
        files.append(path)
    browser = chromium(1280, 1600)
    try:
        for server in (nginx(demo, tmp_path / "nginx"), plain_http(demo)):
            with server as base:
                open_live(browser, base + "site/live.html")
                for path in files:
                    page = choose_live_image(browser, path)
                    want_input, want = _demo_reference(path)
                    got = np.asarray(page["input"], np.float32).reshape(3, page["height"], page["width"])
                    assert np.array_equal(got, want_input), path.name
                    assert {(l["site"], l["layer"]) for l in page["layers"]} <= set(want)
                    for layer in page["layers"]:
                        mean, top = want[(layer["site"], layer["layer"])]
                        np.testing.assert_allclose(layer["means"], mean[layer["units"]], atol=1e-4)
                        np.testing.assert_allclose(layer["maxes"], top[layer["units"]], atol=1e-4)
                # each unit shown is named by its layer's best label, as its map names it
                words = json.loads((site / "live" / VIT / "labels.json").read_text())
                shown = browser.execute_script(
                    "return Array.from(document.querySelectorAll('#live-results section[data-output=\"ffn/L05\"] li'))"
                    ".map(li => [li.getAttribute('data-unit'), (li.querySelector('.live-label') || {}).textContent])")
                assert shown and all(word == words["ffn/L05"]["units"].get(str(int(uid[-4:]))) for uid, word in shown)
                assert any(word for _, word in shown)
    finally:
        browser.quit()
