"""The live view (issue 32) in a real browser: headless Chromium over nginx and Python's http.server, a tiny ViT's
atlas with its live model. An image chosen in the page (the file input, as a reader does) is prepared exactly as
timm's eval transform prepares it, for PNG images of several sizes and aspect ratios; every unit's mean on it is
what timm's own modules give (forward hooks, computed here); a click opens the unit; the unit view's "try it on
your image" leads to the live view with that unit highlighted; from disk the page says in one line why it cannot
run. The demo's live view (with its SAE) and ViT-B/16's are checked in test_demo.py and benchmarks/live_speed.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import build
from atlas.website import render
from tests.conftest import TINY_MODEL, TINY_VIT
from tests.helpers import choose_live_image, chromium, image_folder, live_state, nginx, open_live, plain_http, wait_for

pytestmark = pytest.mark.slow

NAME = "vit_tiny_patch16_224"
SIZES = [(45, 45), (90, 37), (31, 77), (300, 200), (40, 200)]   # square, wide, tall, larger; the last shrinks
# its height by over twice the pixels of its width, which Pillow 13 resamples vertically first


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The atlas (ffn layers 0-2 and attn layer 1, all units) with its live model, rendered, served by nginx and
    by http.server, and the test images (on disk, for the file input)."""
    base = tmp_path_factory.mktemp("live-browser")
    images = image_folder(base / "images", ("a", "b"), 4, 36)
    out = base / "atlas"
    for site, layers in (("ffn", "0-2"), ("attn", "1")):
        assert build.main(["probe", *TINY_MODEL, "--site", site, "--images", str(images), "--layers", layers, "--k", "2",
                           "--workers", "0", "--out", str(out)]) == 0
    assert build.main(["live", *TINY_MODEL, "--out", str(out)]) == 0
    render(out, progress=False)
    rng = np.random.default_rng(1)
    tests = []
    for w, h in SIZES:
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), rng.integers(0, 256, (h, w))], -1)
        path = base / f"test-{w}x{h}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        tests.append(path)
    with nginx(out, tmp_path_factory.mktemp("nginx")) as ranged, plain_http(out) as plain:
        yield {"nginx": ranged + "site/", "plain": plain + "site/", "out": out, "images": tests}


@pytest.fixture(scope="module")
def browser():
    driver = chromium(1280, 2000)
    yield driver
    driver.quit()


def timm_reference(path) -> tuple[np.ndarray, dict]:
    """timm's eval transform of the image file, and each (site, layer)'s per-unit mean and max over the patch tokens,
    from timm's own modules by forward hooks."""
    from builder.models import ModelSource, load_model
    lm = load_model(ModelSource(NAME, random_init=True), **TINY_VIT)
    x = lm.eval_transform()(Image.open(path).convert("RGB"))[None]
    got = {}
    hooks = [lm.model.blocks[i].mlp.act.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(("ffn", i), o))
             for i in range(3)]
    hooks.append(lm.model.blocks[1].attn.register_forward_hook(lambda m, a, o: got.__setitem__(("attn", 1), o)))
    with torch.no_grad():
        lm.model(x)
    for h in hooks:
        h.remove()
    tokens = {key: value[0, lm.model.num_prefix_tokens:] for key, value in got.items()}
    return x[0].numpy(), {key: (t.mean(0).numpy(), t.max(0).values.numpy()) for key, t in tokens.items()}


