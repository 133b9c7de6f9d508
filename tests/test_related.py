"""Related units and unit flags, checked against brute force and a recomputation with bare h5py/numpy."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import atlas
import build
from tests.conftest import TINY_VIT
from tests.helpers import image_folder

MODEL = ["--model", "vit_tiny_patch16_224", "--random-init", "--model-args", json.dumps(TINY_VIT)]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """A probed tiny atlas (3 layers of 128 units) on 60 labelled images, with exact related units."""
    base = tmp_path_factory.mktemp("related")
    image_folder(base / "imgs", per_class=20, size=32, dim_by_class=True)
    out = base / "atlas"
    assert build.main(["probe", *MODEL, "--images", str(base / "imgs"), "--k", "5", "--workers", "0",
                       "--out", str(out)]) == 0
    return base, out


def brute_force_scores(folder) -> tuple[np.ndarray, list[str]]:
    """Every image's score for every unit of every layer, with plain timm forward hooks: [N, 3 * 128]."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT).eval()
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    cfg = {**timm.data.resolve_data_config(model=model), "input_size": (3, *model.patch_embed.img_size)}
    transform = timm.data.create_transform(**cfg, is_training=False)
    kept = []
    hooks = [b.mlp.act.register_forward_hook(lambda m, i, o: kept.append(o[:, 1:].mean(1))) for b in model.blocks]
    rows = []
    with torch.no_grad():
        for p in paths:
            kept.clear()
            model(transform(Image.open(folder / p).convert("RGB"))[None])
            rows.append(torch.cat(kept, 1)[0].numpy())
    for h in hooks:
        h.remove()
    return np.stack(rows).astype(np.float64), paths


def test_related_units_are_the_brute_force_correlation(probed):
    base, out = probed
    scores, paths = brute_force_scores(base / "imgs")
    assert atlas.open(out).dataset.paths == paths
    z = scores - scores.mean(0)
    corr = (z.T @ z) / np.outer(np.linalg.norm(z, axis=0), np.linalg.norm(z, axis=0))
    np.fill_diagonal(corr, -np.inf)
    a = atlas.open(out)
    checked = 0
    for layer, unit in [(0, 3), (1, 64), (2, 127), (2, 5)]:
        col = layer * 128 + unit
        related = a.unit("vit_tiny_patch16_224", layer, unit).related
        same = [r for r in related if r.scope == "same layer"]
        expected = np.sort(corr[col, layer * 128:(layer + 1) * 128])[::-1][:8]
        np.testing.assert_allclose([r.corr for r in same], expected, atol=3e-3)       # float16 scores stored
        other = [r for r in related if r.scope == "same model"]
        mask = np.ones(384, bool)
        mask[layer * 128:(layer + 1) * 128] = False
        np.testing.assert_allclose([r.corr for r in other], np.sort(corr[col, mask])[::-1][:8], atol=3e-3)
        for r in same + other:                                   # each named pair has the stated correlation
            _, _, ll, uu = atlas.parse_unit_id(r.id)
            assert abs(corr[col, ll * 128 + uu] - r.corr) < 3e-3
            checked += 1
    assert checked == 64


def test_other_models_probed_on_the_same_images_are_related(probed, tmp_path):
    import shutil
    base, out = probed
    both = tmp_path / "atlas"
    shutil.copytree(out, both)
    assert build.main(["probe", *MODEL, "--init-seed", "1", "--name", "other", "--images", str(base / "imgs"),
                       "--k", "5", "--workers", "0", "--out", str(both)]) == 0
    a = atlas.open(both)
    mine = a.unit("vit_tiny_patch16_224", 1, 10).related
    theirs = [r for r in mine if r.scope == "other models"]
    assert len(theirs) == 8 and all(r.id.startswith("other/") for r in theirs)
    other = a.unit("other", 1, 10).related
    assert all(r.id.startswith("other/") for r in other if r.scope != "other models")
    assert sum(r.id.startswith("vit_tiny_patch16_224/") for r in other if r.scope == "other models") == 8


def test_a_sketch_estimates_the_exact_correlations(probed, tmp_path):
    """The sketch accumulated during the pass equals sketching the exact scores afterwards, and with
    enough dimensions it finds most of the exact neighbours."""
    import shutil
    from builder.related import rebuild_related
    base, out = probed
    sketched = tmp_path / "atlas"
    assert build.main(["probe", *MODEL, "--images", str(base / "imgs"), "--k", "5", "--workers", "0",
                       "--related", "sketch", "--sketch-dims", "512", "--out", str(sketched)]) == 0
    with h5py.File(sketched / "related.h5") as f:
        assert f.attrs["method"] == "sketch d=512"
        in_pass = f["related/row"][()]
    exact_copy = tmp_path / "exact"
    shutil.copytree(out, exact_copy)
    rebuild_related(exact_copy, force_sketch=512)
    with h5py.File(exact_copy / "related.h5") as f:
        afterwards = f["related/row"][()]
    assert (in_pass == afterwards).mean() > 0.9                  # same signs, float16 vs float32 scores
    with h5py.File(out / "related.h5") as f:
        exact = f["related/row"][()]
    recall = np.mean([len(set(exact[i, 0]) & set(in_pass[i, 0])) / 8 for i in range(len(exact))])
    assert recall > 0.5                                          # 60 images: correlations are close together


def _independent_flags(path, labels):
    """The flag values recomputed with h5py and numpy alone, from FORMAT.md's definitions."""
    with h5py.File(path) as f:
        index, maps = f["topk/index"][()], f["topk/map"][()].astype(np.float64)
        stored = {n: f[f"flags/{n}"][()] for n in ("class", "class_share", "extent", "concentration")}
    out = {n: [] for n in stored}
    for row, unit_maps in zip(index, maps):
        keep = row >= 0
        lab = labels[row[keep]]
        counts = np.bincount(lab[lab >= 0], minlength=1)
        out["class"].append(int(counts.argmax()) if counts.sum() else -1)
        out["class_share"].append(counts.max() / keep.sum() if counts.sum() else 0)
        ext, conc = [], []
        for m in unit_maps[keep]:
            if m.max() > 0:
                ext.append((m > 0.5 * m.max()).mean())
            pos = np.clip(m, 0, None)
            if pos.sum() > 0:
                conc.append(pos.max() / pos.sum())
        out["extent"].append(np.mean(ext) if ext else np.nan)
        out["concentration"].append(np.mean(conc) if conc else np.nan)
    return stored, out


def test_flags_are_what_the_stored_maps_say(probed):
    _, out = probed
    with h5py.File(out / "dataset.h5") as f:
        labels = f["label"][()]
    shards = sorted((out / "shards").rglob("*.h5"))
    assert shards
    for path in shards:
        stored, recomputed = _independent_flags(path, labels)
        np.testing.assert_array_equal(stored["class"], recomputed["class"])
        for name in ("class_share", "extent", "concentration"):
            np.testing.assert_allclose(stored[name], recomputed[name], rtol=1e-4, atol=1e-5)
    u = atlas.open(out).unit("vit_tiny_patch16_224", 2, 9)
    assert u.flags.global_ == (u.flags.extent >= 0.4) and u.flags.local == (u.flags.extent < 0.4)
    assert "global" in u.flags.names or "local" in u.flags.names or u.flags.dead
