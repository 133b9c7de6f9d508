"""Hostile servers and hostile atlases (issue 19): what a host, a downloaded atlas or a damaged file can do
to its reader. Every case runs the real command or reader; servers run on 127.0.0.1 and stop themselves.

The successor of test_bad_inputs.py for data that comes from outside: a manifest, a shard, a server.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import atlas
import atlas.remote
from atlas.format import AtlasError
from atlas.manifest import write_manifest
from tests.conftest import ROOT
from tests.helpers import assert_refused, digests, error_lines, run_cli


# -- a programmable server -------------------------------------------------------------------------

class HostileServer:
    """Serves a folder on 127.0.0.1 (ranges honoured), except for the paths ``routes`` answers: each
    route is ``handler(request) -> None`` writing whatever it likes to ``request.wfile``. Counts the
    bytes it sent; stops itself after ``lifetime`` seconds even if a test forgets to."""

    def __init__(self, folder: Path, routes: dict | None = None, lifetime: float = 120):
        self.folder, self.routes, self.sent = Path(folder), routes or {}, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0].lstrip("/")
                if path in server.routes:
                    return server.routes[path](self)
                target = server.folder / path
                if not target.is_file():
                    self.send_error(404)
                    return
                data = target.read_bytes()
                wanted = self.headers.get("Range")
                if wanted and wanted.startswith("bytes="):
                    a, _, b = wanted[6:].partition("-")
                    start, stop = int(a), min(len(data), int(b) + 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
                    data = data[start:stop]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                server.sent += len(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True
        self.timer.start()

    def stop(self) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_atlas(small_atlas, tmp_path, monkeypatch):
    """A copy of the small atlas, a fresh cache, a fake home (nothing outside tmp_path can be written),
    and a maker of hostile servers over the copy."""
    folder = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], folder)
    monkeypatch.setenv("VIT_ATLAS_CACHE", str(tmp_path / "home" / ".cache" / "vit-atlas"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    servers = []

    def serve(routes=None) -> HostileServer:
        servers.append(HostileServer(folder, routes))
        return servers[-1]
    yield folder, serve
    for s in servers:
        s.stop()


def _edit_manifest(folder: Path, edit) -> bytes:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    data = json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(data)
    return data


def _first_unit(folder: Path):
    entry = json.loads((folder / "manifest.json").read_text())["shards"][0]
    return entry["model"], entry["layer"], entry["unit_start"], entry["site"]


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str):
    """A tmpfs of ``size`` (e.g. "96k"), mounted for the block and unmounted after it (root only)."""
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- 1. a hosted atlas must not write the reader's files ---------------------------------------------

@pytest.mark.parametrize("target", ["relative", "absolute"])
def test_a_manifest_cannot_make_the_reader_write_outside_its_cache(served_atlas, tmp_path, target):
    folder, serve = served_atlas
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("mine\n")
    payload = b"overwritten\n"
    digest = hashlib.sha256(payload).hexdigest()
    name = "../../../.bashrc" if target == "relative" else str(victim)
    (folder / "payload").write_bytes(payload)

    def point_blocks(m):
        m["shards"][0]["blocks"] = {"path": name, "size": 32768, "sha256": digest}
    _edit_manifest(folder, point_blocks)
    server = serve({name.lstrip("/"): lambda h: _send(h, payload), "blocks/" + name: lambda h: _send(h, payload)})
    with pytest.raises(AtlasError, match="block hashes"):
        model, layer, unit, site = _first_unit(folder)
        atlas.open(server.url).unit(model, layer, unit, site=site).image
    assert victim.read_text() == "mine\n"
    written = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and p != victim]
    assert all(".cache/vit-atlas" in p.as_posix() for p in written)


def _send(handler, body: bytes, status: int = 200, headers: dict | None = None) -> None:
    handler.send_response(status)
    for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def test_a_remote_file_is_verified_before_it_is_written(served_atlas):
    folder, serve = served_atlas
    server = serve({"dataset.h5": lambda h: _send(h, b"x" * (folder / "dataset.h5").stat().st_size)})
    remote = atlas.open(server.url)
    with pytest.raises(AtlasError, match="does not match the manifest"):
        remote.dataset
    cache = remote.remote.cache
    assert not list((cache / "files").glob("*")) if (cache / "files").exists() else True
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json"]


# -- 7. bounded sizes and time -------------------------------------------------------------------

def test_an_answer_larger_than_the_manifest_says_is_refused_unread(served_atlas):
    folder, serve = served_atlas
    sent = {"bytes": 0}

    def huge(h):     # a 10^12-byte claim, then bytes until the reader hangs up
        h.send_response(200)
        h.send_header("Content-Length", str(10**12))
        h.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(10_000):
                h.wfile.write(b"\0" * 65536)
                sent["bytes"] += 65536
    server = serve({"related.h5": huge})
    remote = atlas.open(server.url)
    with pytest.raises(AtlasError, match="manifest allows"):
        remote.unit(*_first_unit(folder)[:3]).related
    assert sent["bytes"] < 50 * 2**20      # the reader hung up long before 600 MB


def test_a_stream_without_length_is_cut_at_the_manifests_size(served_atlas):
    folder, serve = served_atlas

    def endless(h):
        h.send_response(200)
        h.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(10_000):
                h.wfile.write(b"\0" * 65536)
        h.close_connection = True
    server = serve({"dataset.h5": endless})
    with pytest.raises(AtlasError, match="more than the"):
        atlas.open(server.url).dataset


def test_a_server_sending_a_byte_at_a_time_cannot_hold_the_reader(served_atlas, monkeypatch):
    folder, serve = served_atlas
    monkeypatch.setattr(atlas.remote, "REQUEST_SECONDS", 1.5)

    def slow(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(1000):
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.2)          # each read returns within any socket timeout
    server = serve({"manifest.json": slow})
    t0 = time.time()
    with pytest.raises(AtlasError, match="took more than"):
        atlas.open(server.url)
    assert time.time() - t0 < 5


# -- 8. every failure of a server is an AtlasError -------------------------------------------------

def _raw(reply: bytes):
    def handler(h):
        h.wfile.write(reply)
        h.close_connection = True
    return handler


@pytest.mark.parametrize("reply, needle", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not valid HTTP"),                               # BadStatusLine
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{\"format", "not valid HTTP"),  # IncompleteRead
])
def test_a_reply_that_is_not_http_is_an_atlas_error(served_atlas, reply, needle):
    _, serve = served_atlas
    server = serve({"manifest.json": _raw(reply)})
    with pytest.raises(AtlasError, match=needle):
        atlas.open(server.url)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["shards"][0].update(bytes="abc"), "shards[0].bytes"),
    (lambda m: m["shards"][0]["blocks"].update(size=0), "blocks.size"),
    (lambda m: m.update(shards={"a": 1}), "shards is"),
    (lambda m: m["shards"][0].update(layer="three"), "shards[0].layer"),
    (lambda m: m["files"][0].update(sha256=None), "files[0].sha256"),
    (lambda m: m.update(models=[1, 2]), "models is"),
])
def test_a_manifest_with_fields_of_the_wrong_type_is_refused(served_atlas, edit, needle):
    folder, serve = served_atlas
    _edit_manifest(folder, edit)
    server = serve()
    with pytest.raises(AtlasError) as e:
        atlas.open(server.url)
    assert needle in str(e.value)
    with pytest.raises(AtlasError) as e:                  # and the same manifest on disk
        atlas.open(folder)
    assert needle in str(e.value)


# -- 14. redirects stay on the atlas's host ----------------------------------------------------------

@pytest.mark.parametrize("where", ["other host", "ftp", "file"])
def test_redirects_leave_only_to_allowed_hosts(served_atlas, where):
    folder, serve = served_atlas
    other = serve()
    target = {"other host": other.url.replace("127.0.0.1", "localhost") + "manifest.json",
              "ftp": "ftp://127.0.0.1/manifest.json", "file": "file:///etc/passwd"}[where]
    server = serve({"manifest.json": lambda h: _send(h, b"", 302, {"Location": target})})
    with pytest.raises(AtlasError, match="(?i)redirect"):
        atlas.open(server.url)
    if where == "other host":                              # an allowed host is followed
        a = atlas.open(server.url, allow_hosts=["localhost"])
        assert a.models


def test_a_redirect_on_the_same_host_is_followed(served_atlas):
    folder, serve = served_atlas
    server = serve({"moved/manifest.json": lambda h: _send(h, b"", 301, {"Location": "/manifest.json"})})
    # the reader asks for moved/manifest.json, the server points it to its own /manifest.json
    remote = atlas.remote.RemoteAtlas(server.url + "moved/")
    assert json.loads(remote.get("manifest.json"))["format_version"]


# -- 2, 12. names and paths in a local atlas's manifest never steer a write (or a read) ------------

@pytest.fixture
def hostile(small_atlas, tmp_path):
    """A copy of the small atlas in tmp_path/atlas; nothing outside tmp_path may change."""
    folder = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], folder)
    return folder


def _rename_model(folder: Path, name: str) -> None:
    """Rewrite the manifest (and every shard's attribute) so the model is called ``name``."""
    def edit(m):
        for e in m["shards"]:
            old = e["model"]
            e["model"] = name
            e["path"] = e["path"].replace(f"shards/{old}/", f"shards/{name}/")
        m["models"] = {name: v for v in m["models"].values()}
    _edit_manifest(folder, edit)


def _outside(tmp_path: Path, folder: Path) -> set[str]:
    return {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
            if p.is_file() and folder not in p.parents and "export" not in p.as_posix()}


@pytest.mark.parametrize("name", ["../../escaped", "/ABSOLUTE"])
def test_a_model_name_cannot_steer_render_or_export_out_of_their_folders(hostile, tmp_path, name):
    name = str(tmp_path / "www") if name == "/ABSOLUTE" else name
    _rename_model(hostile, name)
    before = _outside(tmp_path, hostile)
    assert_refused(run_cli("render", str(hostile)), "not a shard path")
    assert_refused(run_cli("export", str(hostile), "--out", str(tmp_path / "export")), "not a shard path")
    assert_refused(run_cli("verify", str(hostile)), "not a shard path")
    assert _outside(tmp_path, hostile) == before
    assert not (tmp_path / "www").exists() and not (tmp_path / "escaped").exists()


def test_shard_attributes_that_do_not_name_their_path_are_refused(hostile, tmp_path):
    (hostile / "manifest.json").unlink()        # no manifest: the reader reads the shards' own attributes
    shard = sorted((hostile / "shards").rglob("*.h5"))[0]
    with h5py.File(shard, "r+") as f:
        f.attrs["model"] = "../../escaped"
    rc, out, err = run_cli("render", str(hostile))
    assert rc == 0 and "Traceback" not in out + err and "do not name its own path" in out
    assert not (tmp_path / "escaped").exists() and not (hostile.parent / "escaped").exists()


@pytest.mark.parametrize("path", ["/etc/hostname", "../../../etc/hostname", "shards/../../x.h5"])
def test_manifest_entries_outside_the_atlas_are_refused(hostile, path):
    def edit(m):
        m["shards"][0]["path"] = path
    _edit_manifest(hostile, edit)
    for command in (["verify", str(hostile)], ["render", str(hostile)]):
        assert_refused(run_cli(*command), "not a shard path")
    website = hostile / "site"
    assert not any("hostname" in p.name for p in website.rglob("*"))


# -- 3, 15, 13. export: never deletes the user's files, never into the atlas, sane sizes --------------

def test_export_never_takes_over_a_folder_that_is_not_an_export(hostile, tmp_path):
    project = tmp_path / "project"
    (project / "units").mkdir(parents=True)
    (project / "units" / "thesis.tex").write_text("mine")
    (project / "README.md").write_text("# my project")
    before = digests(project)
    assert_refused(run_cli("export", str(hostile), "--out", str(project)), "not an export")
    assert digests(project) == before


@pytest.mark.parametrize("inside", ["newdir", "shards/new", "."])
def test_export_into_the_atlas_is_refused(hostile, inside):
    before = digests(hostile)
    assert_refused(run_cli("export", str(hostile), "--out", str(hostile / inside)), "atlas")
    assert digests(hostile) == before and not (hostile / "newdir").exists()


@pytest.mark.parametrize("size", ["nan", "inf", "-1", "0"])
def test_export_max_file_mb_must_be_a_positive_number(hostile, tmp_path, size):
    assert_refused(run_cli("export", str(hostile), "--out", str(tmp_path / "e"), "--max-file-mb", size), "max-file-mb")


# -- 6. export is atomic and resumable --------------------------------------------------------------

def _tables(folder: Path) -> dict[str, str]:
    return {k: v for k, v in digests(folder).items() if not k.startswith(".")}


def _export_killed_after(atlas_dir: Path, out: Path, files: int) -> int:
    """Run `build.py export` in a process that dies (os._exit, no cleanup) right after its ``files``-th
    Parquet file is written; returns its exit code."""
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); import atlas.export as e, build\n"
            f"orig, n = e._ParquetFiles._close_file, [0]\n"
            f"def close(self):\n    orig(self); n[0] += 1\n    if n[0] >= {files}: os._exit(137)\n"
            f"e._ParquetFiles._close_file = close\n"
            f"sys.exit(build.main(['export', {str(atlas_dir)!r}, '--out', {str(out)!r}]))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300).returncode