@pytest.mark.parametrize("host", ["nginx", "plain"])
def test_an_image_chosen_in_the_page_gives_what_timm_gives(browser, served, host):
    open_live(browser, served[host] + "live.html")
    for path in served["images"]:
        page = choose_live_image(browser, path)
        want_input, want = timm_reference(path)
        got_input = np.asarray(page["input"], np.float32).reshape(3, page["height"], page["width"])
        assert got_input.shape == want_input.shape and np.array_equal(got_input, want_input), path.name  # bit for bit
        assert {(l["site"], l["layer"]) for l in page["layers"]} == set(want)
        for layer in page["layers"]:
            mean, top = want[(layer["site"], layer["layer"])]
            np.testing.assert_allclose(layer["means"], mean[layer["units"]], atol=1e-4, err_msg=f"{path.name} {layer}")
            np.testing.assert_allclose(layer["maxes"], top[layer["units"]], atol=1e-4)
    shown = browser.execute_script("return document.querySelectorAll('#live-results section.live-layer').length")
    assert shown == 4 and "never leaves this page" in browser.find_element("css selector", ".lede").text
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_a_unit_opens_and_the_unit_view_leads_back_to_it_highlighted(browser, served):
    base = served["nginx"]
    open_live(browser, base + "live.html")
    choose_live_image(browser, served["images"][0])
    first = browser.find_element("css selector", "#live-results section[data-output='ffn/L01'] li")
    uid = first.get_attribute("data-unit")
    first.find_element("css selector", "a.tile").click()
    assert wait_for(lambda: browser.find_element("id", "unit-view").get_attribute("data-state") == "ready")
    assert browser.find_element("id", "unit-view").get_attribute("data-unit") == uid
    # a unit ranked low on this image: its own page, then "try it on your image"
    low = f"{NAME}/ffn/L02/U0127"
    browser.get(base + "unit.html#" + low)
    assert wait_for(lambda: browser.find_element("id", "unit-view").get_attribute("data-state") == "ready")
    link = browser.find_element("id", "try-live")
    assert link.is_displayed() and link.get_attribute("href").endswith("live.html#" + low)
    link.click()
    assert wait_for(lambda: live_state(browser) == "ready", 60)
    assert "Choose, drop or paste an image" in browser.find_element("id", "live-focus").text
    choose_live_image(browser, served["images"][1])
    focus = browser.find_element("id", "live-focus")
    assert low in focus.text and "ranks" in focus.text
    marked = browser.find_elements("css selector", "#live-results li.focus")
    assert [m.get_attribute("data-unit") for m in marked] == [low]       # in its layer's list, ranked or added


def test_a_unit_without_a_picture_shows_a_grey_square_not_a_broken_image(browser, served):
    """This atlas was probed, never visualized: each tile's picture becomes a labelled box, no <img> without a source
    (which the browser draws as a broken image with its alt text spilling over the tiles)."""
    open_live(browser, served["plain"] + "live.html")
    choose_live_image(browser, served["images"][0])
    first = "#live-results section.live-layer:first-of-type .live-pics "
    state = f"return [document.querySelectorAll('{first}img.pic').length, " \
            f"Array.from(document.querySelectorAll('{first}.pic.missing')).map(e => [e.tagName, e.getAttribute('role'), " \
            "e.getAttribute('aria-label'), e.getBoundingClientRect().width])]"
    assert wait_for(lambda: browser.execute_script(state)[0] == 0)
    _, boxes = browser.execute_script(state)
    shown = browser.execute_script(f"return document.querySelectorAll('{first}').length")
    assert len(boxes) == shown > 0
    for tag, role, label, width in boxes:
        assert tag == "SPAN" and role == "img" and label.startswith("Not in this atlas: Optimized image of unit ")
        assert width > 20                                    # a square in the tile, beside the map over the image
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_with_a_webgpu_adapter_the_page_runs_the_webgpu_build_and_gives_the_same(served):
    """SwiftShader's WebGPU adapter (no GPU here): the page loads the WebGPU build (its binary joined from its
    pieces and checked), runs the model on WebGPU and gives what timm gives; `?device=cpu` keeps the wasm build."""
    driver = chromium(1280, 1200, extra=("--enable-unsafe-webgpu",))
    try:
        open_live(driver, served["plain"] + "live.html")
        assert driver.execute_script("return AtlasLive.state.provider") == "webgpu"
        assert "WebGPU" in driver.find_element("id", "live-status").text
        path = served["images"][3]
        page = choose_live_image(driver, path)
        _, want = timm_reference(path)
        for layer in page["layers"]:
            np.testing.assert_allclose(layer["means"], want[(layer["site"], layer["layer"])][0][layer["units"]], atol=1e-4)
        open_live(driver, served["plain"] + "live.html?device=cpu")
        assert driver.execute_script("return AtlasLive.state.provider") == "wasm"
    finally:
        driver.quit()


