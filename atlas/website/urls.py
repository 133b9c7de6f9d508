"""Where everything lives in a rendered website (the ``site/`` folder of an atlas, or ``render --out DIR``).

URL scheme, relative to the website's root (docs/FORMAT.md "Website"); stable for an atlas version:

    index.html                               the atlas
    <model>/index.html                       a model: its layers with their strongest units
    <model>/<site>/L<ll>/index.html          a layer's units 0-255 (page-2.html: 256-511, ...)
    unit.html#<unit id>                      a unit's view: its permanent, citable address
    search.html, downloads.html, cite.html, analyses/<name>.html
    404.html                                 sends addresses of older websites (<unit id>.html) to unit.html#<id>
    data/<model>/<site>/L<ll>/P<pppp>.pack   the units of one layer page: tiles and records (atlas.website.packs)
    data/<model>/strips.pack                 tiles of each layer's strongest units (model and index pages)
    data/thumbs/<view>/T<tttt>.pack          dataset thumbnails, once per image and model view
    data/....pack.js                         the same packs as scripts, for pages opened from disk (file://)
    search/                                  the static search index (script-loaded: works on file://)
    .vit-atlas-website                       marks the folder as a website ViT Atlas renders into

Only index, model, layer, search, downloads, cite and analysis pages are HTML files: their number grows
with layers, not units. Everything per unit lives in packs, read by range requests.
"""
from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from pathlib import Path

from ..format import PICTURE_LABELS, AtlasError, fill, unit_id
from ..labels import SOURCE_TITLES, SOURCES
from ..shard import write_atomically
from .packs import PACK_UNITS, layout

PAGE_UNITS = PACK_UNITS    # units per layer page: one page, one unit pack
TILE_SIZE = 96             # layer-grid tiles of optimized images larger than this
THUMB_SIZE = 128           # dataset thumbnails
MARKER = ".vit-atlas-website"
UNIT_VIEW = "unit.html"
LIVE_PAGE = "live.html"    # the live view ("Try an image"), where a live model is published (atlas.website.live)
RESERVED = {"assets", "data", "search", "analyses", "live", "index.html", "search.html", "downloads.html", "cite.html",
            UNIT_VIEW, LIVE_PAGE, "404.html"}


_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                   r"|\[[0-9A-Fa-f:.]{2,45}\]")
_URL_PATH = re.compile(r"[A-Za-z0-9\-._~/%]*")


def check_url(url: str, flag: str) -> str:
    """``url`` if it is the http(s) URL of a folder: scheme, host (and port) and a plain path, with no
    credentials, query, fragment, spaces, quotes or ';'; else AtlasError naming ``flag``. Such URLs reach
    the pages' Content-Security-Policy, links and citations, so nothing else may pass."""
    shown = str(url)[:120]
    why = "give an http(s) URL of a folder, e.g. https://data.example.org/atlas/"
    if not isinstance(url, str) or len(url) > 2000 or not url.isascii() or any(c.isspace() for c in url):
        raise AtlasError(f"{flag} {shown!r}: {why}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise AtlasError(f"{flag} {shown!r}: {why}") from None
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if parts.scheme not in ("http", "https") or not _HOST.fullmatch(host) or parts.query or parts.fragment \
            or "@" in parts.netloc or not _URL_PATH.fullmatch(parts.path) or url.endswith(("?", "#")):
        raise AtlasError(f"{flag} {shown!r}: {why} (scheme, host and path only)")
    return url


def content_security_policy(data_url: str = "", header: bool = False, wasm: bool = False) -> str:
    """The website's Content-Security-Policy (the pages' meta tag and `build.py serve`'s header): only
    the website's own scripts and styles, images of its own and from packs (``blob:``), data fetched
    from the website or from ``data_url``'s origin; ``header`` adds what only a header can say; ``wasm``
    lets WebAssembly compile (the live view's page and its runtime's files, nothing else)."""
    origin = ""
    if data_url.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(data_url)
        origin = f" {parts.scheme}://{parts.netloc}"
    scripts = "'self' 'wasm-unsafe-eval'" if wasm else "'self'"
    policy = (f"default-src 'none'; img-src 'self' data: blob:; style-src 'self'; script-src {scripts}; "
              f"connect-src 'self'{origin}; base-uri 'none'; form-action 'self'")
    return policy + ("; frame-ancestors 'none'" if header else "")


FIRST_PAGE = "{model}/{site}/L{layer:2}/index.html"          # templates (atlas.format.fill) the pages'
OTHER_PAGE = "{model}/{site}/L{layer:2}/page-{page}.html"    # script fills too
MAP_PAGE = "{model}/{site}/L{layer:2}/map.html"               # a layer's map (where the atlas has one) ...
MAP_DATA = "maps/{model}/{site}/L{layer:2}.js"                 # ... and what it draws (the website's own: a script)


def map_path(model: str, site: str, layer: int) -> str:
    """Website-relative path of a layer's map page."""
    return fill(MAP_PAGE, model=model, site=site, layer=layer)


def map_data_path(model: str, site: str, layer: int) -> str:
    """Website-relative path of a layer map's data (a script that hands it to ``AtlasMaps.add``)."""
    return fill(MAP_DATA, model=model, site=site, layer=layer)


def page_path(model: str, site: str, layer: int, page: int = 1) -> str:
    """Website-relative path of a layer page (page 1 holds units 0-255, page 2 256-511, ...)."""
    return fill(FIRST_PAGE if page == 1 else OTHER_PAGE, model=model, site=site, layer=layer, page=page)


def script_layout() -> dict:
    """Everything the pages' script needs to find any unit's pack, page and address from its id alone:
    the templates and sizes of atlas.website.packs and these addresses (base.html hands it over)."""
    return {**layout(), "first_page": FIRST_PAGE, "other_page": OTHER_PAGE, "unit_view": UNIT_VIEW,
            "map_page": MAP_PAGE, "map_data": MAP_DATA, "live_page": LIVE_PAGE,
            "picture_labels": PICTURE_LABELS,
            "label_sources": [[name, SOURCE_TITLES[name], measure] for name, measure in SOURCES.items()]}


def page_of(unit: int) -> int:
    """The layer page that shows ``unit``."""
    return unit // PAGE_UNITS + 1


def unit_address(model: str, site: str, layer: int, unit: int) -> str:
    """Website-relative address of a unit's view: the unit view page with the unit id as its fragment."""
    return f"{UNIT_VIEW}#{unit_id(model, site, layer, unit)}"


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
    file is never seen half-written, so a killed render leaves no truncated page or pack behind."""
    data = data.encode() if isinstance(data, str) else data
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomically(path, data)
    return True
