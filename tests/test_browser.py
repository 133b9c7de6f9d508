"""The website in a real browser: headless Chromium, against nginx (ranges honoured), Python's http.server
(ranges answered with the whole file) and pages opened from disk (file://)."""
from __future__ import annotations

import numpy as np
import pytest

import atlas
from tests.helpers import chromium, nginx, plain_http, wait_for

pytestmark = pytest.mark.slow

MODEL = "vit_tiny_patch16_224"
UNITS = [("ffn", 0, 3), ("ffn", 1, 7), ("ffn", 1, 100), ("attn", 0, 5)]   # pictures and probe; probe only; other site


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def hosts(small_atlas, tmp_path_factory):
    """The small atlas served by nginx and by http.server: {"nginx": url of its site/, "plain": ...}."""
    out, _ = small_atlas
    with nginx(out, tmp_path_factory.mktemp("nginx")) as ranged, plain_http(out) as plain:
        yield {"nginx": ranged + "site/", "plain": plain + "site/", "disk": (out / "site").as_uri() + "/"}


def all_images_loaded(driver) -> list[str]:
    """Scroll through the page so lazy images load; the sources of shown images that did not."""
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    script = ("return Array.from(document.images).filter(i => i.getClientRects().length > 0 && !i.classList.contains('missing'))"
              ".filter(i => !(i.complete && i.naturalWidth > 1)).map(i => i.src)")
    wait_for(lambda: not driver.execute_script(script))
    return driver.execute_script(script)


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_unit(driver, base: str, uid: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(base + "unit.html#" + uid)
    assert wait_for(lambda: driver.find_element(By.ID, "unit-view").get_attribute("data-state") == "ready"), \
        driver.find_element(By.ID, "unit-status").text


@pytest.mark.parametrize("host", ["nginx", "plain", "disk"])
def test_the_unit_view_shows_what_the_reader_returns(browser, small_atlas, hosts, host):
    from selenium.webdriver.common.by import By
    out, _ = small_atlas
    with atlas.open(out) as a:
        for site_, layer, index in UNITS:
            u = a.unit(MODEL, layer, index, site=site_)
            open_unit(browser, hosts[host], u.id)
            assert browser.find_element(By.ID, "unit-id").text == u.id
            figures = browser.find_elements(By.CSS_SELECTOR, "#pictures figure[data-part]")
            assert [f.get_attribute("data-part") for f in figures] == u.pictures
            for f in figures:
                assert float(f.get_attribute("data-activation")) == u.picture(f.get_attribute("data-part")).activation
            if "probe" in u.parts:
                rows = browser.find_elements(By.CSS_SELECTOR, "#topk li")
                assert [int(r.get_attribute("data-row")) for r in rows] == [t.index for t in u.topk]
                assert [float(r.get_attribute("data-score")) for r in rows] == [t.score for t in u.topk]
                badges = [b.get_attribute("data-flag") for b in browser.find_elements(By.CSS_SELECTOR, "#badges li")]
                assert badges == u.flags.names
                related = browser.find_elements(By.CSS_SELECTOR, "#related a.related-unit")
                assert [r.get_attribute("data-id") for r in related] == [r.id for r in u.related]
                assert [np.float32(r.get_attribute("data-corr")) for r in related] == [np.float32(r.corr) for r in u.related]
            assert all_images_loaded(browser) == [], u.id
    assert console_errors(browser) == []


def test_a_citable_address_opened_directly_shows_its_unit_and_its_bibtex(browser, hosts):
    from selenium.webdriver.common.by import By
    uid = f"{MODEL}/ffn/L01/U0007"
    for host in ("nginx", "disk"):
        browser.get("about:blank")
        open_unit(browser, hosts[host], uid)
        assert browser.find_element(By.TAG_NAME, "h1").text == uid
        bib = browser.find_element(By.ID, "bibtex").text
        assert "unit.html#" + uid in bib and "vit\\_tiny\\_patch16\\_224/ffn/L01/U0007" in bib
    browser.get(hosts["nginx"] + "unit.html#nowhere/ffn/L00/U0001")
    assert wait_for(lambda: browser.find_element(By.ID, "unit-view").get_attribute("data-state") == "missing")
    assert "nowhere" in browser.find_element(By.ID, "unit-status").text
    browser.get_log("browser")                                    # the 404 of that pack, expected


def test_an_old_unit_address_leads_to_the_unit_view(browser, hosts):
    from selenium.webdriver.common.by import By
    browser.get(hosts["nginx"] + f"{MODEL}/ffn/L00/U0003.html")       # nginx serves 404.html, as GitHub Pages does
    assert wait_for(lambda: browser.current_url.endswith(f"unit.html#{MODEL}/ffn/L00/U0003"))
    assert wait_for(lambda: browser.find_element(By.ID, "unit-id").text == f"{MODEL}/ffn/L00/U0003")
    browser.get_log("browser")                                    # the 404 itself, expected


@pytest.mark.parametrize("host", ["nginx", "plain", "disk"])
def test_from_the_index_to_a_unit_every_image_loads(browser, hosts, host):
    from selenium.webdriver.common.by import By
    browser.get(hosts[host] + "index.html")
    assert all_images_loaded(browser) == []
    browser.find_element(By.CSS_SELECTOR, "main table a[href$='index.html']").click()
    assert browser.current_url.endswith(f"{MODEL}/index.html")
    assert all_images_loaded(browser) == []
    browser.find_element(By.CSS_SELECTOR, "section.layer-strip h2 a").click()
    assert "/ffn/L00/index.html" in browser.current_url
    assert all_images_loaded(browser) == []
    browser.find_element(By.CSS_SELECTOR, "ul.tiles a.tile").click()
    assert wait_for(lambda: browser.find_element(By.ID, "unit-view").get_attribute("data-state") == "ready")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"{MODEL}/ffn/L00/U")
    assert all_images_loaded(browser) == [] and console_errors(browser) == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "ol.gallery img.photo")) == 5


