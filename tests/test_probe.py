"""The dataset probe: top-k against brute force, ties, statistics, layouts, bad files, resume."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import atlas
import build
from atlas.images import load_rgb
from builder.dataset import imagenet_classes, scan_images
from builder.probe import LayerProbe, hist_edges
from builder.sites import find_layers
from tests.conftest import ROOT, TINY_MODEL
from tests.helpers import image_folder

MODEL = TINY_MODEL


def make_folder(root, n_per_class=15, classes=("apple", "boat", "cat"), seed=0):
    """An ImageFolder of random images of varied sizes."""
    return image_folder(root, classes, n_per_class, (24, 80), seed, "{i:03d}.png")


def brute_force(lm, index, layers):
    """Every image's full activation grid per layer, one image at a time with plain timm hooks."""
    transform = lm.eval_transform()
    grids = {layer.index: [] for layer in layers}
    for rel in index.paths:
        captured = {}
        handles = [lm.model.get_submodule(layer.module).register_forward_hook(
            lambda m, i, o, layer=layer: captured.__setitem__(layer.index, o)) for layer in layers]
        with torch.no_grad():
            lm.model(transform(load_rgb(index.root / rel))[None])
        for h in handles:
            h.remove()
        for layer in layers:
            out = captured[layer.index][0, layer.prefix:, :]
            grids[layer.index].append(out.reshape(*layer.grid, -1).numpy())
    return {i: np.stack(g) for i, g in grids.items()}


def reference_topk(scores, k):
    """Per unit: indices of the k highest scores, ties to the lower index."""
    n = scores.shape[0]
    return np.stack([np.lexsort((np.arange(n), -scores[:, u]))[:k] for u in range(scores.shape[1])])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def truth(folder, tiny_vit):
    index = scan_images(folder)
    layers = find_layers(tiny_vit.model, "ffn", tiny_vit.input_size)
    return index, layers, brute_force(tiny_vit, index, layers)


@pytest.mark.parametrize("batch, workers", [(1, 0), (7, 2), (64, 0)])
def test_topk_scores_maps_and_stats_match_brute_force(tmp_path, truth, folder, batch, workers):
    index, layers, grids = truth
    out = tmp_path / "atlas"
    assert build.main(["probe", *MODEL, "--images", str(folder), "--k", "5", "--batch-size", str(batch),
                       "--workers", str(workers), "--shard-units", "48", "--out", str(out)]) == 0
    rng = np.random.default_rng(batch)
    with atlas.open(out) as a:
        assert a.dataset.paths == index.paths
        for layer in layers:
            scores = grids[layer.index].mean(axis=(1, 2))                      # [N, units]
            expected = reference_topk(scores, 5)
            for u in rng.choice(layer.units, 24, replace=False):
                unit = a.unit("vit_tiny_patch16_224", layer.index, int(u))
                got = [t.index for t in unit.topk]
                assert got == expected[u].tolist()
                np.testing.assert_allclose([t.score for t in unit.topk], scores[expected[u], u], rtol=1e-5, atol=1e-6)
                for t in unit.topk:
                    np.testing.assert_allclose(t.map, grids[layer.index][t.index, :, :, u], rtol=2e-3, atol=2e-3)
                s = unit.stats
                assert s.mean == pytest.approx(scores[:, u].mean(), rel=1e-5, abs=1e-6)
                assert s.max == pytest.approx(scores[:, u].max(), rel=1e-6)
                assert s.positive == pytest.approx((scores[:, u] > 0).mean())
                expected_hist = np.histogram(np.clip(scores[:, u], -999, 999), bins=hist_edges())[0]
                np.testing.assert_array_equal(s.hist, expected_hist)


def test_topk_merge_breaks_ties_by_lower_index_whatever_the_batches():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, (50, 1, 2, 6)).astype(np.float32)   # many exact ties
    reference = reference_topk(values.mean(axis=(1, 2)), 7)
    for cuts in ([50], [1] * 50, [13, 2, 35], [7, 7, 7, 29]):
        probe = LayerProbe(6, (1, 2), 7, torch.device("cpu"))
        start = 0
        for size in cuts:
            probe.update(torch.from_numpy(values[start:start + size]), torch.arange(start, start + size))
            start += size
        np.testing.assert_array_equal(probe.index.numpy(), reference)
        np.testing.assert_array_equal(probe.map.numpy()[2, :, 0, :], values[reference[2], 0, :, 2])