@pytest.mark.slow
def test_a_killed_first_export_is_completed_by_the_same_command(hostile, tmp_path):
    out = tmp_path / "export"
    assert _export_killed_after(hostile, out, 1) == 137
    assert (out / ".export-staging").exists() and not (out / "README.md").exists()
    assert run_cli("export", str(hostile), "--out", str(out))[0] == 0
    reference = tmp_path / "reference"
    assert run_cli("export", str(hostile), "--out", str(reference))[0] == 0
    assert _tables(out) == _tables(reference) and not (out / ".export-staging").exists()


@pytest.mark.slow
def test_a_killed_re_export_leaves_the_previous_export_intact(hostile, tmp_path):
    out = tmp_path / "export"
    assert run_cli("export", str(hostile), "--out", str(out))[0] == 0
    before = _tables(out)
    assert _export_killed_after(hostile, out, 1) == 137
    assert _tables(out) == before                          # the old card and every old file, untouched
    assert run_cli("export", str(hostile), "--out", str(out))[0] == 0
    assert _tables(out) == before


def test_a_kill_during_the_swap_is_finished_by_the_next_export(hostile, tmp_path):
    from atlas import export as ex
    out = tmp_path / "export"
    assert run_cli("export", str(hostile), "--out", str(out))[0] == 0
    reference = _tables(out)
    staged = out / ex.STAGING
    shutil.copytree(out / "units", staged / "units")    # a complete staged export, half moved in:
    shutil.copytree(out / "dataset", staged / "dataset")
    shutil.copy(out / "README.md", staged / "README.md")
    (staged / ex.COMPLETE).write_text("")
    (out / ex.PREVIOUS).mkdir()
    os.replace(out / "units", out / ex.PREVIOUS / "units")
    os.replace(staged / "units", out / "units")
    ex._recover(out)
    assert _tables(out) == reference and not staged.exists() and not (out / ex.PREVIOUS).exists()


