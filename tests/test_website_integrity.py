"""The website keeps its integrity as one mechanism, and its pages treat every pack field as untrusted
(issue 29, cases 3, 5, 10, 11, 12): render re-hashes what it keeps, verify checks every published file
against the render's record and every pack against the shards it came from; in Chromium over nginx, the
404 page redirects only on its own origin, a malformed address says so, and a hostile pack neither
freezes the unit view nor draws beyond its bounds."""
from __future__ import annotations

import hashlib
import html
import json
import shutil
import time

import pytest

from atlas.website.data import script_twin
from atlas.website.listing import read_listing, write_listing
from atlas.website.packs import build_record, item, read_pack, read_record, unit_pack_path, write_pack
from tests.helpers import assert_refused, chromium, nginx, run_cli, wait_for

MODEL = "vit_tiny_patch16_224"
PACK = unit_pack_path(MODEL, "ffn", 0, 0)


@pytest.fixture
def copy(small_atlas, tmp_path):
    folder = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], folder)
    return folder


def _relist(site, rel: str) -> None:
    """Make the website's own lists (and a pack's script twin) agree with an edited file, as a careful
    tamperer would."""
    data = (site / rel).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    listing = read_listing(site)
    listing[rel] = digest
    if rel.endswith(".pack") and (site / (rel + ".js")).exists():
        (site / (rel + ".js")).write_text(script_twin(rel, data))
        listing[rel + ".js"] = hashlib.sha256((site / (rel + ".js")).read_bytes()).hexdigest()
    if rel.endswith(".pack"):
        packs = json.loads((site / "data/packs.json").read_text())
        packs[rel].update(bytes=len(data), sha256=digest)
        (site / "data/packs.json").write_text(json.dumps(packs))
        listing["data/packs.json"] = hashlib.sha256((site / "data/packs.json").read_bytes()).hexdigest()
    write_listing(site, "x", listing)


def _edit_record(site, rel: str, unit_index: int, edit) -> None:
    """Rewrite one record of a pack (its JSON edited, its blobs kept) and the pack around it."""
    header, data = read_pack(site / rel)
    items = [item(data, header, i) for i in range(len(header["items"]))]
    at = header["records"][unit_index]
    meta, record = read_record(items[at])
    blobs = {name: record[o:o + n] for name, (o, n) in meta.pop("blobs").items()}
    edit(meta)
    items[at] = build_record(meta, blobs)
    plain = {k: v for k, v in header.items() if k not in ("start", "lengths", "items")}
    (site / rel).write_bytes(write_pack(plain, items))


def test_render_remakes_a_pack_damaged_inside_a_tile(copy):
    """Case 5: a flipped byte in a tile (header and size intact) is found by its hash and made again."""
    site = copy / "site"
    original = (site / PACK).read_bytes()
    header, _ = read_pack(site / PACK)
    tile_at = header["items"][header["tiles"]["viz"][0]][0] + 20
    damaged = bytearray(original)
    damaged[tile_at] ^= 0xFF
    (site / PACK).write_bytes(bytes(damaged))
    rc, out, _ = run_cli("verify", str(copy))
    assert rc == 2 and PACK in out
    assert run_cli("render", str(copy))[0] == 0
    assert (site / PACK).read_bytes() == original
    assert run_cli("verify", str(copy))[0] == 0


def test_verify_finds_a_pack_edited_with_its_lists_updated(copy):
    """Case 5: activation 9999 and class TAMPERED, packs.json and the record updated to match."""
    site = copy / "site"

    def tamper(meta):
        meta["pictures"][0]["activation"] = 9999.0
        meta["probe"]["classes"][0] = "TAMPERED"
    _edit_record(site, PACK, 0, tamper)
    _relist(site, PACK)
    rc, out, _ = run_cli("verify", str(copy))
    assert rc == 2 and f"{PACK}: the record of {MODEL}/ffn/L00/U0000 differs" in out, out
    assert run_cli("render", str(copy), "--fresh")[0] == 0
    assert run_cli("verify", str(copy))[0] == 0


