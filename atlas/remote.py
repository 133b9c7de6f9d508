"""Reading a hosted atlas: ``atlas.open("https://host/path/atlas/")``.

``manifest.json`` is fetched whole: it is the root of trust (serve it over HTTPS). Data files the reader
needs whole (``dataset.h5``, ``related.h5``, a shard's block hashes) are fetched into a local cache and
checked against the manifest's sha256. Shards are never fetched whole: h5py reads them through a
file-like object that fetches, with HTTP range requests, only the 32 KiB blocks it touches, and checks
each block against the shard's block hashes (``blocks/<shard path>.sha256``, itself checked against the
manifest). A changed byte in any block the reader uses is refused with an error naming the shard.

The cache lives in ``$VIT_ATLAS_CACHE`` or ``~/.cache/vit-atlas``, one folder per atlas URL: whole files
under their atlas paths, verified blocks content-addressed under ``blocks/``. Plain ``urllib``: any
static host that answers range requests (GitHub Pages, S3, nginx, ``build.py serve``) works.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .format import MANIFEST, AtlasError
from .manifest import BLOCK
from .shard import write_atomically

TIMEOUT = 60


def is_url(text) -> bool:
    """Whether an atlas location is an http(s) URL rather than a folder."""
    return isinstance(text, str) and text.startswith(("http://", "https://"))


def cache_folder(url: str) -> Path:
    """The local cache of the atlas at ``url``."""
    base = Path(os.environ.get("VIT_ATLAS_CACHE") or Path.home() / ".cache" / "vit-atlas")
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


class RemoteAtlas:
    """Fetches an atlas's files from ``url`` (see the module docstring); counts the bytes it fetched."""

    def __init__(self, url: str):
        self.url = url if url.endswith("/") else url + "/"
        self.cache = cache_folder(self.url)
        self.fetched = 0
        self.requests = 0

    def get(self, rel: str, start: int | None = None, stop: int | None = None) -> bytes:
        """The bytes of ``rel`` (relative to the atlas URL), or of [start, stop) with a range request."""
        request = urllib.request.Request(self.url + urllib.parse.quote(rel))
        if start is not None:
            request.add_header("Range", f"bytes={start}-{stop - 1}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                data = response.read()
                if start is not None and response.status != 206:
                    data = data[start:stop]          # a host that ignores ranges: still correct, just slower
        except urllib.error.HTTPError as e:
            raise AtlasError(f"{self.url}{rel}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise AtlasError(f"cannot reach {self.url}{rel} ({getattr(e, 'reason', e)})") from None
        self.fetched += len(data)
        self.requests += 1
        return data

    def fetch_manifest(self) -> Path:
        """Fetch manifest.json into the cache (always fresh); returns the cache folder, an atlas root
        for the reader."""
        data = self.get(MANIFEST)
        try:
            json.loads(data)
        except ValueError:
            raise AtlasError(f"{self.url}{MANIFEST} is not JSON: {self.url} is not an atlas") from None
        write_atomically(self.cache / MANIFEST, data)
        return self.cache

    def whole(self, rel: str, sha256: str) -> Path:
        """``rel`` fetched whole into the cache and checked against ``sha256`` (kept while it matches)."""
        path = self.cache / rel
        if path.is_file() and _sha256(path.read_bytes()) == sha256:
            return path
        data = self.get(rel)
        if _sha256(data) != sha256:
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
                             "before format 1.3); run `build.py finalize` on it, or download the shard")
        hashes = self.whole(blocks["path"], blocks["sha256"]).read_bytes()
        return h5py.File(VerifiedRangeFile(self, entry["path"], int(entry["bytes"]), hashes, int(blocks["size"])), "r")


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