def test_export_on_a_full_disk_says_so_and_frees_what_it_wrote(hostile, tmp_path):
    with small_disk(tmp_path, "160k") as disk:
        out = disk / "export"
        assert_refused(run_cli("export", str(hostile), "--out", str(out)), "no space left")
        assert sorted(p.name for p in out.iterdir()) == [".vit-atlas-export"]     # nothing partial left
        assert shutil.disk_usage(disk).used < 64 * 1024


# -- 4. a killed probe completes its related units on the next run --------------------------------

def test_a_probe_killed_before_related_h5_completes_it_on_rerun(small_atlas, tmp_path, monkeypatch):
    import builder.probe
    from tests.conftest import TINY_MODEL
    out = tmp_path / "atlas"
    images = next(Path(small_atlas[0]).parent.glob("imgs"))
    labels = next(Path(small_atlas[0]).parent.glob("labels.csv"))
    args = ["probe", *TINY_MODEL, "--images", str(images), "--labels", str(labels), "--layers", "0-1", "--k", "3",
            "--workers", "0", "--out", str(out)]

    def killed(*a, **k):
        raise SystemExit(137)                              # the process dies here: nothing after it runs
    monkeypatch.setattr(builder.probe, "complete_related", killed)
    assert run_cli(*args)[0] == 137
    assert (out / "scores").is_dir() and not (out / "related.h5").exists()
    monkeypatch.undo()
    rc, stdout, err = run_cli(*args)
    assert rc == 0, err
    assert (out / "related.h5").exists()
    a = atlas.open(out)
    assert a.unit("vit_tiny_patch16_224", 0, 3).related
    assert run_cli("verify", str(out))[0] == 0