def test_a_host_that_ignores_ranges_is_read_a_pack_at_a_time(browser, hosts):
    from selenium.webdriver.common.by import By
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})   # no range served from a cache
    try:
        open_unit(browser, hosts["plain"], f"{MODEL}/ffn/L00/U0003")
        stats = browser.execute_script("return AtlasPacks.stats")
        assert stats["whole"] >= 1 and len(browser.find_elements(By.CSS_SELECTOR, "#topk li")) == 5
        assert all_images_loaded(browser) == [] and console_errors(browser) == []
    finally:
        browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})


def test_overlays_toggle_and_keys_move_between_units(browser, hosts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    open_unit(browser, hosts["nginx"], f"{MODEL}/ffn/L01/U0007")
    overlays = lambda: [o.is_displayed() for o in browser.find_elements(By.CSS_SELECTOR, ".overlay")]  # noqa: E731
    assert overlays() and all(overlays())
    browser.find_element(By.CSS_SELECTOR, "label[for=maps]").click()
    assert not any(overlays())
    browser.find_element(By.TAG_NAME, "body").send_keys("m")
    assert all(overlays())
    data = "return AtlasPacks.stats.requests - AtlasPacks.stats.thumbnails"
    browser.set_window_size(1280, 800)                # related units' tiles load when scrolled into view
    try:
        requests = browser.execute_script(data)
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        assert wait_for(lambda: browser.find_element(By.ID, "unit-id").text == f"{MODEL}/ffn/L01/U0008")
        assert browser.current_url.endswith("unit.html#" + f"{MODEL}/ffn/L01/U0008")
        assert browser.execute_script(data) - requests <= 2     # the next unit: warm (its record, no header)
    finally:
        browser.set_window_size(1280, 3000)
    browser.find_element(By.TAG_NAME, "body").send_keys("u")
    assert wait_for(lambda: browser.current_url.endswith("/ffn/L01/index.html"))
    assert console_errors(browser) == []


@pytest.mark.parametrize("host", ["nginx", "disk"])
def test_search_finds_units_by_id_class_and_flag(browser, small_atlas, hosts, host):
    from selenium.webdriver.common.by import By
    out, _ = small_atlas
    base = hosts[host]
    browser.get(base + "index.html")
    box = browser.find_element(By.ID, "q")
    box.send_keys("shopping cart")
    box.submit()
    assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#search-results a"))
    assert "mostly shopping cart" in browser.find_element(By.ID, "search-status").text
    browser.find_element(By.CSS_SELECTOR, "#search-results a").click()
    assert wait_for(lambda: browser.find_element(By.ID, "unit-view").get_attribute("data-state") == "ready")
    assert "shopping cart" in browser.find_element(By.CSS_SELECTOR, "ul.classes").text
    browser.get(base + "search.html?q=L01/U0042")
    assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#search-results a"))
    assert browser.find_element(By.CSS_SELECTOR, "#search-results code").text == f"{MODEL}/ffn/L01/U0042"
    with atlas.open(out) as a:
        local = [(layer, u) for layer in (0, 1) for u in a.units(MODEL, layer) if a.unit(MODEL, layer, u).flags.local]
    browser.get(base + "search.html?q=local")
    assert wait_for(lambda: "flagged local" in browser.find_element(By.ID, "search-status").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#search-results li")) == min(len(local), 200)
    browser.get(base + "search.html?q=%3Cscript%3E")
    assert wait_for(lambda: browser.find_element(By.ID, "search-status").text)
    assert console_errors(browser) == []


def test_usable_on_a_phone_and_in_dark_mode(browser, hosts):
    page = hosts["disk"] + "unit.html#" + f"{MODEL}/ffn/L01/U0007"
    browser.set_window_size(375, 800)
    try:
        for path in (page, hosts["disk"] + "index.html", hosts["disk"] + "downloads.html"):
            browser.get(path)
            wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
            overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (path, overflow)
    finally:
        browser.set_window_size(1280, 3000)
    background = "return getComputedStyle(document.body).backgroundColor"
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
    browser.get(page)
    light = browser.execute_script(background)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.get(page)
    dark = browser.execute_script(background)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    lum = lambda css: sum(int(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])  # noqa: E731
    assert lum(light) > 600 and lum(dark) < 150


def test_navigation_pages_are_readable_without_javascript(browser, hosts):
    from selenium.webdriver.common.by import By
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(hosts["disk"] + f"{MODEL}/ffn/L00/index.html")
        tiles = browser.find_elements(By.CSS_SELECTOR, "ul.tiles a.tile")
        assert len(tiles) == 128 and tiles[3].get_attribute("href").endswith(f"unit.html#{MODEL}/ffn/L00/U0003")
        browser.get(hosts["disk"] + "unit.html#" + f"{MODEL}/ffn/L00/U0003")
        assert "JavaScript" in browser.find_element(By.TAG_NAME, "main").text     # says so, and where the data is
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})


