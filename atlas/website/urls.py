"""Where everything lives in a rendered website (the ``site/`` folder of an atlas, or ``render --site DIR``).

URL scheme, relative to the website's root; stable for an atlas version (docs/FORMAT.md "Site"):

    index.html                               the atlas
    <model>/index.html                       a model: its layers with their strongest units
    <model>/<site>/L<ll>/index.html          a layer's units (page-2.html, ... past PAGE_UNITS units)
    <model>/<site>/L<ll>/U<uuuu>.html        a unit: the unit id + ".html"
    search.html, downloads.html, cite.html, analyses/<name>.html
    img/<picture>/<model>/<site>/L<ll>/U<uuuu>.webp (and _t.webp tiles; picture: viz, fourier)
    img/data/<view>/<row>.webp               dataset thumbnails
    search/meta.js, search/classes-<n>.js    the static search index (script-loaded: works on file://)
    .vit-atlas-website                       marks the folder as a website ViT Atlas renders into
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..format import unit_id
from ..shard import write_atomically

PAGE_UNITS = 256           # units per layer page
TILE_SIZE = 96             # layer-grid tiles of optimized images larger than this
THUMB_SIZE = 128           # dataset thumbnails
MARKER = ".vit-atlas-website"
RESERVED = {"assets", "img", "search", "analyses", "index.html", "search.html", "downloads.html", "cite.html"}


def page_path(model: str, site: str, layer: int, unit: int | None = None, page: int = 1) -> str:
    """Website-relative path of a unit page (unit given) or a layer page."""
    if unit is not None:
        return f"{unit_id(model, site, layer, unit)}.html"
    return f"{model}/{site}/L{layer:02d}/" + ("index.html" if page == 1 else f"page-{page}.html")


def viz_path(uid: str, tile: bool = False, part: str = "viz") -> str:
    """Website-relative path of a unit's optimized picture of ``part`` (or its tile)."""
    return f"img/{part}/{uid}{'_t' if tile else ''}.webp"


def relative_root(path: str) -> str:
    """'../' repeated for a website-relative page path."""
    return "../" * path.count("/")


def view_key(data_config: dict) -> str:
    """A short name for a model's view of the dataset (its eval resize and crop): thumbnails are
    stored per view, so models with different transforms in one atlas each get aligned maps."""
    keys = ("input_size", "crop_pct", "crop_mode", "interpolation")
    text = json.dumps({k: data_config.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def write_if_changed(path: Path, data: bytes | str) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it; returns whether it wrote. A
    file is never seen half-written, so a killed render leaves no truncated page or image behind."""
    data = data.encode() if isinstance(data, str) else data
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomically(path, data)
    return True


def complete_webp(path: Path) -> bool:
    """Whether ``path`` is a whole WebP file: its RIFF header's size field matches the file's size (a
    thumbnail cut short by a kill under an older version is rewritten)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP" \
        and int.from_bytes(head[4:8], "little") + 8 == size
