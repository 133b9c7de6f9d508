"""The demo: the shapes generator, the committed models, a short training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import build
from atlas.manifest import sha256_file
from builder.demo.models import CNN, VIT, WEIGHTS, weights_file
from builder.demo.shapes import CLASSES, generate, make_dataset, read_boxes
from builder.demo.train import RECORD, TrainConfig, accuracy, images_and_labels, train_demo
from builder.models import ModelSource, load_model


def test_the_generator_is_deterministic_and_each_image_independent():
    a, b = generate(3, 17), generate(3, 17)
    assert np.array_equal(a.image, b.image) and a.box == b.box and a.label == b.label == 17 % len(CLASSES)
    assert not np.array_equal(generate(4, 17).image, a.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8


@pytest.mark.parametrize("index", range(0, 400, 7))
def test_boxes_match_the_drawn_objects(index):
    s = generate(11, index)
    without = generate(11, index, with_object=False)
    changed = np.abs(s.image.astype(int) - without.image.astype(int)).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = s.box
    # every pixel the object changed lies in its box, and the object reaches (nearly) every side of it
    assert (xs >= x0).all() and (xs < x1).all() and (ys >= y0).all() and (ys < y1).all()
    assert xs.min() <= x0 + 1 and xs.max() >= x1 - 2 and ys.min() <= y0 + 1 and ys.max() >= y1 - 2


def test_make_dataset_writes_an_imagefolder_with_boxes_and_caches_it(tmp_path, capsys):
    assert build.main(["make-dataset", "--out", str(tmp_path / "d"), "--n", "24", "--seed", "5"]) == 0
    files = sorted(p.relative_to(tmp_path / "d").as_posix() for p in (tmp_path / "d").rglob("*.png"))
    assert len(files) == 24 and {f.split("/")[0] for f in files} == set(CLASSES)
    boxes = read_boxes(tmp_path / "d/boxes.csv")
    assert set(boxes) == set(files) and boxes[files[0]] == generate(5, int(files[0][-9:-4])).box
    stamp = (tmp_path / "d" / files[0]).stat().st_mtime_ns
    make_dataset(tmp_path / "d", 24, 5)
    assert (tmp_path / "d" / files[0]).stat().st_mtime_ns == stamp   # cached: not regenerated


@pytest.mark.slow
def test_the_committed_weights_match_their_record_and_reproduce_its_accuracy():
    record = json.loads((WEIGHTS / RECORD).read_text())
    x, y, _ = images_and_labels(record[VIT]["held_out"]["seed"], record[VIT]["held_out"]["n"])
    for name in (VIT, CNN):
        info = record[name]
        assert sha256_file(weights_file(name)) == info["sha256"]
        lm = load_model(ModelSource(name, checkpoint=str(weights_file(name))))   # the normal --checkpoint path
        got = accuracy(lm.model, x, y)
        assert abs(got - info["held_out_accuracy"]) <= 1 / len(y), (name, got, info["held_out_accuracy"])
        # the registered default tag loads the same file offline
        registered = timm.create_model(name, pretrained=True).state_dict()
        assert all(torch.equal(registered[k], v) for k, v in lm.model.state_dict().items())
    assert record[VIT]["held_out_accuracy"] >= 0.90


@pytest.mark.slow
def test_a_short_training_run_lowers_the_loss(tmp_path):
    cfg = TrainConfig(n_train=512, epochs_vit=4, epochs_cnn=4, batch_size=32, lr=2e-3, held_out_n=64)
    record = train_demo(tmp_path, cfg, [VIT], command="test", progress=False)
    info = record[VIT]
    assert info["train_loss_last"] < info["train_loss_first"] - 0.05
    assert (tmp_path / f"{VIT}.safetensors").exists() and info["sha256"] == sha256_file(tmp_path / f"{VIT}.safetensors")
    assert info["config"]["n_train"] == 512 and info["command"] == "test"


@pytest.mark.slow
def test_train_demo_trains_the_vit_in_two_phases_and_the_image_text_model_from_the_command_line(tmp_path):
    from tests.helpers import run_cli
    code, out, err = run_cli("train-demo", "--models", "vit,clip", "--epochs", "1", "--robust-epochs", "1",
                             "--n-train", "64", "--out", str(tmp_path / "w"))
    assert code == 0, err
    assert "clip_atlas_demo: held-out word accuracy shape" in out and "vit_atlas_demo: held-out accuracy" in out
    record = json.loads((tmp_path / "w" / RECORD).read_text())
    vit, clip = record[VIT], record["clip_atlas_demo"]
    assert vit["standard_phase"]["held_out_accuracy"] >= 0 and vit["config"]["robust_epochs"] == 1
    assert set(clip["held_out_word_accuracy"]) == {"shape", "colour", "texture"}
    assert clip["sha256"] == sha256_file(tmp_path / "w" / "clip_atlas_demo.safetensors")