def test_verify_names_related_h5_missing_or_stale(hostile):
    (hostile / "related.h5").unlink()
    rc, out, _ = run_cli("verify", str(hostile))
    assert rc == 2 and "related.h5: missing although scores/" in out


# -- 5, 9. damaged but openable shards: verify names them, render and export leave them out --------

def _first_shard(folder: Path, part: str = "probe") -> Path:
    for path in sorted((folder / "shards").rglob("*.h5")):
        with h5py.File(path) as f:
            if (part == "probe" and "topk/index" in f) or f"{part}/image" in f:
                return path
    raise AssertionError(part)


def _damage(folder: Path, how: str) -> str:
    """Damage one shard (or data file) of the atlas in place as ``how`` says; the manifest is rewritten so
    that its hashes match (the damage is in the data, not a changed byte the hashes catch). Returns what
    verify should say."""
    shard = _first_shard(folder, "fourier" if how.startswith("fourier") else "probe")
    with h5py.File(shard, "r+") as f:
        if how == "image shape":
            data = f["viz/image"][()]
            del f["viz/image"]
            f["viz/image"] = data[:, :-1]
            expect = "viz/image has shape"
        elif how == "flags shape":
            data = f["flags/extent"][()]
            del f["flags/extent"]
            f["flags/extent"] = np.concatenate([data, data])
            expect = "flags/extent has shape"
        elif how == "thresholds not json":
            f["probe"].attrs["flag_thresholds"] = "{not json"
            expect = "flag_thresholds"
        elif how == "topk index 1e7":
            index = f["topk/index"][()]
            index[0, 0] = 10**7
            f["topk/index"][...] = index
            expect = "outside dataset.h5"
        elif how == "fourier missing":
            del f["fourier/map"]
            expect = "part fourier lacks fourier/map"
    write_manifest(folder)
    return expect


