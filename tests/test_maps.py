"""Layer maps (issue 33, the data): `vit-atlas map` places a probed layer's units by UMAP on the correlations
of their scores; the map is reproducible from its recorded seed and parameters, dead units are set aside, the
stored trustworthiness is scikit-learn's against correlations computed here with numpy, a sketched probe is
laid out from its sketches, and bad input is one line."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

import build
from atlas.maps import map_file
from atlas.reader import Atlas
from builder.maps import map_points
from tests.conftest import TINY_MODEL
from tests.helpers import assert_refused, image_folder, run_cli

NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    base = tmp_path_factory.mktemp("maps")
    images = image_folder(base / "images", ("a", "b", "c", "d"), 20, 40, dim_by_class=True)
    out = base / "atlas"
    assert build.main(["probe", *TINY_MODEL, "--images", str(images), "--layers", "0-2", "--k", "4", "--workers", "0",
                       "--related", "exact", "--out", str(out)]) == 0
    assert build.main(["map", str(out)]) == 0
    return out, images


def correlations(scores: np.ndarray) -> np.ndarray:
    """Pearson correlations of the columns, numpy's own."""
    return np.corrcoef(scores.astype(np.float64).T)


def test_every_probed_layer_is_laid_out_reproducibly_with_dead_units_set_aside(mapped):
    out, _ = mapped
    a = Atlas(out)
    scores = a.image_scores(NAME, "ffn")
    assert map_file(NAME, "ffn") in {f["path"] for f in a.manifest["files"]}
    for layer in (0, 1, 2):
        found = a.layer_map(NAME, "ffn", layer)
        cols = scores.columns(layer)
        assert list(found.units) == sorted(scores.unit[cols].tolist())
        s = scores.scores[:, cols].astype(np.float64)
        dead = (s.max(0) <= 0) | (s.std(0) == 0)
        assert (np.isnan(found.xy).any(1) == dead).all()
        live = found.xy[~dead]
        # spread over the map (an elongated map is a true layout of these 80 images: its other axis may be thin)
        assert ((live >= 0) & (live <= 1)).all() and live.std(0).max() > 0.1
        assert len(np.unique(live.round(4), axis=0)) > 0.9 * len(live)          # not piled on a few points
        # again from the recorded seed and parameters: the same positions, bit for bit; another seed moves them
        z = s[:, ~dead] - s[:, ~dead].mean(0)
        vectors = (z / np.linalg.norm(z, axis=0)).T
        assert found.params["seed"] == 0 and found.params["n_neighbors"] == 15 and found.params["input"] == "exact scores"
        np.testing.assert_array_equal(map_points(vectors, found.params["seed"]).astype(np.float32), live)
        assert not np.allclose(map_points(vectors, 1), live)
        # the stored trustworthiness is scikit-learn's against 1 - correlation, computed here from the raw scores
        from sklearn.manifold import trustworthiness
        distance = np.clip(1 - correlations(s[:, ~dead]), 0, 2)
        np.fill_diagonal(distance, 0)
        assert found.trustworthiness == pytest.approx(
            trustworthiness(distance, live, n_neighbors=10, metric="precomputed"), abs=1e-6)
        assert found.position(int(found.units[~dead][0])) == tuple(float(v) for v in live[0])
    assert build.main(["verify", str(out)]) == 0


def test_a_sketched_probe_is_laid_out_from_its_sketches(mapped, tmp_path):
    _, images = mapped
    out = tmp_path / "sketched"
    assert build.main(["probe", *TINY_MODEL, "--images", str(images), "--layers", "0", "--k", "4", "--workers", "0",
                       "--related", "sketch", "--sketch-dims", "256", "--out", str(out)]) == 0
    assert build.main(["map", str(out), "--seed", "3"]) == 0
    found = Atlas(out).layer_map(NAME, "ffn", 0)
    assert found.params["input"] == "sketch d=256" and found.params["seed"] == 3
    assert np.isfinite(found.xy).all(1).sum() > 100 and found.trustworthiness > 0.5


def test_map_refuses_bad_input_in_one_line_and_a_damaged_file_is_left_out(mapped, tmp_path, capsys):
    import shutil
    out, images = mapped
    empty = tmp_path / "unprobed"
    assert build.main(["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "1", "--layers", "0", "--units",
                       "0-3", "--out", str(empty)]) == 0
    assert_refused(run_cli("map", str(empty)), "run the probe first")
    assert_refused(run_cli("map", str(out), "--site", "q"), "no probe scores")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with h5py.File(copy / map_file(NAME, "ffn"), "r+") as f:
        f["xy"][0] = (7.0, 7.0)                                   # off the map
    capsys.readouterr()
    assert Atlas(copy).layer_map(NAME, "ffn", 0) is None
    assert "leaving out the maps" in capsys.readouterr().out
    assert build.main(["verify", str(copy)]) == 2


def test_the_maps_are_a_table_of_the_export(mapped, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    out, _ = mapped
    assert build.main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    rows = pq.read_table(tmp_path / "export" / "maps" / "data-00000.parquet").to_pylist()
    found = Atlas(out).layer_map(NAME, "ffn", 1)
    row = next(r for r in rows if r["layer"] == 1 and r["unit"] == int(found.units[5]))
    assert (row["x"], row["y"]) == pytest.approx(tuple(found.xy[5]), nan_ok=True)
    assert len(rows) == 3 * 128
