"""A hosted atlas read over HTTP: range requests, verified blocks and files, the local cache."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

import atlas
from atlas.format import AtlasError
from atlas.serve import make_server


@pytest.fixture
def served(small_atlas, tmp_path, monkeypatch):
    """A copy of the small atlas served on 127.0.0.1, and a fresh cache."""
    out = tmp_path / "atlas"
    shutil.copytree(small_atlas[0], out)
    monkeypatch.setenv("VIT_ATLAS_CACHE", str(tmp_path / "cache"))
    server = make_server(out, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_remote_unit_equals_the_local_one(served):
    out, url = served
    remote, local = atlas.open(url), atlas.open(out)
    for layer, index in ((0, 3), (1, 100)):
        r, u = remote.unit("vit_tiny_patch16_224", layer, index), local.unit("vit_tiny_patch16_224", layer, index)
        assert r.pictures == u.pictures and [t.index for t in r.topk] == [t.index for t in u.topk]
        if u.pictures:
            assert np.array_equal(r.image, u.image) and r.activation == u.activation
        assert r.related == u.related and r.flags == u.flags
    assert remote.dataset.paths == local.dataset.paths


def test_a_tampered_shard_is_refused(served):
    out, url = served
    shard = sorted((out / "shards").rglob("*.h5"))[0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF                                   # the superblock: every read of the shard touches it
    shard.write_bytes(bytes(data))
    remote = atlas.open(url)
    model, site, layer, start = shard.parts[-4], shard.parts[-3], int(shard.parts[-2][1:]), int(shard.stem[1:6])
    with pytest.raises(AtlasError, match="tampered"):
        remote.unit(model, layer, start, site=site).image


def test_a_tampered_data_file_is_refused_and_the_cache_is_reused(served):
    out, url = served
    remote = atlas.open(url)
    assert remote.has_dataset
    fetched = remote.remote.fetched
    again = atlas.open(url)
    again.dataset                                       # from the cache: only the manifest was fetched again
    assert again.remote.fetched < fetched
    data = bytearray((out / "dataset.h5").read_bytes())
    data[-1] ^= 0xFF                                    # one byte changed, the size kept
    (out / "dataset.h5").write_bytes(bytes(data))
    shutil.rmtree(again.remote.cache / "files")         # the verified copy: the tampered file is fetched again
    with pytest.raises(AtlasError, match="does not match the manifest"):
        atlas.open(url).dataset


def test_bad_urls_say_what_is_wrong(served, tmp_path):
    _, url = served
    with pytest.raises(AtlasError, match="HTTP 404"):
        atlas.open(url + "nothing-here/")
    with pytest.raises(AtlasError, match="cannot reach"):
        atlas.open("http://127.0.0.1:9/")