def test_the_layer_page_switches_its_tiles_between_pictures(browser, hosts):
    from selenium.webdriver.common.by import By
    browser.get(hosts["nginx"] + f"{MODEL}/ffn/L00/index.html")

    def shown() -> set[str]:
        return {img.get_attribute("class").split("pic-")[1] for img in browser.find_elements(By.CSS_SELECTOR, ".tile img")
                if img.is_displayed() and img.get_attribute("src").startswith("blob:")}
    assert wait_for(lambda: shown() == {"viz"})
    browser.find_element(By.CSS_SELECTOR, "label[for='picture-fourier']").click()
    assert wait_for(lambda: shown() == {"fourier"})
    assert all_images_loaded(browser) == [] and console_errors(browser) == []
    requests = browser.execute_script("return AtlasPacks.stats.requests")
    assert requests <= 4                                  # the header, one range per picture's tiles
    browser.find_element(By.CSS_SELECTOR, "label[for='picture-viz']").click()
    assert wait_for(lambda: shown() == {"viz"})


def test_following_a_related_unit_and_filtering_a_layer_page(browser, hosts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    open_unit(browser, hosts["disk"], f"{MODEL}/ffn/L01/U0007")
    link = browser.find_element(By.CSS_SELECTOR, "#related a.related-unit")
    target = link.get_attribute("data-id")
    link.click()
    assert wait_for(lambda: browser.find_element(By.ID, "unit-id").text == target)
    assert all_images_loaded(browser) == [] and console_errors(browser) == []

    browser.get(hosts["disk"] + f"{MODEL}/ffn/L00/index.html")
    flag = Select(browser.find_element(By.ID, "flag-filter"))
    name = flag.options[1].get_attribute("value")               # the first flag this layer has
    flag.select_by_value(name)
    tiles = browser.find_elements(By.CSS_SELECTOR, "ul.tiles > li")
    shown = [t for t in tiles if t.is_displayed()]
    assert 0 < len(shown) < len(tiles)
    assert all(name in t.find_element(By.CSS_SELECTOR, "a").get_attribute("data-flags").split() for t in shown)
    assert browser.find_element(By.ID, "filter-count").text == f"{len(shown)} of {len(tiles)} units"
    Select(browser.find_element(By.ID, "tile-sort")).select_by_value("strength")
    strengths = [float(t.find_element(By.CSS_SELECTOR, "a").get_attribute("data-strength") or "-inf")
                 for t in browser.find_elements(By.CSS_SELECTOR, "ul.tiles > li") if t.is_displayed()]
    assert strengths == sorted(strengths, reverse=True) and console_errors(browser) == []


def test_pages_and_packs_hosted_apart(browser, small_atlas, tmp_path_factory):
    """The shell on one origin, the packs on another (a bucket with CORS), by `render --data-url`."""
    from selenium.webdriver.common.by import By
    from atlas.website import render
    from tests.helpers import free_port
    out, _ = small_atlas
    shell = tmp_path_factory.mktemp("shell")
    port = free_port()
    render(out, out=shell / "site", workers=2, progress=False, data_url=f"http://127.0.0.1:{port}/")
    bucket = tmp_path_factory.mktemp("bucket")
    import shutil
    shutil.move(str(shell / "site" / "data"), str(bucket / "data"))       # the packs go to the bucket only
    cors = 'add_header Access-Control-Allow-Origin "*" always;'
    with nginx(shell, tmp_path_factory.mktemp("nginx-shell")) as pages, \
            nginx(bucket, tmp_path_factory.mktemp("nginx-bucket"), extra=cors, port=port):
        open_unit(browser, pages + "site/", f"{MODEL}/ffn/L01/U0007")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#topk li")) == 5
        assert all_images_loaded(browser) == [] and console_errors(browser) == []
        names = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert any(n.startswith(f"http://127.0.0.1:{port}/data/") for n in names)
