"""Reading a hosted atlas: ``atlas.open("https://host/path/atlas/")``.

``manifest.json`` is fetched whole (at most ``MANIFEST_CAP`` bytes): it is the root of trust (serve it
over HTTPS), and it is checked field by field (``atlas.manifest.check_manifest``) before anything in it
is used. Data files the reader needs whole (``dataset.h5``, ``related.h5``, a shard's block hashes) are
fetched, checked against the manifest's sha256, and only then written to the local cache. Shards are
never fetched whole: h5py reads them through a file-like object that fetches, with HTTP range requests,
only the 32 KiB blocks it touches, and checks each block against the shard's block hashes
(``blocks/<shard path>.sha256``, itself checked against the manifest) before h5py sees it.

What a server can make the reader do is bounded: every answer is read up to the size the manifest
gives (a fixed cap for the manifest), every request has a deadline for the whole exchange (connect,
headers, body: ``REQUEST_SECONDS``), redirects are followed only to the atlas's own scheme and host
(or to hosts passed in ``allow_hosts``), and every failure is an ``AtlasError``. The cache holds only
names the reader chooses: ``manifest.json``, and content-addressed ``files/<sha256>`` and
``blocks/<sha256>``; nothing from the server picks a path.

The cache lives in ``$VIT_ATLAS_CACHE`` or ``~/.cache/vit-atlas``, one folder per atlas URL. Plain
``urllib`` (proxies from the environment work): any static host that answers range requests (GitHub
Pages, S3, nginx, ``build.py serve``) works, and one that answers them with the whole file is read
correctly too, only slower.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .format import AtlasError, MANIFEST, command, data_path
from .manifest import BLOCK, check_manifest
from .folder import check_owned_folder
from .shard import write_atomically

REQUEST_SECONDS = 120         # the whole of one request: connect, headers and body
MANIFEST_CAP = 64 * 2**20     # the largest manifest.json the reader accepts
_CHUNK = 1 << 16


def is_url(text) -> bool:
    """Whether an atlas location is an http(s) URL rather than a folder."""
    return isinstance(text, str) and text.startswith(("http://", "https://"))


def cache_folder(url: str) -> Path:
    """The local cache of the atlas at ``url``: a real folder with no symbolic link inside (the cache's
    base, the user's choice, may be one)."""
    base = Path(os.environ.get("VIT_ATLAS_CACHE") or Path.home() / ".cache" / "vit-atlas")
    folder = base / hashlib.sha256(url.encode()).hexdigest()[:16]
    check_owned_folder(folder)
    return folder


class _Watchdog:
    """Closes the sockets of one request when its deadline passes, so no server can hold the reader
    longer than the deadline (socket timeouts bound each read, not a server sending a byte a second)."""

    def __init__(self, seconds: float):
        self.sockets: list[socket.socket] = []
        self.expired = False
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True

    def _expire(self) -> None:
        self.expired = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "_Watchdog":
        _WATCHDOG.current = self
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        _WATCHDOG.current = None


_WATCHDOG = threading.local()


def _watched(base):
    """A connection class that hands its socket to the current request's watchdog."""
    class Watched(base):
        def connect(self):
            super().connect()
            dog = getattr(_WATCHDOG, "current", None)
            if dog is not None:
                dog.sockets.append(self.sock)
    return Watched


class _HTTP(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_watched(http.client.HTTPConnection), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_watched(http.client.HTTPSConnection), req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the atlas's own scheme and host, or to an allowed host, over http(s);
    never from https to http."""
    max_redirections = 5

    def __init__(self, origin: urllib.parse.SplitResult, allow_hosts: frozenset[str]):
        super().__init__()
        self.origin, self.allow_hosts = origin, allow_hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        same = (target.scheme, target.netloc) == (self.origin.scheme, self.origin.netloc)
        allowed = target.scheme in ("http", "https") and (same or target.hostname in self.allow_hosts)
        if not allowed or (self.origin.scheme == "https" and target.scheme != "https"):
            raise AtlasError(f"{req.full_url} redirects to {urllib.parse.urlunsplit(target)[:200]}, outside the atlas's "
                             f"host {self.origin.netloc}; refusing it (pass allow_hosts=[...] to atlas.open to trust "
                             "that host)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class RemoteAtlas:
    """Fetches an atlas's files from ``url`` (see the module docstring); counts the bytes it fetched."""

    def __init__(self, url: str, allow_hosts=()):
        self.url = url if url.endswith("/") else url + "/"
        origin = urllib.parse.urlsplit(self.url)
        if origin.scheme not in ("http", "https") or not origin.hostname:
            raise AtlasError(f"{url} is not an http(s) URL of an atlas")
        self.cache = cache_folder(self.url)
        self.opener = urllib.request.build_opener(_HTTP, _HTTPS(), _Redirects(origin, frozenset(allow_hosts)))
        self.fetched = 0
        self.requests = 0

    def get(self, rel: str, start: int | None = None, stop: int | None = None, cap: int | None = None) -> bytes:
        """The bytes of ``rel`` (relative to the atlas URL), or of [start, stop) with a range request;
        an answer longer than ``cap`` bytes (or than the range) is refused without being read whole."""
        where = self.url + rel
        request = urllib.request.Request(self.url + urllib.parse.quote(rel))
        if start is not None:
            request.add_header("Range", f"bytes={start}-{stop - 1}")
            cap = stop
        try:
            with _Watchdog(REQUEST_SECONDS) as dog:
                try:
                    with self.opener.open(request, timeout=REQUEST_SECONDS) as response:
                        ranged = start is not None and response.status == 206
                        if ranged:
                            data = _read_capped(response, stop - start, where)
                            if len(data) != stop - start:
                                raise AtlasError(f"{where}: asked for {stop - start} bytes at {start}, got {len(data)}")
                        elif start is not None:     # a host that answers ranges with the whole file: still correct
                            data = _read_capped(response, stop, where, truncate=True)[start:stop]
                        else:
                            data = _read_capped(response, cap, where)
                    if dog.expired:
                        raise OSError("deadline passed")
                except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
                    if dog.expired:
                        raise AtlasError(f"{where}: the server took more than {REQUEST_SECONDS} s to answer; "
                                         "try again later") from None
                    raise
        except AtlasError:
            raise
        except urllib.error.HTTPError as e:
            raise AtlasError(f"{where}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise AtlasError(f"cannot reach {where} ({e.reason})") from None
        except (http.client.HTTPException, OSError, ValueError) as e:
            raise AtlasError(f"cannot read {where}: the server's answer is not valid HTTP "
                             f"({type(e).__name__}: {str(e)[:120]})") from None
        self.fetched += len(data)
        self.requests += 1
        return data

    def fetch_manifest(self) -> tuple[Path, dict]:
        """Fetch manifest.json into the cache (always fresh), checked field by field; returns the cache
        folder (an atlas root for the reader) and the manifest."""
        data = self.get(MANIFEST, cap=MANIFEST_CAP)
        try:
            manifest = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise AtlasError(f"{self.url}{MANIFEST} is not JSON: {self.url} is not an atlas") from None
        if not isinstance(manifest, dict) or "format_version" not in manifest:
            raise AtlasError(f"{self.url}{MANIFEST} is not an atlas manifest (no format_version)")
        check_manifest(manifest, self.url + MANIFEST)
        write_atomically(self.cache / MANIFEST, data)
        return self.cache, manifest

    def whole(self, rel: str, sha256: str, size: int, kind: str = "data file") -> Path:
        """``rel`` fetched whole and checked against ``sha256`` and ``size`` before it is written to the
        cache, content-addressed (``files/<sha256>``); kept while it matches."""
        data_path(rel, kind, f"{self.url}{MANIFEST}: a {kind}")
        path = self.cache / "files" / sha256
        if path.is_file() and _sha256(path.read_bytes()) == sha256:
            return path
        data = self.get(rel, cap=size)
        if len(data) != size or _sha256(data) != sha256:
            raise AtlasError(f"{self.url}{rel} does not match the manifest's sha256 (changed or tampered with); "
                             "refusing it")
        write_atomically(path, data)
        return path

    def shard(self, entry: dict):
        """An h5py file reading the shard of manifest ``entry`` block by block, each block verified."""
        import h5py
        blocks = entry.get("blocks")
        if not blocks:
            raise AtlasError(f"{self.url}: the manifest has no block hashes for {entry['path']} (an atlas written "
                             f"before format 1.3); run `{command('finalize')}` on it, or download the shard")
        count = -(-entry["bytes"] // blocks["size"])
        hashes = self.whole(blocks["path"], blocks["sha256"], 32 * count, "block hashes").read_bytes()
        return h5py.File(VerifiedRangeFile(self, entry["path"], entry["bytes"], hashes, blocks["size"]), "r")


def _read_capped(response, cap: int | None, where: str, truncate: bool = False) -> bytes:
    """The body of ``response``, refused as soon as it exceeds ``cap`` bytes (None: no cap), or with
    ``truncate`` only its first ``cap`` bytes (the rest is never read)."""
    length = response.headers.get("Content-Length")
    if not truncate and cap is not None and length is not None and length.strip().isdigit() and int(length) > cap:
        raise AtlasError(f"{where}: the server sends {int(length):,} bytes where the manifest allows {cap:,}; "
                         "refusing it")
    buf = io.BytesIO()
    while chunk := response.read(_CHUNK if cap is None else min(_CHUNK, cap + 1 - buf.tell())):
        buf.write(chunk)
        if cap is not None and buf.tell() >= cap + (0 if truncate else 1):
            if truncate:
                break
            raise AtlasError(f"{where}: the server sends more than the {cap:,} bytes the manifest allows; refusing it")
    if not truncate and length is not None and length.strip().isdigit() and buf.tell() != int(length):
        raise http.client.IncompleteRead(buf.getvalue(), int(length) - buf.tell())
    return buf.getvalue()[:cap] if truncate else buf.getvalue()


class VerifiedRangeFile(io.RawIOBase):
    """A read-only file over HTTP range requests, in blocks each checked against its sha256."""

    def __init__(self, remote: RemoteAtlas, rel: str, size: int, hashes: bytes, block: int = BLOCK):
        super().__init__()
        if len(hashes) != 32 * -(-size // block):
            raise AtlasError(f"the block hashes of {rel} do not fit its size; the atlas's manifest is inconsistent")
        self.remote, self.rel, self.size, self.hashes, self.block = remote, rel, size, hashes, block
        self.pos = 0
        self.blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, buffer) -> int:
        end = min(self.size, self.pos + len(buffer))
        if self.pos >= end:
            return 0
        first, last = self.pos // self.block, (end - 1) // self.block
        self._load(first, last)
        data = b"".join(self.blocks[i] for i in range(first, last + 1))
        offset = self.pos - first * self.block
        n = end - self.pos
        buffer[:n] = data[offset:offset + n]
        self.pos = end
        return n

    def _load(self, first: int, last: int) -> None:
        """Make blocks first..last available: from memory, the disk cache, or one request per missing run."""
        missing = [i for i in range(first, last + 1) if i not in self.blocks and not self._from_disk(i)]
        while missing:
            run = [missing[0]]
            while len(run) < len(missing) and missing[len(run)] == run[-1] + 1:
                run.append(missing[len(run)])
            start, stop = run[0] * self.block, min(self.size, (run[-1] + 1) * self.block)
            data = self.remote.get(self.rel, start, stop)
            for k, i in enumerate(run):
                piece = data[k * self.block:(k + 1) * self.block]
                if hashlib.sha256(piece).digest() != self._hash(i):
                    raise AtlasError(f"{self.remote.url}{self.rel}: block {i} does not match the manifest's block "
                                     "hashes (the shard was changed or tampered with); refusing it")
                self.blocks[i] = piece
                write_atomically(self._cached(i), piece)
            missing = missing[len(run):]

    def _hash(self, i: int) -> bytes:
        return self.hashes[32 * i:32 * (i + 1)]

    def _cached(self, i: int) -> Path:
        return self.remote.cache / "blocks" / self._hash(i).hex()

    def _from_disk(self, i: int) -> bool:
        path = self._cached(i)
        if path.is_file():
            piece = path.read_bytes()
            if hashlib.sha256(piece).digest() == self._hash(i):
                self.blocks[i] = piece
                return True
        return False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