@pytest.mark.parametrize("payload", ["alert('x');", 'alert("x");'])
def test_a_script_twin_with_code_appended_is_found_and_remade(copy, payload):
    """Case 5: verify compares each twin with its pack as a script; render writes it again."""
    site = copy / "site"
    twin = site / (PACK + ".js")
    original = twin.read_text()
    twin.write_text(original + payload)
    _relist(site, PACK + ".js")
    rc, out, err = run_cli("verify", str(copy))
    assert rc == 2 and "its script twin is not exactly its pack" in out and "Traceback" not in err, (out, err)
    assert run_cli("render", str(copy))[0] == 0
    assert twin.read_text() == original


def test_urls_for_the_pages_are_parsed_as_urls(copy):
    """Case 12: a --data-url that would reach the Content-Security-Policy unchecked."""
    for flag in ("--data-url", "--base-url"):
        assert_refused(run_cli("render", str(copy), flag, "https://b.example *; report-uri https://e/r;/x"), flag)
        assert_refused(run_cli("render", str(copy), flag, "javascript:alert(1)//"), flag)
    assert run_cli("render", str(copy), "--data-url", "https://data.example.org/atlas/")[0] == 0
    assert "connect-src 'self' https://data.example.org;" in html.unescape((copy / "site/index.html").read_text())


# -- in the browser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.mark.slow
def test_the_404_page_never_leaves_its_origin(browser, small_atlas, tmp_path):
    """Case 3: nginx serves site/404.html for unknown paths, as GitHub user sites do."""
    with nginx(small_atlas[0], tmp_path / "nginx") as url:
        for evil in ("/evil.example/x", "/\\evil.example/x"):
            browser.get(url + evil + f"/{MODEL}/ffn/L00/U0000.html")          # http://host//evil.example/x/...
            time.sleep(1.0)
            assert browser.current_url.startswith(url[:-1]), browser.current_url
        browser.get(url + f"site/{MODEL}/ffn/L00/U0003.html")              # an old address still leads on
        assert wait_for(lambda: browser.current_url.endswith(f"unit.html#{MODEL}/ffn/L00/U0003"))
    browser.get_log("browser")


def _state(browser) -> str:
    from selenium.webdriver.common.by import By
    return browser.find_element(By.ID, "unit-view").get_attribute("data-state")


@pytest.mark.slow
def test_a_malformed_address_says_so_and_the_view_recovers(browser, small_atlas, tmp_path):
    """Case 10: unit.html#<id>% throws a URIError in decodeURIComponent."""
    from selenium.webdriver.common.by import By
    with nginx(small_atlas[0], tmp_path / "nginx") as url:
        browser.get(url + f"site/unit.html#{MODEL}/ffn/L00/U0003%")
        assert wait_for(lambda: _state(browser) == "missing")
        assert "is not a unit id" in browser.find_element(By.ID, "unit-status").text
        browser.execute_script(f"location.hash = '{MODEL}/ffn/L00/U0003'")
        assert wait_for(lambda: _state(browser) == "ready")
    browser.get_log("browser")


@pytest.mark.slow
def test_a_hostile_pack_neither_freezes_the_view_nor_draws_past_its_bounds(browser, copy, tmp_path):
    """Case 11: a histogram entry at bin 1e8, a map grid of 2500 x 2500: the unit shows within seconds,
    the bad bin and the map are left out, and no error reaches the console."""
    site = copy / "site"

    def tamper(meta):
        meta["probe"]["stats"]["hist"] = [[100000000, 5], [3, 2]]
    _edit_record(site, PACK, 0, tamper)
    header, data = read_pack(site / PACK)
    header["layer"]["grid"] = [2500, 2500]
    items = [item(data, header, i) for i in range(len(header["items"]))]
    (site / PACK).write_bytes(write_pack({k: v for k, v in header.items() if k not in ("start", "lengths", "items")},
                                         items))
    with nginx(copy, tmp_path / "nginx") as url:
        browser.get("about:blank")
        start = time.time()
        browser.get(url + f"site/unit.html#{MODEL}/ffn/L00/U0000")
        assert wait_for(lambda: _state(browser) in ("ready", "missing"), timeout=10)
        took = time.time() - start
        assert _state(browser) == "ready" and took < 3, took
        sizes = browser.execute_script("return Array.from(document.querySelectorAll('canvas.overlay'))"
                                       ".map(c => c.width * c.height)")
        assert sizes and max(sizes) == 1, sizes
        bars = browser.execute_script("return document.querySelectorAll('#hist rect.bar').length")
        assert bars == 1
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "Maximum call stack" in e["message"]]
        assert not errors
