"""What a browser fetches to show a unit: requests and bytes, against a server that honours ranges
(nginx) and one that answers them with the whole file (Python's http.server), in headless Chromium.

    python benchmarks/site_requests.py ATLAS [--unit MODEL/SITE/Lll/Uuuuu]

ATLAS is a rendered atlas folder (its website in ATLAS/site). For each server, a fresh browser (empty
cache) opens: a unit view (cold); the next unit of the same layer (warm: the arrow key, no reload); the
unit's layer page. Counted with the browser's resource timing: data requests (the packs the view reads,
thumbnails apart) and their bytes, then thumbnail requests and bytes, then everything else (pages,
scripts, styles). The unit view is measured as first shown (no scrolling) and after scrolling to its
end (related units' tiles load as they come into view). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import chromium, nginx, plain_http, wait_for  # noqa: E402

ENTRIES = """return performance.getEntriesByType('resource').map(e => [e.name, e.transferSize || e.encodedBodySize,
                                                                    e.initiatorType])"""


def classify(entries: list, base: str) -> dict:
    """Requests and bytes of unit data, thumbnails and the rest, from resource-timing entries."""
    out = {"data": [0, 0], "thumbs": [0, 0], "other": [0, 0]}
    for name, size, _ in entries:
        if not name.startswith(base) and not name.startswith("blob:"):
            continue
        if name.startswith("blob:"):
            continue
        kind = "thumbs" if "/data/thumbs/" in name else "data" if "/data/" in name else "other"
        out[kind][0] += 1
        out[kind][1] += size
    return out


def measure(url: str, uid: str, layer_page: str) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    results = {}
    driver = chromium(1280, 900)
    try:
        driver.get(url + "unit.html#" + uid)
        driver.execute_script("performance.setResourceTimingBufferSize(100000)")
        assert wait_for(lambda: driver.find_element(By.ID, "unit-view").get_attribute("data-state") == "ready", 60)
        wait_for(lambda: not driver.execute_script(
            "return Array.from(document.querySelectorAll('#topk img')).filter(i => !i.complete || !i.naturalWidth).length"), 60)
        time.sleep(0.5)
        results["cold"] = classify(driver.execute_script(ENTRIES), url)
        for _ in range(10):
            driver.execute_script("window.scrollBy(0, 600)")
            time.sleep(0.3)
        time.sleep(1.0)
        results["cold, scrolled"] = classify(driver.execute_script(ENTRIES), url)
        driver.execute_script("window.scrollTo(0, 0)")
        before = driver.execute_script(ENTRIES)
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        assert wait_for(lambda: driver.find_element(By.ID, "unit-view").get_attribute("data-state") == "ready"
                        and driver.find_element(By.ID, "unit-id").text != uid, 60)
        time.sleep(1.0)
        after = driver.execute_script(ENTRIES)
        results["warm (next unit)"] = classify(after[len(before):], url)
    finally:
        driver.quit()
    driver = chromium(1280, 900)
    try:
        driver.get(url + layer_page)
        assert wait_for(lambda: driver.execute_script(
            "return Array.from(document.querySelectorAll('ul.tiles img.pic-viz')).slice(0, 40)"
            ".every(i => i.src.startsWith('blob:'))"), 60)
        time.sleep(0.5)
        results["layer page"] = classify(driver.execute_script(ENTRIES), url)
    finally:
        driver.quit()
    return results


def first_unit(site: Path) -> str:
    """A unit in the middle of the atlas's middle FFN layer (by the search catalog)."""
    import re
    text = (site / "search/catalog.js").read_text()
    catalog = json.loads(re.search(r"AtlasSearch\.catalog\((.*)\);", text, re.S).group(1))
    model = catalog["names"][0]
    layers = catalog["models"][model].get("ffn") or next(iter(catalog["models"][model].values()))
    key = sorted(layers)[len(layers) // 2]
    start, stop = layers[key][0]
    return f"{model}/ffn/L{key}/U{(start + stop) // 2 + 1:04d}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("atlas")
    p.add_argument("--unit", help="the unit to open (default: one in the middle of the middle FFN layer)")
    args = p.parse_args()
    root = Path(args.atlas).resolve()
    uid = args.unit or first_unit(root / "site")
    model, site, layer, unit = uid.split("/")
    page = int(unit[1:]) // 256 + 1
    layer_page = f"{model}/{site}/{layer}/" + ("index.html" if page == 1 else f"page-{page}.html")
    rows = []
    with tempfile.TemporaryDirectory() as work, nginx(root, Path(work)) as ranged, plain_http(root) as plain:
        for name, base in (("nginx (ranges)", ranged), ("http.server (no ranges)", plain)):
            for view, r in measure(base + "site/", uid, layer_page).items():
                rows.append((name, view, r))
    print(f"{_dt.date.today()}, {platform.node()}, {uid}\n")
    print("| server | view | data requests | data bytes | thumbnail requests | thumbnail bytes | page requests |")
    print("|---|---|---|---|---|---|---|")
    for name, view, r in rows:
        print(f"| {name} | {view} | {r['data'][0]} | {r['data'][1] / 1e3:,.1f} kB | {r['thumbs'][0]} | "
              f"{r['thumbs'][1] / 1e3:,.1f} kB | {r['other'][0]} |")


if __name__ == "__main__":
    main()
