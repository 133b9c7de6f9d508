"""`build.py serve DIR`: preview an atlas's website on this machine, and nothing else of the machine.

What it answers: the rendered website (``DIR/site/``) and the data files the website links to and the
manifest publishes (``manifest.json``, ``CITATION.cff``, the shards and data files the manifest
lists). Everything else is 404: the build's private files (``.locks``, ``.cache``, ``.probe``,
``logs``, ``spec.toml``, the quarantine), directory listings, and any path whose real location
(symbolic links resolved) is not one of those files. Requests must name this machine
(``Host: 127.0.0.1`` or ``localhost``), which defeats DNS rebinding; every answer carries the website's
Content-Security-Policy, ``nosniff``, ``no-referrer`` and ``frame-ancestors 'none'``; the live view (``live.html``) and
its runtime also carry COOP and COEP, so the page is cross-origin isolated and runs threads.
"""
from __future__ import annotations

import errno
import http.server
import io
import posixpath
import re
import urllib.parse
from pathlib import Path

from .format import AtlasError, CITATION, MANIFEST, WEBSITE, command
from .manifest import read_manifest
from .website.live import RUNTIME
from .website.urls import LIVE_PAGE, content_security_policy

CSP = content_security_policy(header=True)
LIVE_CSP = content_security_policy(header=True, wasm=True)
# the live view and its runtime: WebAssembly may compile there, and the page is cross-origin isolated, so
# onnxruntime-web runs threads (docs/HOSTING.md "The live view")
LIVE_PATHS = re.compile(rf"^/{WEBSITE}/(?:{re.escape(LIVE_PAGE)}|{RUNTIME}[^/]+)$")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
# A unit page of a website rendered before format 1.4: sent on to the unit view (unit.html#<id>).
OLD_UNIT_PAGE = re.compile(rf"^/{WEBSITE}/(?P<id>[A-Za-z0-9][A-Za-z0-9_.\-]*/[a-z][a-z0-9_\-]*/L\d{{2,}}/U\d{{4,}})\.html$")


def published_files(root: Path) -> set[str]:
    """The atlas-relative paths outside ``site/`` that serve answers: the manifest, the citation file,
    and every shard and data file the manifest lists."""
    files = {MANIFEST, CITATION}
    manifest = read_manifest(root) or {}
    for entry in manifest.get("shards", []) + manifest.get("files", []):
        files.add(str(entry["path"]))
        if entry.get("blocks"):
            files.add(str(entry["blocks"]["path"]))
    return files


def resolve_request(root: Path, url_path: str, published: set[str]) -> Path | None:
    """The file a URL path names, or None when serve must not answer it (see the module docstring)."""
    path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(url_path).path))
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." or "\x00" in p for p in parts):
        return None
    rel = "/".join(parts)
    real_root = root.resolve()
    target = (root / rel).resolve()
    website = (root / WEBSITE).resolve()
    if target.is_dir() and (target == website or website in target.parents):
        target = target / "index.html"
    if not target.is_file():
        return None
    if website in target.parents:
        return target
    if real_root in target.parents and target.relative_to(real_root).as_posix() in published and rel in published:
        return target
    return None


def _byte_range(header: str | None, size: int):
    """(start, stop) of a single-range ``Range: bytes=a-b`` header, None for none (or one we answer with
    the whole file), "unsatisfiable" for a range outside the file."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":                                   # the last N bytes
            n = int(last)
            return (max(0, size - n), size) if n > 0 else "unsatisfiable"
        start = int(first)
        stop = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    return (start, stop) if start < size and start < stop else "unsatisfiable"


class AtlasRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Serves one atlas folder by ``resolve_request``; GET and HEAD only."""

    root: Path
    published: set[str]

    def send_head(self):
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in LOCAL_HOSTS:
            self.send_error(421, "this preview server only answers requests for 127.0.0.1 or localhost")
            return None
        path = urllib.parse.urlsplit(self.path).path
        old = OLD_UNIT_PAGE.match(path)
        if path in ("", "/") or (old and resolve_request(self.root, path, self.published) is None):
            self.send_response(302)
            self.send_header("Location", f"/{WEBSITE}/index.html" if not old else f"/{WEBSITE}/unit.html#{old['id']}")
            self.end_headers()
            return None
        target = resolve_request(self.root, self.path, self.published)
        if target is None:
            self.send_error(404, "not part of this atlas's website")
            return None
        try:
            f = open(target, "rb")
        except OSError:
            self.send_error(404, "not part of this atlas's website")
            return None
        size = target.stat().st_size
        wanted = _byte_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        if wanted:
            start, stop = wanted
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            size = stop - start
            f = io.BytesIO(f.read(size))
        else:
            self.send_response(200)
        self.send_header("Content-Type", self.guess_type(str(target)))
        self.send_header("Content-Length", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return f

    def end_headers(self):
        live = LIVE_PATHS.match(urllib.parse.urlsplit(self.path).path)
        self.send_header("Content-Security-Policy", LIVE_CSP if live else CSP)
        if live:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def list_directory(self, path):  # never: send_head answers folders with their index.html or 404
        self.send_error(404, "not part of this atlas's website")
        return None

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def make_server(root: str | Path, port: int) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1:``port`` (0: any free port) for the atlas at ``root``; AtlasError when the
    atlas has no website or the port cannot be had."""
    root = Path(root)
    if not (root / WEBSITE / "index.html").is_file():
        raise AtlasError(f"{root} has no rendered website: run `{command(f'render {root}')}` first")
    if not 0 <= port <= 65535:
        raise AtlasError(f"--port must be between 0 and 65535 (0 picks a free one), not {port}")
    handler = type("Handler", (AtlasRequestHandler,), {"root": root, "published": published_files(root)})
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise AtlasError(f"port {port} is already in use; pass another --port, or --port 0 for a free one") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise AtlasError(f"port {port} needs privileges this user lacks; use a port above 1023") from None
        raise AtlasError(f"cannot listen on 127.0.0.1:{port} ({e.strerror})") from None