@pytest.mark.parametrize("how", ["image shape", "flags shape", "thresholds not json", "topk index 1e7",
                                 "fourier missing"])
def test_verify_render_and_export_over_damaged_shards(hostile, tmp_path, how):
    expect = _damage(hostile, how)
    rc, out, err = run_cli("verify", str(hostile))
    assert rc == 2 and expect in out and "Traceback" not in out + err, out
    for command in (["render", str(hostile)], ["export", str(hostile), "--out", str(tmp_path / "export")]):
        rc, out, err = run_cli(*command)
        assert "Traceback" not in out + err, err
        assert rc == 0 or (rc == 2 and len(error_lines(err)) == 1), err


@pytest.mark.parametrize("rename", [False, True])
def test_a_manifest_claiming_a_huge_unit_range_is_refused(hostile, rename):
    """A 16-unit shard listed as units 0..5,000,000 (its path left, or renamed to match)."""
    def edit(m):
        e = m["shards"][0]
        e["unit_stop"] = 5_000_000
        if rename:
            e["path"] = e["path"].rsplit("-", 1)[0] + "-5000000.h5"
            e["blocks"]["path"] = f"blocks/{e['path']}.sha256"
    _edit_manifest(hostile, edit)
    t0 = time.time()
    rc, out, err = run_cli("verify", str(hostile))
    assert rc == 2 and ("unit_stop" in err or "missing" in out), (out, err)
    rc, out, err = run_cli("render", str(hostile))           # refused, or the shard left out: quickly
    assert "Traceback" not in out + err and (rc == 2 and "unit_stop" in err or rc == 0 and "leaving out" in out)
    assert time.time() - t0 < 60


@pytest.mark.parametrize("what", ["related garbage", "related truncated", "related rows", "dataset garbage",
                                  "shard bytes flipped"])
