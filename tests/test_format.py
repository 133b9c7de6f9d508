"""The atlas format: unit ids, atomic shard parts, the manifest, and the reader against bare h5py."""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest

import atlas
from atlas.format import FORMAT_VERSION, PARTS, AtlasError, parse_unit_id, shard_path, unit_id
from atlas.manifest import write_manifest
from atlas.shard import parts_of, write_part


def _viz(n, size=8, grid=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"viz/image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            "viz/activation": rng.standard_normal(n).astype(np.float32),
            "viz/map": rng.standard_normal((n, grid, grid)).astype(np.float16),
            "viz/seed": np.arange(n, dtype=np.int64), "viz/loss": rng.standard_normal((n, 4)).astype(np.float32)}


def _probe(n, k=3, grid=2):
    return {"topk/index": np.tile(np.arange(k), (n, 1)), "topk/score": np.ones((n, k), np.float32),
            "topk/map": np.zeros((n, k, grid, grid), np.float16), "stats/mean": np.zeros(n, np.float32),
            "stats/max": np.ones(n, np.float32), "stats/positive": np.full(n, 0.5, np.float32),
            "stats/hist": np.ones((n, 4), np.int64), "stats/hist_edges": np.linspace(0, 1, 5)}


ATTRS = dict(model="m", site="ffn", layer=2, unit_start=10, unit_stop=14, weights="w1")


def test_unit_ids_round_trip_and_reject_garbage():
    assert unit_id("vit_b.augreg", "ffn", 3, 42) == "vit_b.augreg/ffn/L03/U0042"
    assert unit_id("m", "q", 11, 12345) == "m/q/L11/U12345"
    assert parse_unit_id("vit_b.augreg/ffn/L03/U0042") == ("vit_b.augreg", "ffn", 3, 42)
    for bad in ("vit/ffn/3/42", "vit/mlp/L03/U0042", "vit/ffn/L3/U0042", "<script>/ffn/L03/U0042"):
        with pytest.raises(AtlasError):
            parse_unit_id(bad)
    assert shard_path("m", "ffn", 3, 0, 256) == "shards/m/ffn/L03/U00000-00256.h5"


def test_parts_are_added_atomically_and_keep_what_was_there(tmp_path):
    path = tmp_path / "s.h5"
    viz = _viz(4)
    write_part(path, ATTRS, "viz", viz, {"loss_steps": [0, 1, 2, 3]})
    with h5py.File(path) as f:
        assert parts_of(f) == ["viz"] and f.attrs["unit_start"] == 10 and f.attrs["format_version"] == FORMAT_VERSION
    write_part(path, ATTRS, "probe", _probe(4))
    with h5py.File(path) as f:
        assert parts_of(f) == ["viz", "probe"]
        np.testing.assert_array_equal(f["viz/image"][()], viz["viz/image"])
        assert f["viz/image"].chunks == (1, 8, 8, 3) and f["viz/image"].compression == "gzip"
        assert json.loads(f["viz"].attrs["loss_steps"]) == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "s.h5"]  # no temporary left behind
    assert not [p for p in (tmp_path / ".locks").rglob("*") if p.is_file()]  # and no lock held


def test_a_failed_or_conflicting_write_leaves_the_shard_as_it_was(tmp_path):
    path = tmp_path / "s.h5"
    write_part(path, ATTRS, "viz", _viz(4))
    before = path.read_bytes()
    with pytest.raises(AtlasError, match="weights"):
        write_part(path, dict(ATTRS, weights="other"), "probe", _probe(4))
    assert write_part(path, ATTRS, "viz", _viz(4)) is False  # the part is there (another process wrote it)
    bad = _probe(4)
    bad["topk/map"] = object()  # h5py cannot store this: fails halfway through the write
    with pytest.raises(Exception):
        write_part(path, ATTRS, "probe", bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "s.h5"]
    with pytest.raises(ValueError, match="lacks"):
        write_part(tmp_path / "t.h5", ATTRS, "viz", {"viz/image": np.zeros((1, 2, 2, 3), np.uint8)})


def test_manifest_sizes_and_hashes_are_true(tmp_path):
    for start in (0, 4):
        write_part(tmp_path / shard_path("m", "ffn", 0, start, start + 4),
                   dict(ATTRS, layer=0, unit_start=start, unit_stop=start + 4, layer_units=8, grid=[2, 2]),
                   "viz", _viz(4, seed=start))
    m = write_manifest(tmp_path, "python build.py first")
    m = write_manifest(tmp_path, "python build.py second")
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == m and m["format_version"] == atlas.FORMAT_VERSION
    assert [h["command"] for h in m["history"]] == ["python build.py first", "python build.py second"]
    assert m["command"] == "python build.py second"
    assert len(m["shards"]) == 2
    for entry in m["shards"]:
        data = (tmp_path / entry["path"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["parts"] == ["viz"]
    assert m["models"]["m"]["sites"]["ffn"]["00"] == {"units": 8, "grid": [2, 2], "module": None, "parts": ["viz"]}


def test_reader_returns_exactly_what_bare_h5py_reads(tmp_path):
    for start in (0, 4):
        write_part(tmp_path / shard_path("m", "ffn", 1, start, start + 4),
                   dict(ATTRS, layer=1, unit_start=start, unit_stop=start + 4), "viz", _viz(4, seed=start))
    write_manifest(tmp_path)
    with atlas.open(tmp_path) as a:
        assert a.models == ["m"] and a.layers("m") == [1] and list(a.units("m", 1)) == list(range(8))
        u = a.unit("m", 1, 6)
        assert u.id == "m/ffn/L01/U0006" and a.unit_by_id("m/ffn/L01/U0006").index == 6
        with h5py.File(tmp_path / shard_path("m", "ffn", 1, 4, 8)) as f:
            np.testing.assert_array_equal(u.image, f["viz/image"][2])
            assert u.activation == float(f["viz/activation"][2])
            np.testing.assert_array_equal(u.map, f["viz/map"][2])
        with pytest.raises(AtlasError, match="not in the atlas"):
            a.unit("m", 1, 8)
        with pytest.raises(AtlasError, match="has no m/ffn/L02"):
            a.unit("m", 2, 0)
        with pytest.raises(AtlasError, match="no 'probe' part"):
            u.topk
        with pytest.raises(AtlasError, match="dataset.h5"):
            a.dataset


def test_every_part_lists_its_datasets():
    assert set(PARTS) == {"viz", "fourier", "probe"}
    assert PARTS["viz"] == ("viz/image", "viz/activation", "viz/map", "viz/seed", "viz/loss")
    assert PARTS["fourier"] == ("fourier/image", "fourier/activation", "fourier/map", "fourier/seed", "fourier/loss")