def test_under_vit_atlas_serve_the_page_is_isolated_and_runs_threads(browser, served):
    """`vit-atlas serve` sends COOP and COEP on the live page: cross-origin isolated, onnxruntime runs as many
    threads as the machine has (up to four), and the means are still timm's."""
    import threading
    from atlas.serve import make_server
    server = make_server(served["out"], 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        open_live(browser, f"http://127.0.0.1:{server.server_address[1]}/site/live.html")
        assert browser.execute_script("return window.crossOriginIsolated") is True
        cores = browser.execute_script("return navigator.hardwareConcurrency")
        assert browser.execute_script("return ort.env.wasm.numThreads") == min(4, cores)
        path = served["images"][0]
        page = choose_live_image(browser, path)
        _, want = timm_reference(path)
        for layer in page["layers"]:
            np.testing.assert_allclose(layer["means"], want[(layer["site"], layer["layer"])][0][layer["units"]], atol=1e-4)
    finally:
        server.shutdown()
        server.server_close()


def test_from_disk_the_page_says_why_in_one_line(browser, served):
    browser.get((served["out"] / "site" / "live.html").as_uri())
    assert wait_for(lambda: live_state(browser) == "unavailable")
    text = browser.find_element("id", "live-status").text
    assert "served over http(s)" in text and "vit-atlas serve" in text and "\n" not in text


@pytest.mark.parametrize("part", ["model", "runtime"])
def test_a_published_file_changed_on_the_host_is_refused_by_the_page(browser, served, tmp_path, part):
    """The page hashes what it fetches: a live model's file, or a piece of the runtime's binary, that is not the
    file the website lists stops the view with one line naming it."""
    import shutil
    site = tmp_path / "atlas" / "site"
    shutil.copytree(served["out"] / "site", site)
    target = site / "live" / NAME / "model.onnx" if part == "model" else site / "assets" / "ort" / "ort-wasm-simd-threaded.wasm"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with plain_http(tmp_path / "atlas") as base:
        browser.get(base + "site/live.html")
        assert wait_for(lambda: live_state(browser) in ("ready", "error", "unavailable"), 60)
        text = browser.find_element("id", "live-status").text
    assert live_state(browser) == "error" and "is not the file the website lists" in text and "\n" not in text, text
    assert (target.name if part == "model" else "binary") in text


def test_a_vit_b_16_atlas_of_a_few_units_a_layer_keeps_every_top_20_in_the_page(tmp_path_factory, browser):
    """The issue's second model: random-init vit_base_patch16_224, 30 units of every FFN layer, its live model in
    fp16 storage (published under 180 MB, in files under 25 MiB); over nginx and http.server the page prepares
    PNG images of several sizes exactly as timm does (bicubic, 248 then 224) and every layer's top-20 units by
    mean are PyTorch's (fp32 weights, timm's modules by forward hooks)."""
    from atlas.live import read_live
    from builder.models import ModelSource, load_model
    base = tmp_path_factory.mktemp("vit-b")
    images = image_folder(base / "images", ("a", "b"), 2, (150, 300))
    out = base / "atlas"
    model = ["--model", "vit_base_patch16_224", "--random-init"]
    assert build.main(["probe", *model, "--images", str(images), "--units", "0-29", "--k", "2", "--workers", "0",
                       "--out", str(out)]) == 0
    assert build.main(["live", *model, "--out", str(out)]) == 0
    live = read_live(out, "vit_base_patch16_224")
    assert live.record["storage"] == "fp16" and live.published_bytes < 180e6
    assert all(f["bytes"] <= 24 * 2**20 for f in live.files.values()) and len(live.files) > 7
    render(out, progress=False)                                   # auto publishes it: under 200 MB
    lm = load_model(ModelSource("vit_base_patch16_224", random_init=True))
    rng = np.random.default_rng(2)
    tests = []
    for w, h in ((224, 224), (500, 300), (260, 611)):
        path = base / f"vitb-{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        tests.append(path)
    for server in (nginx(out, base / "nginx"), plain_http(out)):
        with server as url:
            open_live(browser, url + "site/live.html")
            for path in tests:
                page = choose_live_image(browser, path)
                x = lm.eval_transform()(Image.open(path).convert("RGB"))
                got = np.asarray(page["input"], np.float32).reshape(3, page["height"], page["width"])
                assert np.array_equal(got, x.numpy()), path.name
                captured = {}
                hooks = [b.mlp.act.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o))
                         for i, b in enumerate(lm.model.blocks)]
                with torch.no_grad():
                    lm.model(x[None])
                for hook in hooks:
                    hook.remove()
                assert len(page["layers"]) == 12
                for layer in page["layers"]:
                    units = np.asarray(layer["units"])
                    want = captured[layer["layer"]][0, 1:].mean(0).numpy()[units]
                    got_means = np.asarray(layer["means"])
                    top = lambda v: set(units[np.argsort(-v, kind="stable")[:20]].tolist())  # noqa: E731
                    assert top(got_means) == top(want), (path.name, layer["layer"])
                    assert np.abs(got_means - want).max() < 5e-3                       # fp16 weights, fp32 sums
