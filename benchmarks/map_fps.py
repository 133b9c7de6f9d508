"""How the map view runs in a browser (issue 33): a ViT-B/16-shaped layer (3,072 units, synthetic, mapped
from its sketches) rendered, served by nginx and opened in headless Chromium: the time until the map is
ready, the data requests of its first screen, and the frame times of a pan drawn frame by frame
(requestAnimationFrame, 240 frames, at the whole-layer zoom and zoomed in on tiles). Optionally the same for
an existing atlas's layer (--atlas, e.g. the demo).

    python benchmarks/map_fps.py [--atlas ATLAS --model M --layer L] [--work /tmp/map-fps]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAN = """
const done = arguments[arguments.length - 1], m = window.AtlasMap, times = [];
let n = 0;
function frame(t) { times.push(t); m.view.x += 4; m.draw(); if (++n < 240) requestAnimationFrame(frame); else {
  const gaps = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
  done({fps: 1000 * (times.length - 1) / (times[times.length - 1] - times[0]), median_ms: gaps[gaps.length >> 1],
        p95_ms: gaps[Math.floor(gaps.length * 0.95)]}); } }
requestAnimationFrame(frame);
"""


def measure(site_url: str, page: str, browser) -> dict:
    from selenium.webdriver.common.by import By
    browser.get(site_url + page)
    t0 = time.time()
    while browser.find_element(By.ID, "layer-map").get_attribute("data-state") != "ready" and time.time() - t0 < 30:
        time.sleep(0.01)
    ready = browser.execute_script("return performance.now()")
    first = [e["name"] for e in browser.execute_script("return performance.getEntriesByType('resource').map("
                                                         "function (e) { return {name: e.name}; })")]
    data = [n for n in first if "/maps/" in n or ".pack" in n or "/data/" in n]
    browser.set_script_timeout(60)
    whole = browser.execute_async_script(PAN)
    browser.execute_script("var m = window.AtlasMap, p = m.points[0], q = m.screen(p); "
                           "for (var i = 0; i < 8; i++) { m.view.scale *= 1.6; } m.draw();")
    time.sleep(1.5)
    zoomed = browser.execute_async_script(PAN)
    return {"units": browser.execute_script("return window.AtlasMap.points.length"), "ready_ms": round(ready),
            "first_screen_data_requests": len(data), "pan_whole_layer": whole, "pan_zoomed": zoomed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--atlas", help="an atlas with maps, rendered (default: make a synthetic ViT-B/16-shaped layer)")
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--site", default="ffn")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--work", default="/tmp/map-fps")
    a = p.parse_args()
    from atlas.website import render
    from atlas.website.urls import map_path
    from tests.helpers import chromium, nginx
    work = Path(a.work)
    if a.atlas:
        root = Path(a.atlas)
    else:
        from benchmarks.synthetic_atlas import make
        from builder.maps import run_maps
        shutil.rmtree(work, ignore_errors=True)
        root = make(work / "atlas", 1, 3072, 2000, 16, 224, 14, False, 0)
        run_maps(root, a.model, a.site, progress=False)
        render(root, progress=False)
    browser = chromium(1280, 1000)
    try:
        with nginx(root, work / "nginx") as base:
            result = measure(base + "site/", map_path(a.model, a.site, a.layer), browser)
    finally:
        browser.quit()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