def test_damaged_data_files_give_one_line_not_a_traceback(hostile, tmp_path, what):
    if what.startswith("related"):
        path = hostile / "related.h5"
        if what == "related garbage":
            path.write_bytes(os.urandom(4096))
        elif what == "related truncated":
            path.write_bytes(path.read_bytes()[:1500])
        else:
            with h5py.File(path, "r+") as f:
                rows = f["related/row"][()]
                rows[0, 0, 0] = 10**6
                f["related/row"][...] = rows
    elif what == "dataset garbage":
        (hostile / "dataset.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2048))
    else:
        shard = _first_shard(hostile)
        data = bytearray(shard.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        shard.write_bytes(bytes(data))
    for command in (["verify", str(hostile)], ["render", str(hostile)],
                    ["export", str(hostile), "--out", str(tmp_path / "export")]):
        rc, out, err = run_cli(*command)
        assert "Traceback" not in out + err, (command, err)
        assert rc in (0, 2) and (rc == 0 or len(error_lines(err)) == 1), (command, err)
    assert run_cli("verify", str(hostile))[0] == 2


# -- 10. verify passes on a copied or moved atlas -----------------------------------------------------

def test_verify_passes_on_a_copy_and_a_move_of_the_demo_layout(small_atlas, tmp_path):
    """An atlas that keeps its image folder inside (as the demo does), copied with `cp -a`, then moved."""
    from atlas.dataset import Dataset
    folder = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], folder)
    images = next(Path(small_atlas[0]).parent.glob("imgs"))
    shutil.copytree(images, folder / "images")
    with h5py.File(folder / "dataset.h5", "r+") as f:     # as if probed from inside the atlas
        f.attrs["root"] = str(folder / "images")
    write_manifest(folder)
    assert run_cli("verify", str(folder))[0] == 0
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(folder), str(copy)], check=True)
    rc, out, _ = run_cli("verify", str(copy))
    assert rc == 0, out
    moved = tmp_path / "moved"
    os.rename(folder, moved)
    rc, out, _ = run_cli("verify", str(moved))
    assert rc == 0, out
    assert Dataset(moved / "dataset.h5").root == folder / "images"    # nothing was rewritten


# -- 11. render sweeps what a killed render left --------------------------------------------------

def test_render_sweeps_temporary_files_of_a_killed_render(hostile):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = hostile / "site" / "img" / f"x.webp.tmp-{socket.gethostname()}-{dead.pid}"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a picture")
    assert run_cli("render", str(hostile))[0] == 0
    assert not stale.exists()
    assert not [p for p in (hostile / "site").rglob("*") if ".tmp-" in p.name]


# -- also: full disks, missing related.h5, NaN statistics ----------------------------------------------

def test_render_on_a_full_disk_says_so_and_keeps_the_atlas(hostile, tmp_path):
    with small_disk(tmp_path, "96k") as disk:
        before = digests(hostile)
        assert_refused(run_cli("render", str(hostile), "--out", str(disk / "web")), "no space left")
        after = digests(hostile)
        assert {k: after[k] for k in before if k != "CITATION.cff"} == {k: v for k, v in before.items()
                                                                     if k != "CITATION.cff"}


def test_a_listed_but_missing_related_h5_is_named(hostile, capsys):
    (hostile / "related.h5").unlink()
    a = atlas.open(hostile)
    assert a.unit(*_first_unit(hostile)[:3]).related == []
    assert "lists related.h5 in its manifest but it is missing" in capsys.readouterr().out


def test_nan_statistics_render_as_a_dash(hostile):
    shard = _first_shard(hostile)
    with h5py.File(shard, "r+") as f:
        positive = f["stats/positive"][()]
        positive[0] = np.nan
        f["stats/positive"][...] = positive
        start = int(f.attrs["unit_start"])
        model, site, layer = f.attrs["model"], f.attrs["site"], int(f.attrs["layer"])
    write_manifest(hostile)
    rc, out, err = run_cli("render", str(hostile))
    assert rc == 0, err
    from atlas.website.packs import read_unit
    meta = read_unit(hostile / "site", model, site, layer, start)[1]
    assert meta["probe"]["stats"]["positive"] is None              # JSON null; the page shows '–'
    js = (hostile / "site/assets/atlas.js").read_text()
    assert 'function pct(x, digits) { return x === null' in js


def test_visualize_on_a_full_disk_says_so(tmp_path):
    from tests.conftest import TINY_MODEL
    with small_disk(tmp_path, "48k") as disk:
        assert_refused(run_cli("visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--layers", "0",
                               "--units", "0-63", "--out", str(disk / "atlas")), "no space left")
        assert not [p for p in disk.rglob("*.h5")]          # no half-written shard under a final name
