"""A rendered website's files and bytes: the shell (pages, assets, search index) and the packs, per unit,
against the limits of static hosts, and projected to a million units.

    python benchmarks/site_size.py ATLAS [--render]     # ATLAS/site; --render times `build.py render` first

Counted: every file under ATLAS/site except the packs' script twins (`*.pack.js`, written only for
pages opened from disk; `render --offline off` leaves them out), which are reported apart. The
projection scales what grows with units (layer pages, unit packs, search postings) and keeps what grows
with images (thumbnails, for the same 50,000 images) and what does not grow (index, assets).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MILLION = 1_000_000


def kind(rel: str) -> str:
    if rel.endswith(".pack.js"):
        return "script twins"
    if rel.startswith("data/thumbs/"):
        return "thumbnail packs"
    if rel.endswith("strips.pack"):
        return "strips packs"
    if rel.startswith("data/") and rel.endswith(".pack"):
        return "unit packs"
    if rel.startswith("search/"):
        return "search index"
    if rel.startswith("assets/"):
        return "assets"
    parts = rel.split("/")
    if len(parts) == 4 and parts[2].startswith("L"):
        return "layer pages"
    return "other pages and files"


def measure(site: Path) -> dict:
    sizes, counts, folders = defaultdict(int), defaultdict(int), Counter()
    largest = (0, "")
    for p in site.rglob("*"):
        if p.is_file():
            rel = p.relative_to(site).as_posix()
            k = kind(rel)
            sizes[k] += p.stat().st_size
            counts[k] += 1
            folders[p.parent.relative_to(site).as_posix()] += 1
            if rel.endswith(".pack"):
                largest = max(largest, (p.stat().st_size, rel))
    return {"sizes": dict(sizes), "counts": dict(counts), "largest_pack": largest,
            "fullest_folder": folders.most_common(1)[0] if folders else (".", 0)}


def units_of(site: Path) -> int:
    import json
    import re
    catalog = json.loads(re.search(r"AtlasSearch\.catalog\((.*)\);", (site / "search/catalog.js").read_text(), re.S).group(1))
    return sum(b - a for sites in catalog["models"].values() for layers in sites.values()
               for runs in layers.values() for a, b in runs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("atlas")
    p.add_argument("--render", action="store_true", help="time `build.py render ATLAS --offline off` first")
    args = p.parse_args()
    atlas = Path(args.atlas)
    if args.render:
        t0 = time.time()
        subprocess.run([sys.executable, str(ROOT / "build.py"), "render", str(atlas), "--offline", "off"], check=True)
        print(f"render: {time.time() - t0:.0f} s on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    site = atlas / "site"
    m = measure(site)
    units = units_of(site)
    data_kinds = ("unit packs", "thumbnail packs", "strips packs")
    shell_kinds = [k for k in m["sizes"] if k not in data_kinds and k != "script twins"]
    total = sum(v for k, v in m["sizes"].items() if k != "script twins")
    shell_files = sum(m["counts"][k] for k in shell_kinds)
    shell_bytes = sum(m["sizes"][k] for k in shell_kinds)
    print(f"{_dt.date.today()} {site}: {units:,} units, {total / 1e6:,.1f} MB without script twins, "
          f"{total / units / 1e3:.1f} kB per unit")
    print(f"shell: {shell_files:,} files, {shell_bytes / 1e6:.1f} MB; packs: "
          f"{sum(m['counts'].get(k, 0) for k in data_kinds):,} files, the largest {m['largest_pack'][0] / 2**20:.1f} MiB "
          f"({m['largest_pack'][1]}); fullest folder: {m['fullest_folder'][1]} files ({m['fullest_folder'][0]})")
    print("\n| kind | files | MB | kB per unit |\n|---|---|---|---|")
    for k in sorted(m["sizes"], key=lambda k: -m["sizes"][k]):
        print(f"| {k} | {m['counts'][k]:,} | {m['sizes'][k] / 1e6:,.1f} | {m['sizes'][k] / units / 1e3:.2f} |")
    scale = MILLION / units
    grows = ("layer pages", "search index", "unit packs", "strips packs")
    shell_1m = sum(m["counts"][k] * (scale if k in grows else 1) for k in shell_kinds)
    shell_mb = sum(m["sizes"][k] * (scale if k in grows else 1) for k in shell_kinds) / 1e6
    packs_1m = sum(m["counts"].get(k, 0) * (scale if k in grows else 1) for k in data_kinds)
    print(f"\nprojected to {MILLION:,} units (same images): shell {shell_1m:,.0f} files, {shell_mb:,.0f} MB; "
          f"{packs_1m:,.0f} packs")


if __name__ == "__main__":
    main()