def test_fewer_images_than_k_leave_empty_slots(tmp_path):
    folder = make_folder(tmp_path / "few", n_per_class=1, classes=("a", "b"))
    assert build.main(["probe", *MODEL, "--images", str(folder), "--k", "4", "--workers", "0",
                       "--layers", "0", "--out", str(tmp_path / "atlas")]) == 0
    with atlas.open(tmp_path / "atlas") as a:
        unit = a.unit("vit_tiny_patch16_224", 0, 3)
        assert sorted(t.index for t in unit.topk) == [0, 1]
    with h5py.File(next((tmp_path / "atlas" / "shards").rglob("*.h5"))) as f:
        assert f["topk/index"][3].tolist()[2:] == [-1, -1] and np.isneginf(f["topk/score"][3][2:]).all()


def write_bad_corpus(root):
    """Every kind of difficult file the issue lists; returns the names expected to be skipped."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "good.jpg")
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    rgba = np.dstack([rgb, np.where(np.arange(60) < 30, 0, 255).astype(np.uint8)[None].repeat(40, 0)])
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "palette.png")
    Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)).save(root / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(root / "rotated.jpg", exif=exif)
    Image.new("RGB", (6000, 5000), (10, 200, 30)).save(root / "large.jpg", quality=50)
    Image.new("1", (20000, 20000)).save(root / "bomb.png")  # 400 MP: over the decompression-bomb guard
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("ignored: not an image ending")
    return {"bomb.png", "empty.jpg", "text.jpg", "truncated.jpg"}


def test_bad_files_become_rgb_or_are_skipped_with_a_reason(tmp_path, capsys):
    bad = write_bad_corpus(tmp_path / "corpus")
    assert load_rgb(tmp_path / "corpus/rotated.jpg").size == (40, 60)            # EXIF rotation applied
    sixteen = np.asarray(load_rgb(tmp_path / "corpus/sixteen.png"))
    assert sixteen.dtype == np.uint8 and 0 < sixteen.mean() < 255 and sixteen.std() > 10  # not clipped to white
    rgba = np.asarray(load_rgb(tmp_path / "corpus/rgba.png"))
    assert (rgba[:, :30] == 255).all()                                             # transparent -> white
    for name in ("gray.png", "cmyk.jpg", "palette.png", "large.jpg"):
        assert load_rgb(tmp_path / "corpus" / name).mode == "RGB"
    assert build.main(["probe", *MODEL, "--images", str(tmp_path / "corpus"), "--workers", "2",
                       "--batch-size", "3", "--out", str(tmp_path / "atlas")]) == 0
    printed = capsys.readouterr().out
    assert "12 images" in printed and "1 other files ignored" in printed and f"skipped {len(bad)} files" in printed
    with atlas.open(tmp_path / "atlas") as a:
        skipped = dict(a.dataset.skipped)
        assert set(skipped) == bad and set(a.dataset.paths) == {
            "cmyk.jpg", "good.jpg", "gray.png", "large.jpg", "palette.png", "rgba.png", "rotated.jpg", "sixteen.png"}
        assert "empty" in skipped["empty.jpg"] and "too large" in skipped["bomb.png"]
        assert all(t.index < 8 for t in a.unit("vit_tiny_patch16_224", 0, 0).topk)


@pytest.mark.parametrize("setup", ["empty", "no-images"])
def test_a_folder_without_images_fails_before_the_model_loads(tmp_path, capsys, setup):
    folder = tmp_path / "in"
    folder.mkdir()
    if setup == "no-images":
        (folder / "readme.txt").write_text("x")
    # a model name timm does not know: the folder error must come first
    assert build.main(["probe", "--model", "not_a_model", "--random-init", "--images", str(folder),
                       "--out", str(tmp_path / "atlas")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "atlas").exists()


def test_imagenet_layouts_map_to_timm_class_indices_and_names(tmp_path):
    wnids, names = imagenet_classes()
    train = tmp_path / "train"
    for w in (wnids[0], wnids[791]):
        (train / w).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(train / w / f"{w}_1.JPEG")
    index = scan_images(train)
    assert index.layout == "imagenet-folders" and index.labels.tolist() == [0, 791]
    assert index.class_names[791] == names[791] == "shopping cart"

    val = tmp_path / "val"
    val.mkdir()
    for i in (1, 2, 3):
        Image.new("RGB", (8, 8)).save(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    with open(tmp_path / "LOC_val_solution.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        w.writerow(["ILSVRC2012_val_00000002", f"{wnids[791]} 1 2 3 4 {wnids[791]} 5 6 7 8"])
        w.writerow(["ILSVRC2012_val_00000001", f"{wnids[5]} 1 2 3 4"])
        w.writerow(["ILSVRC2012_val_00000003", f"{wnids[999]} 1 2 3 4"])
    index = scan_images(val)
    assert index.layout.startswith("imagenet-val") and index.labels.tolist() == [5, 791, 999]

    import scipy.io
    (tmp_path / "LOC_val_solution.csv").unlink()
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    order = [wnids[999], wnids[0], wnids[791]]  # the devkit's own id order differs from sorted wnids
    synsets = np.array([(i + 1, w) for i, w in enumerate(order)], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("3\n1\n2\n")
    assert scan_images(val).labels.tolist() == [791, 999, 0]


def test_labels_file_overrides_and_plain_folders_have_no_labels(tmp_path):
    folder = make_folder(tmp_path / "imgs", n_per_class=2, classes=("x", "y"))
    labels = tmp_path / "labels.csv"
    labels.write_text("relative_path,label\nx/000.png,zebra\ny/001.png,ant\n")
    index = scan_images(folder, labels)
    assert index.class_names == ["ant", "zebra"] and index.labels.tolist() == [1, -1, -1, 0]
    labels.write_text("x/001.png,7\n")
    assert scan_images(folder, labels).labels.tolist() == [-1, 7, -1, -1]
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (8, 8)).save(plain / "a.png")
    index = scan_images(plain)
    assert index.layout == "plain" and index.labels.tolist() == [-1] and index.class_names == []


def test_probe_fills_the_visualization_shards_and_refuses_another_dataset(tmp_path, folder):
    out = tmp_path / "atlas"
    assert build.main(["visualize", *MODEL, "--preset", "quick", "--steps", "2", "--layers", "1",
                       "--units", "0-9", "--shard-units", "4", "--out", str(out)]) == 0
    assert build.main(["probe", *MODEL, "--images", str(folder), "--layers", "1", "--workers", "0",
                       "--shard-units", "64", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    ranges = [(s["unit_start"], s["unit_stop"], s["parts"]) for s in manifest["shards"]]
    # the visualized ranges keep their shards and gain the probe; the rest of the layer follows the grid
    assert ranges == [(0, 4, ["viz", "probe"]), (4, 8, ["viz", "probe"]), (8, 10, ["viz", "probe"]),
                      (10, 64, ["probe"]), (64, 128, ["probe"])]
    assert any(f["path"] == "dataset.h5" for f in manifest["files"])
    other = make_folder(tmp_path / "other", n_per_class=2, seed=5)
    assert build.main(["probe", *MODEL, "--images", str(other), "--out", str(out)]) == 2


@pytest.mark.slow
def test_a_killed_probe_resumes_to_the_same_result(tmp_path):
    folder = make_folder(tmp_path / "imgs", n_per_class=80)
    argv = [sys.executable, "build.py", "probe", *MODEL, "--images", str(folder), "--batch-size", "4",
            "--workers", "0", "--checkpoint-every", "0", "--k", "3"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([*argv, "--out", str(tmp_path / "whole")], cwd=ROOT, env=env, check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*argv, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / ".probe" / "vit_tiny_patch16_224-ffn.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not list(out.rglob("*.h5"))
    position = torch.load(state, weights_only=False)["position"]
    assert 0 < position < 240
    result = subprocess.run([*argv, "--out", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    assert not state.exists()
    whole, resumed = atlas.open(tmp_path / "whole"), atlas.open(out)
    for layer in (0, 2):
        for u in (0, 17, 127):
            a, b = whole.unit("vit_tiny_patch16_224", layer, u), resumed.unit("vit_tiny_patch16_224", layer, u)
            assert [t.index for t in a.topk] == [t.index for t in b.topk]
            assert a.stats.mean == pytest.approx(b.stats.mean, rel=1e-6)
            np.testing.assert_array_equal(a.stats.hist, b.stats.hist)
    assert f" {position}/240 " in result.stderr  # the resumed pass started where the state left off
