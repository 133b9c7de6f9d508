"""The site in a real browser: headless Chromium driven by selenium, pages opened from disk (file://)."""
from __future__ import annotations

import shutil
import time

import pytest

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("browser tests need Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run", "--window-size=1280,3000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def all_images_loaded(driver) -> list[str]:
    """Scroll through the page so lazy images load; return the sources of shown images that did not (a
    lazy image hidden on purpose, like the other picture of a layer page's tiles, is never fetched)."""
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    script = ("return Array.from(document.images).filter(i => i.getClientRects().length > 0)"
              ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    wait_for(lambda: not driver.execute_script(script))
    return driver.execute_script(script)


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_click_from_index_to_a_unit_with_every_image_loaded_and_no_errors(browser, site):
    from selenium.webdriver.common.by import By
    out, index = site
    browser.get(index.as_uri())
    assert all_images_loaded(browser) == [] and console_errors(browser) == []
    browser.find_element(By.CSS_SELECTOR, "main table a[href$='index.html']").click()
    assert browser.current_url.endswith("vit_tiny_patch16_224/index.html")
    assert all_images_loaded(browser) == [] and console_errors(browser) == []
    browser.find_element(By.CSS_SELECTOR, "section.layer-strip h2 a").click()
    assert "/ffn/L00/index.html" in browser.current_url
    assert all_images_loaded(browser) == [] and console_errors(browser) == []
    browser.find_element(By.CSS_SELECTOR, "ul.tiles a.tile").click()
    assert "/ffn/L00/U00" in browser.current_url
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("vit_tiny_patch16_224/ffn/L00/U")
    assert all_images_loaded(browser) == [] and console_errors(browser) == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "ol.gallery img.photo")) == 5


def test_overlay_toggles_by_click_and_key_and_arrows_move_between_units(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    out, _ = site
    browser.get((out / "site/vit_tiny_patch16_224/ffn/L01/U0007.html").as_uri())
    overlays = lambda: [o.is_displayed() for o in browser.find_elements(By.CSS_SELECTOR, "img.overlay")]  # noqa: E731
    assert overlays() and all(overlays())
    browser.find_element(By.CSS_SELECTOR, "label[for=maps]").click()
    assert not any(overlays())
    browser.find_element(By.TAG_NAME, "body").send_keys("m")
    assert all(overlays())
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    assert wait_for(lambda: browser.current_url.endswith("/ffn/L01/U0008.html"))
    browser.find_element(By.TAG_NAME, "body").send_keys("u")
    assert wait_for(lambda: browser.current_url.endswith("/ffn/L01/index.html"))
    assert console_errors(browser) == []


def test_search_finds_units_by_class_and_by_id_from_disk(browser, site):
    from selenium.webdriver.common.by import By
    out, index = site
    browser.get(index.as_uri())
    box = browser.find_element(By.ID, "q")
    box.send_keys("shopping cart")
    box.submit()
    assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#search-results a"))
    status = browser.find_element(By.ID, "search-status").text
    assert "mostly shopping cart" in status
    first = browser.find_element(By.CSS_SELECTOR, "#search-results a")
    assert "shopping cart" in first.text
    first.click()
    assert wait_for(lambda: "/U0" in browser.current_url)
    assert "shopping cart" in browser.find_element(By.CSS_SELECTOR, "ul.classes").text
    browser.get((out / "site/search.html").as_uri() + "?q=L01/U0042")
    assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#search-results a"))
    assert browser.find_element(By.CSS_SELECTOR, "#search-results code").text == "vit_tiny_patch16_224/ffn/L01/U0042"
    browser.get((out / "site/search.html").as_uri() + "?q=" + "%3Cscript%3E")
    assert wait_for(lambda: browser.find_element(By.ID, "search-status").text)
    assert console_errors(browser) == []


def test_usable_on_a_phone_and_in_dark_mode(browser, site):
    out, _ = site
    page = (out / "site/vit_tiny_patch16_224/ffn/L01/U0007.html").as_uri()
    browser.set_window_size(375, 800)
    try:
        for path in (page, (out / "site/index.html").as_uri(), (out / "site/downloads.html").as_uri()):
            browser.get(path)
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


def test_pages_are_readable_without_javascript(browser, site):
    from selenium.webdriver.common.by import By
    out, _ = site
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get((out / "site/vit_tiny_patch16_224/ffn/L01/U0007.html").as_uri())
        assert len(browser.find_elements(By.CSS_SELECTOR, "ol.gallery img.photo")) == 5
        overlays = browser.find_elements(By.CSS_SELECTOR, "img.overlay")
        browser.find_element(By.CSS_SELECTOR, "label[for=maps]").click()  # the toggle is pure CSS
        assert not any(o.is_displayed() for o in overlays)
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})


def test_the_layer_page_switches_its_tiles_between_pictures(browser, site):
    from selenium.webdriver.common.by import By
    out, _ = site
    browser.get((out / "site" / "vit_tiny_patch16_224" / "ffn" / "L00" / "index.html").as_uri())

    def shown() -> set[str]:
        return {img.get_attribute("src").split("/img/")[1].split("/")[0]
                for img in browser.find_elements(By.CSS_SELECTOR, ".tile img") if img.is_displayed()}
    assert shown() == {"viz"}
    browser.find_element(By.CSS_SELECTOR, "label[for='picture-fourier']").click()
    assert wait_for(lambda: shown() == {"fourier"})
    assert all_images_loaded(browser) == [] and console_errors(browser) == []
    browser.find_element(By.CSS_SELECTOR, "label[for='picture-viz']").click()
    assert wait_for(lambda: shown() == {"viz"})


def test_following_a_related_unit_and_filtering_a_layer_page(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    out, _ = site
    browser.get((out / "site" / "vit_tiny_patch16_224" / "ffn" / "L01" / "U0007.html").as_uri())
    link = browser.find_element(By.CSS_SELECTOR, "section.related a.related-unit")
    target = link.get_attribute("href")
    link.click()
    assert browser.current_url == target and "/U0007.html" not in target
    assert all_images_loaded(browser) == [] and console_errors(browser) == []

    browser.get((out / "site" / "vit_tiny_patch16_224" / "ffn" / "L00" / "index.html").as_uri())
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


def test_search_by_flag(browser, site):
    from selenium.webdriver.common.by import By
    import atlas
    out, _ = site
    a = atlas.open(out)
    local = [u for layer in (0, 1) for u in range(128)
             if a.has(f"vit_tiny_patch16_224/ffn/L{layer:02d}/U{u:04d}", "probe")
             and a.unit("vit_tiny_patch16_224", layer, u).flags.local]
    browser.get((out / "site" / "search.html").as_uri() + "?q=local")
    assert wait_for(lambda: "flagged local" in browser.find_element(By.ID, "search-status").text)
    found = browser.find_elements(By.CSS_SELECTOR, "#search-results li")
    assert len(found) == min(len(local), 200) and console_errors(browser) == []
