"""Locks on an atlas folder: who finalizes a build, writes the manifest, adds a part to a shard or
computes a shard. They are kept in ``<atlas>/.locks/`` (docs/FORMAT.md).

A lock named ``N`` is held by whoever published the newest *generation file* ``N.<g>`` and is alive:

- Publishing is atomic: the holder writes its record (host, pid, token, heartbeat) to a private file,
  locks it with ``flock`` where the filesystem supports it, and hard-links it to ``N.<g>``, which fails
  if that generation exists. Two processes can never publish the same generation, so exactly one wins.
- Alive means the generation file is ``flock``-ed (the kernel releases that when the holder dies, on any
  host of a filesystem with network locks), or, where ``flock`` is not available, that its heartbeat —
  refreshed by the holder every ``heartbeat`` seconds — is younger than ``expiry`` seconds (hosts'
  clocks must agree to well within ``expiry``).
- A lock whose newest generation is dead is taken over by publishing the next generation. A holder
  releases only its own generation file. A heartbeat holder whose file was taken over (it stalled past
  the expiry) sees ``lost`` become true and must stop.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .format import LOCKS, AtlasError


try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(root: str | Path, name: str) -> Path:
    """The base path of the lock ``name`` (may contain '/') of the atlas at ``root``."""
    return Path(root) / LOCKS / name


def _try_flock(fd: int) -> bool | None:
    """Take an exclusive flock without waiting: True, False (someone holds it), None (unsupported)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in _NO_FLOCK:
            return None
        raise


class Lock:
    """One named lock of an atlas. ``acquire()`` does not wait; ``wait()`` does; use as a context manager
    after ``wait()`` or check ``acquire()``'s result."""

    def __init__(self, base: str | Path, heartbeat: float = 30.0, expiry: float = 300.0,
                 use_flock: bool | None = None):
        self.base = Path(base)
        self.heartbeat, self.expiry = heartbeat, expiry
        self.use_flock = use_flock          # None: flock where the filesystem has it
        self.token = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost = False
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- inspection ------------------------------------------------------------------------------
    def _generations(self) -> list[int]:
        prefix = self.base.name + "."
        found = []
        if self.base.parent.is_dir():
            for p in self.base.parent.iterdir():
                tail = p.name[len(prefix):] if p.name.startswith(prefix) else ""
                if tail.isdigit():
                    found.append(int(tail))
        return sorted(found)

    def _file(self, generation: int) -> Path:
        return self.base.with_name(f"{self.base.name}.{generation}")

    def holder(self) -> dict | None:
        """The record of the newest generation if it is alive, else None."""
        gens = self._generations()
        if not gens:
            return None
        path = self._file(gens[-1])
        return self._alive(path)

    def _alive(self, path: Path) -> dict | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            record = _read_record(fd)
            if self.use_flock is not False:
                got = _try_flock(fd)
                if got is not None:      # the kernel knows: locked means alive
                    return None if got else record
            # heartbeat: the record's time, or the file's mtime (a record read while it is rewritten)
            beat = max(record.get("heartbeat", 0), os.fstat(fd).st_mtime)
            return record if time.time() - beat < self.expiry else None
        finally:
            os.close(fd)                 # also drops a flock we took while checking

    # -- acquire / release -----------------------------------------------------------------------
    def acquire(self) -> bool:
        """Take the lock if it is free or its holder is dead; False when a running process holds it."""
        self.base.parent.mkdir(parents=True, exist_ok=True)
        gens = self._generations()
        if gens and self._alive(self._file(gens[-1])) is not None:
            return False
        target = gens[-1] + 1 if gens else 0
        private = self.base.with_name(f".{self.base.name}.{self.token}")
        fd = os.open(private, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        published = False
        try:
            flocked = _try_flock(fd) if self.use_flock is not False else None
            if self.use_flock is None:
                self.use_flock = flocked is True
            _write_record(fd, self._record())
            try:
                os.link(private, self._file(target))   # publish: fails if that generation exists
                published = True
            except FileExistsError:
                return False
        finally:
            private.unlink(missing_ok=True)
            if not published:
                os.close(fd)
        self._fd, self.generation, self.lost = fd, target, False
        for old in gens:                 # the dead generations this one replaces
            self._file(old).unlink(missing_ok=True)
        if not self.use_flock:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return True

    def wait(self, timeout: float, what: str = "") -> "Lock":
        """Acquire, waiting up to ``timeout`` seconds; raises AtlasError naming the holder otherwise."""
        deadline = time.time() + timeout
        pause = 0.02
        while not self.acquire():
            if time.time() > deadline:
                holder = self.holder() or {}
                raise AtlasError(f"waited {timeout:.0f} s for {what or self.base.name}, held by "
                                 f"{holder.get('host', '?')} pid {holder.get('pid', '?')}; try again when it is done")
            time.sleep(pause)
            pause = min(0.5, pause * 2)
        return self

    def release(self) -> None:
        """Give the lock up: remove this holder's own generation file (never another's)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        path = self._file(self.generation)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                mine = _read_record(fd).get("token") == self.token
            finally:
                os.close(fd)
        except FileNotFoundError:
            mine = False
        if mine:
            path.unlink(missing_ok=True)
        os.close(self._fd)               # drops the flock
        self._fd, self.generation = None, None

    def __enter__(self) -> "Lock":
        if self._fd is None and not self.acquire():
            holder = self.holder() or {}
            raise AtlasError(f"{self.base.name} is held by {holder.get('host', '?')} pid {holder.get('pid', '?')}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- heartbeat -------------------------------------------------------------------------------
    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "heartbeat": time.time()}

    def _beat(self) -> None:
        path = self._file(self.generation)
        while not self._stop.wait(self.heartbeat):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                self.lost = True
                return
            try:
                if _read_record(fd).get("token") != self.token:
                    self.lost = True
                    return
                _write_record(fd, self._record())
            finally:
                os.close(fd)


def _read_record(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        record = json.loads(data or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(fd: int, record: dict) -> None:
    data = json.dumps(record).encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data.ljust(256))        # fixed length: a reader never sees a shorter, torn record
    os.fsync(fd)


def remove_dead_locks(root: str | Path) -> int:
    """Delete the generation files of dead holders under ``<root>/.locks`` (left by killed processes);
    returns how many. A running holder's file is never touched."""
    folder = Path(root) / LOCKS
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob("*"):
        stem, _, generation = path.name.rpartition(".")
        if path.is_file() and generation.isdigit() and not stem.startswith("."):
            if Lock(path.with_name(stem))._alive(path) is None:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
