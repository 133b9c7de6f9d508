"""Reliability under hostile files, races and kills: nothing executable in an atlas, locks with owners
and expiry, one finalization, damaged files quarantined and recomputed, serve confined to the atlas."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest
import torch

import build
from atlas.locks import Lock
from atlas.log import read_logs
from atlas.quarantine import quarantined
from atlas.verify import verify
from tests.conftest import ROOT, TINY_MODEL
from tests.helpers import digests, run_cli
from tests.helpers import ENV, write_spec


# -- nothing executable in an atlas --------------------------------------------------------------

class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_in_the_probe_state_does_not_run(small_atlas, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], out)
    marker = tmp_path / "pwned"
    images = next(Path(small_atlas[0]).parent.glob("imgs"))
    for state in (out / ".probe").glob("*") if (out / ".probe").exists() else []:
        state.unlink()
    (out / ".probe").mkdir(exist_ok=True)
    torch.save({"fingerprint": "x", "evil": _Payload(str(marker))}, out / ".probe" / "vit_tiny_patch16_224-ffn.pt")
    (out / "dataset.h5").unlink()
    for shard in (out / "shards").rglob("*.h5"):
        shard.unlink()
    rc, _, err = run_cli("probe", *TINY_MODEL, "--images", str(images), "--layers", "0", "--k", "3",
                         "--workers", "0", "--out", str(out))
    assert rc == 0, err
    assert not marker.exists()                                            # the payload never ran
    assert [r["path"] for r in quarantined(out)] == [".probe/vit_tiny_patch16_224-ffn.pt"]


# -- locks ---------------------------------------------------------------------------------------

def _hold(base: str, mode: str, ready: str) -> None:
    lock = Lock(base, use_flock=None if mode == "flock" else False, heartbeat=0.2)
    assert lock.acquire()
    Path(ready).write_text("held")
    time.sleep(600)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["flock", "heartbeat"])
def test_a_lock_is_held_while_its_holder_lives_and_taken_over_after_it_dies(tmp_path, mode):
    base = tmp_path / ".locks" / "finalize"
    ready = tmp_path / "ready"
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_reliability import _hold; " \
           f"_hold({str(base)!r}, {mode!r}, {str(ready)!r})"
    holder = subprocess.Popen([sys.executable, "-c", code], env=ENV)
    try:
        while not ready.exists():
            time.sleep(0.05)
        other = Lock(base, use_flock=None if mode == "flock" else False, expiry=1.0)
        assert not other.acquire() and other.holder()["pid"] == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if mode == "heartbeat":
            assert not other.acquire()          # the heartbeat is still fresh: not yet expired
            time.sleep(1.5)
        assert other.acquire()                  # flock: freed by the kernel; heartbeat: expired
        assert [p.name for p in base.parent.iterdir()] == ["finalize.1"]
        other.release()
        assert list(base.parent.iterdir()) == []
    finally:
        holder.kill()


def test_a_lock_of_a_killed_process_on_another_host_is_taken_over_after_expiry(tmp_path):
    """No flock on a cluster filesystem: the heartbeat decides. A record from another node that stopped
    beating is taken over once it is older than the expiry, not before."""
    base = tmp_path / ".locks" / "finalize"
    base.parent.mkdir(parents=True)
    stale = base.with_name("finalize.4")
    stale.write_text(json.dumps({"host": "node-17", "pid": 4242, "token": "theirs", "heartbeat": time.time()}))
    lock = Lock(base, use_flock=False, expiry=60)
    assert not lock.acquire() and lock.holder()["host"] == "node-17"
    old = time.time() - 120
    stale.write_text(json.dumps({"host": "node-17", "pid": 4242, "token": "theirs", "heartbeat": old}))
    os.utime(stale, (old, old))
    assert lock.acquire() and lock.generation == 5 and not stale.exists()
    lock.release()


def test_a_holder_releases_only_its_own_lock(tmp_path):
    base = tmp_path / "l"
    first = Lock(base, use_flock=False, expiry=0.5, heartbeat=10)
    assert first.acquire()
    time.sleep(0.7)                                      # first stalls past the expiry
    second = Lock(base, use_flock=False, expiry=0.5, heartbeat=0.1)
    assert second.acquire()
    first.release()                                      # must not remove second's lock
    assert second.holder() is not None and not Lock(base, use_flock=False, expiry=0.5).acquire()
    second.release()


@pytest.mark.slow
def test_eight_processes_racing_to_finalize_finalize_once(tmp_path):
    spec = write_spec(tmp_path)
    assert build.main(["run", str(spec)]) == 0           # every shard done
    out = tmp_path / "atlas"
    (out / "manifest.json").unlink()
    shutil.rmtree(out / "logs")
    procs = [subprocess.Popen([sys.executable, "build.py", "run", str(spec)], cwd=ROOT, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(8)]
    errors = [p.communicate(timeout=600)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    finalizations = [line for line in read_logs(out) if line["stage"] == "finalize"]
    assert len(finalizations) == 1
    assert verify(out) == []


@pytest.mark.slow
def test_two_visualize_runs_on_one_atlas_cooperate(tmp_path):
    out = tmp_path / "atlas"
    argv = [sys.executable, "build.py", "visualize", *TINY_MODEL, "--preset", "quick", "--steps", "20",
            "--layers", "0-2", "--units", "0-47", "--shard-units", "16", "--batch-units", "16", "--out", str(out)]
    first = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.5)
    second = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    viz = [line for line in read_logs(out) if line["stage"] == "visualize"]
    assert len(viz) == 9 and len({line["shard"] for line in viz}) == 9    # each shard computed once
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["history"]) == 2 and len(manifest["shards"]) == 9  # no history entry lost


def test_probe_then_visualize_leaves_complete_shards(tmp_path, small_atlas):
    out = tmp_path / "atlas"
    images = next(Path(small_atlas[0]).parent.glob("imgs"))
    assert run_cli("probe", *TINY_MODEL, "--images", str(images), "--layers", "0", "--k", "2", "--workers", "0",
                   "--shard-units", "16", "--out", str(out))[0] == 0
    assert run_cli("visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--layers", "0",
                   "--shard-units", "16", "--out", str(out))[0] == 0
    for shard in (out / "shards").rglob("*.h5"):
        with h5py.File(shard) as f:
            assert "recipe" in f.attrs and "seed" in f.attrs and "topk" in f and "viz" in f
    assert run_cli("render", str(out))[0] == 0


# -- damaged files -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_truncated_shard_is_quarantined_and_recomputed(tmp_path):
    spec = write_spec(tmp_path)
    assert build.main(["run", str(spec)]) == 0
    out = tmp_path / "atlas"
    victim = sorted((out / "shards").rglob("*.h5"))[3]
    rel = victim.relative_to(out).as_posix()
    victim.write_bytes(victim.read_bytes()[:2000])
    assert build.main(["run", str(spec)]) == 0           # no crash: moved aside, recomputed, finalized
    assert [r["path"] for r in quarantined(out)] == [rel]
    assert (out / rel).exists() and verify(out) == []
    with h5py.File(out / rel) as f:
        assert "viz" in f and "topk" in f


def test_junk_analysis_and_dataset_files_do_not_block_anything(small_atlas, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], out)
    (out / "analyses").mkdir(exist_ok=True)
    (out / "analyses" / "frequency.json").write_text("{not json")
    rc, stdout, err = run_cli("render", str(out))
    assert rc == 0 and "skipping analyses/frequency.json" in stdout, err
    assert any("frequency.json" in str(p) for p in verify(out))


@pytest.mark.parametrize("kind", ["thumbs", "units"])
def test_a_pack_cut_short_is_rewritten(small_atlas, tmp_path, kind):
    out = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], out)
    assert run_cli("render", str(out))[0] == 0          # the copy's own complete render is the reference
    pack = next(p for p in sorted((out / "site" / "data").rglob("*.pack")) if ("/thumbs/" in p.as_posix()) == (kind == "thumbs"))
    whole = pack.read_bytes()
    pack.write_bytes(whole[: len(whole) // 2])
    assert run_cli("render", str(out))[0] == 0
    assert pack.read_bytes() == whole


@pytest.mark.slow
def test_finalize_on_a_copy_leaves_the_original_unchanged(tmp_path):
    spec = write_spec(tmp_path)
    assert build.main(["run", str(spec)]) == 0
    original = tmp_path / "atlas"
    before = digests(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "site")
    assert build.main(["finalize", str(copy)]) == 0
    assert digests(original) == before
    assert (copy / "site" / "index.html").exists()


# -- serve ---------------------------------------------------------------------------------------

@pytest.fixture
def server(small_atlas, tmp_path):
    from atlas.serve import make_server
    out = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], out)
    (out / "site" / "rootlink").symlink_to("/")
    (out / "site" / "up").symlink_to(out)
    srv = make_server(out, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield out, srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _get(port: int, path: str, host: str = "127.0.0.1"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": f"{host}:{port}"})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_serve_answers_the_site_and_the_published_data(server):
    out, port = server
    status, headers, body = _get(port, "/site/index.html")
    assert status == 200 and b"<html" in body.lower()
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    shard = json.loads((out / "manifest.json").read_text())["shards"][0]["path"]
    assert _get(port, "/" + shard)[0] == 200 and _get(port, "/manifest.json")[0] == 200
    assert _get(port, "/")[0] == 302


@pytest.mark.parametrize("path", ["/site/rootlink/etc/passwd", "/site/up/.cache/sha256.json", "/.cache/sha256.json",
                                  "/site/", "/site/data/", "/logs/", "/site/../manifest.json/../.cache/sha256.json",
                                  "/%2e%2e/%2e%2e/etc/passwd", "/site/up/manifest.json"])
def test_serve_refuses_escapes_listings_and_private_files(server, path):
    _, port = server
    status, _, body = _get(port, path)
    if path == "/site/":
        assert status == 200 and b"<html" in body.lower()       # the index page, not a listing
    else:
        assert status == 404 and b"root:" not in body


def test_serve_refuses_a_foreign_host_header(server):
    _, port = server
    assert _get(port, "/site/index.html", host="evil.example")[0] == 421
    assert _get(port, "/site/index.html", host="localhost")[0] == 200
