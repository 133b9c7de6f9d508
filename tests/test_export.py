"""`build.py export`: the Parquet tables equal the shards, the card loads, files stay bounded."""
from __future__ import annotations

import io
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

import atlas
import build
from tests.helpers import assert_refused, run_cli
from tests.helpers import load_every_config


@pytest.fixture(scope="module")
def exported(small_atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "parquet"
    assert build.main(["export", str(small_atlas[0]), "--format", "parquet", "--out", str(out)]) == 0
    return small_atlas[0], out


def _shard_values(root):
    """Every unit's stored data, read with bare h5py: {unit id: {...}}."""
    found = {}
    for path in sorted((root / "shards").rglob("*.h5")):
        with h5py.File(path) as f:
            model, site, layer = str(f.attrs["model"]), str(f.attrs["site"]), int(f.attrs["layer"])
            start = int(f.attrs["unit_start"])
            for r in range(int(f.attrs["unit_stop"]) - start):
                row = {}
                for part in ("viz", "fourier"):
                    if f"{part}/image" in f:
                        row[part] = (f[f"{part}/image"][r], f[f"{part}/activation"][r], f[f"{part}/map"][r])
                if "topk/index" in f:
                    keep = f["topk/index"][r] >= 0
                    row["topk"] = (f["topk/index"][r][keep], f["topk/score"][r][keep], f["topk/map"][r][keep])
                found[atlas.unit_id(model, site, layer, start + r)] = row
    return found


def test_every_unit_round_trips_through_pandas(exported):
    import pandas as pd
    root, out = exported
    stored = _shard_values(root)
    frames = [pd.read_parquet(p) for p in sorted((out / "units").rglob("*.parquet"))]
    table = pd.concat(frames, ignore_index=True)
    assert sorted(table["id"]) == sorted(stored)
    for _, row in table.iterrows():
        want = stored[row["id"]]
        for part, prefix in (("viz", ""), ("fourier", "fourier_")):
            if part in want:
                image, activation, amap = want[part]
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(row[f"{prefix}image"]["bytes"]))), image)
                assert row[f"{prefix}activation"] == pytest.approx(float(activation), abs=0)
                np.testing.assert_array_equal(np.stack(row[f"{prefix}map"]), amap.astype(np.float32))
            else:
                missing = row.get(f"{prefix}image")     # None in its file; NaN where concat added the column
                assert missing is None or (isinstance(missing, float) and np.isnan(missing))
        if "topk" in want:
            index, score, maps = want["topk"]
            np.testing.assert_array_equal(row["topk_index"], index)
            np.testing.assert_array_equal(row["topk_score"], score)
            got = np.stack([np.stack(m) for m in row["topk_map"]]) if len(index) else np.zeros((0,))
            np.testing.assert_array_equal(got, maps.astype(np.float32).reshape(got.shape))
    index = pd.read_parquet(out / "dataset")
    a = atlas.open(root)
    assert list(index["path"]) == a.dataset.paths and list(index["label"]) == list(a.dataset.labels)


def test_every_config_of_the_card_loads_with_datasets(exported):
    load_every_config(*exported)


def test_files_stay_under_the_size_bound(small_atlas, tmp_path):
    out = tmp_path / "small"
    assert build.main(["export", str(small_atlas[0]), "--out", str(out), "--max-file-mb", "0.25"]) == 0
    files = sorted((out / "units").rglob("*.parquet"))
    assert len(files) > 2 and all(p.stat().st_size <= 0.25 * 2**20 * 1.1 for p in files)
    import pandas as pd
    a = atlas.open(small_atlas[0])
    model = "vit_tiny_patch16_224"
    units = sum(len(a.units(model, layer, site)) for site in a.sites(model) for layer in a.layers(model, site))
    assert sum(len(pd.read_parquet(p)) for p in files) == units


def test_export_refuses_someone_elses_folder_and_says_how_to_get_pyarrow(small_atlas, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert_refused(run_cli("export", str(small_atlas[0]), "--out", str(mine)), "not an export")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert_refused(run_cli("export", str(small_atlas[0]), "--out", str(tmp_path / "x")), "pip install -e '.[export]'")
