"""The paper's experiments as analyses, on tiny cases whose answer is known by construction."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import build
from atlas.format import AtlasError
from builder.analyses import ANALYSES, AnalysisJob, run_analysis
from builder.analyses.common import labelled
from builder.analyses.foreground import box_mask, read_boxes
from builder.analyses.frequency import filtered
from builder.analyses.spatial import FRACTIONS, blackout, linear_fit
from builder.analyses.token_mixing import embed, isolated_cls_logits, token_logits
from builder.dataset import scan_images
from builder.models import ModelSource, load_model
from tests.conftest import TINY_MODEL, TINY_VIT
from tests.helpers import image_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(**changes):
    torch.manual_seed(0)
    return load_model(ModelSource("vit_tiny_patch16_224", random_init=True), **{**TINY_VIT, "num_classes": 3, **changes})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return scan_images(image_folder(tmp_path_factory.mktemp("labelled")))


def job(tmp_path, index=None, **kw):
    return AnalysisJob(out=tmp_path / "atlas", name="vit_tiny_patch16_224", index=index, workers=0, batch_size=8, **kw)


# -- labels ---------------------------------------------------------------------------------------

def test_labels_follow_the_models_class_names_and_limit_spans_every_class(images):
    lm = tiny()
    assert (labelled(lm, images).labels == images.labels).all()  # no names: the folder's index
    lm.model.pretrained_cfg = {**lm.model.pretrained_cfg, "label_names": ["c", "x", "a"], "label_offset": 1}
    mapped = labelled(lm, images)
    assert len(mapped.paths) == 24 and all(p.split("/")[0] != "b" for p in mapped.paths)  # b: not a class
    assert {p.split("/")[0]: int(y) for p, y in zip(mapped.paths, mapped.labels)} == {"a": 3, "c": 1}
    # a limit takes evenly spaced images, so every class is represented
    few = labelled(tiny(), images, limit=6)
    assert len(few.paths) == 6 and sorted(set(few.labels.tolist())) == [0, 1, 2]
    lm.model.pretrained_cfg["label_names"] = ["dog", "cat"]
    with pytest.raises(AtlasError, match="--labels"):
        labelled(lm, images)


# -- token mixing --------------------------------------------------------------------------------

def test_with_identity_blocks_isolated_cls_is_normal_cls_and_every_layer_agrees(tmp_path, images):
    lm = tiny()
    lm.model.blocks = nn.Sequential(*[nn.Identity() for _ in lm.model.blocks])
    x = torch.rand(4, 3, 32, 32)
    tokens = embed(lm.model, x)
    torch.testing.assert_close(isolated_cls_logits(lm.model, tokens), lm.model(x))
    r = ANALYSES["token-mixing"].run(lm, job(tmp_path, images), torch.device("cpu"))
    assert r["isolated_cls_accuracy"] == r["accuracy"] == r["layers"][-1]["cls"]
    assert len({(layer["cls"], layer["patch_average"], layer["patch_max"]) for layer in r["layers"]}) == 1


def test_with_an_identity_last_block_the_last_layers_patches_are_the_previous_ones(tmp_path, images):
    lm = tiny()
    lm.model.blocks[-1] = nn.Identity()
    r = ANALYSES["token-mixing"].run(lm, job(tmp_path, images), torch.device("cpu"))
    assert r["layers"][-1]["patch_average"] == r["layers"][-2]["patch_average"]
    # isolated: the CLS never meets a patch, so every image gets the same prediction
    x = torch.rand(5, 3, 32, 32)
    logits = isolated_cls_logits(lm.model, embed(lm.model, x))
    assert (logits.argmax(-1) == logits[0].argmax()).all()
    counts = np.bincount(images.labels, minlength=3)
    assert r["isolated_cls_accuracy"] in {c / len(images.labels) for c in counts}


def test_token_mixing_numbers_agree_with_a_plain_forward(tmp_path, images):
    lm = tiny()
    r = ANALYSES["token-mixing"].run(lm, job(tmp_path, images), torch.device("cpu"))
    # CLS accuracy read through the per-layer head equals the model's own prediction
    assert r["accuracy"] == r["layers"][-1]["cls"]
    heat = np.array(r["heatmap"])
    assert heat.shape == (4, 4) and r["patch_average"] == pytest.approx(heat.mean())
    assert r["patch_max"] == heat.max() and heat[tuple(r["patch_max_position"])] == heat.max()
    x = torch.rand(2, 3, 32, 32)
    h = embed(lm.model, x)
    for block in lm.model.blocks:
        h = block(h)
    torch.testing.assert_close(token_logits(lm.model, h)[:, 0], lm.model(x))


def test_token_mixing_refuses_cnns_and_unlabelled_images(tmp_path, images):
    cnn = load_model(ModelSource("resnet_atlas_demo", random_init=True))
    with pytest.raises(AtlasError, match="not a timm VisionTransformer"):
        ANALYSES["token-mixing"].run(cnn, job(tmp_path, images), torch.device("cpu"))
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("RGB", (8, 8)).save(plain / "x.png")
    with pytest.raises(AtlasError, match="needs labels"):
        ANALYSES["frequency"].run(tiny(), job(tmp_path, scan_images(plain)), torch.device("cpu"))


# -- foreground / background -----------------------------------------------------------------------

@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_boxes_follow_the_models_own_resize_and_crop(crop_mode):
    """The foreground mask is where a box painted on the image lands after timm's own eval transform
    (create_transform for the model's data config), whatever its crop mode."""
    import timm.data
    config = {"input_size": (3, 32, 32), "crop_pct": 0.8, "crop_mode": crop_mode, "interpolation": "bilinear",
              "mean": (0, 0, 0), "std": (1, 1, 1)}
    size, box = (100, 50), (30, 5, 60, 45)
    painted = np.zeros((size[1], size[0], 3), np.uint8)
    painted[box[1]:box[3], box[0]:box[2]] = 255
    seen = timm.data.create_transform(**config, is_training=False)(Image.fromarray(painted))[0].numpy() > 0.5
    mask = box_mask([box], size, config).numpy()
    assert mask.shape == seen.shape == (32, 32)
    assert (mask != seen).mean() < 0.02 and mask.sum() > 0   # resampling differs at the edge only


def test_boxes_from_csv_loc_solution_and_xml(tmp_path):
    paths = ["a/x.png", "ILSVRC2012_val_00000001.JPEG"]
    (tmp_path / "b.csv").write_text("relative_path,x0,y0,x1,y1\na/x.png,1,2,3,4\na/x.png,5,6,7,8\n")
    assert read_boxes(tmp_path / "b.csv", paths) == {"a/x.png": [(1, 2, 3, 4), (5, 6, 7, 8)]}
    (tmp_path / "loc.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01 1 2 3 4 n01 5 6 7 8 \n")
    assert read_boxes(tmp_path / "loc.csv", paths) == {"ILSVRC2012_val_00000001.JPEG": [(1, 2, 3, 4), (5, 6, 7, 8)]}
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><size><width>10</width><height>10</height></size><object><name>n01</name>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>")
    assert read_boxes(xml, paths) == {"ILSVRC2012_val_00000001.JPEG": [(1.0, 2.0, 3.0, 4.0)]}


def test_a_mask_that_covers_nothing_or_everything_changes_nothing(tmp_path, images):
    lm = tiny()
    boxes = tmp_path / "boxes.csv"
    empty = "\n".join(f"{p},5,5,5,5" for p in images.paths)          # zero-area boxes
    boxes.write_text("relative_path,x0,y0,x1,y1\n" + empty + "\n")
    r = ANALYSES["foreground-background"].run(lm, job(tmp_path, images, boxes=str(boxes)), torch.device("cpu"))
    assert r["accuracy"]["foreground_removed"] == r["accuracy"]["full"] and r["foreground_share"] == 0
    everything = "\n".join(f"{p},-1,-1,100,100" for p in images.paths)
    boxes.write_text("relative_path,x0,y0,x1,y1\n" + everything + "\n")
    r = ANALYSES["foreground-background"].run(lm, job(tmp_path, images, boxes=str(boxes)), torch.device("cpu"))
    assert r["accuracy"]["background_removed"] == r["accuracy"]["full"] and r["foreground_share"] == 1
    assert r["normalized"]["background_removed"]["top1"] == 1.0


# -- frequency -------------------------------------------------------------------------------------

def test_full_bandwidth_filters_change_nothing_and_low_pass_zero_keeps_the_mean():
    x = torch.randn(2, 3, 16, 12)
    torch.testing.assert_close(filtered(x, math.sqrt(2), "low"), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(filtered(x, 0.0, "high"), x, atol=1e-5, rtol=1e-5)
    dc = filtered(x, 0.0, "low")
    torch.testing.assert_close(dc, x.mean(dim=(2, 3), keepdim=True).expand_as(x), atol=1e-5, rtol=1e-5)
    only_dc = filtered(x, 2.0, "high")
    torch.testing.assert_close(only_dc, dc, atol=1e-5, rtol=1e-5)


def test_frequency_curves_start_at_the_plain_accuracy(tmp_path, images):
    lm = tiny()
    r = ANALYSES["frequency"].run(lm, job(tmp_path, images), torch.device("cpu"))
    with torch.no_grad():
        x = torch.stack([lm.eval_transform()(Image.open(images.root / p).convert("RGB")) for p in images.paths])
        accuracy = (lm.model(x).argmax(-1).numpy() == images.labels).mean()
    assert r["low_pass"][0][1] == pytest.approx(accuracy) and r["high_pass"][0][1] == pytest.approx(accuracy)


# -- spatial -------------------------------------------------------------------------------------

class _NoMixing(nn.Module):
    """An attention that returns zeros: tokens never mix, so each patch's units see only that patch."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


def test_blackout_sets_exactly_the_chosen_patches():
    x = torch.rand(3, 8, 8)
    black = torch.tensor([-1.0, -2.0, -3.0]).view(3, 1, 1)
    chosen = torch.zeros(2, 2, 2, dtype=torch.bool)
    chosen[0, 0, 1] = chosen[1, 1, 0] = True
    out = blackout(x, chosen, (2, 2), black)
    assert (out[0, :, :4, 4:] == black).all() and torch.equal(out[0, :, 4:, :], x[:, 4:, :])
    assert (out[1, :, 4:, :4] == black).all() and torch.equal(out[1, :, :4, :], x[:, :4, :])
    assert linear_fit([0, 1, 2], [1, 0.5, 0])["r2"] == pytest.approx(1.0)


def test_without_token_mixing_removing_active_patches_removes_exactly_them(tmp_path, images):
    out = tmp_path / "atlas"
    folder = str(images.root)
    assert build.main(["probe", *TINY_MODEL, "--images", folder, "--workers", "0", "--layers", "0", "--out", str(out)]) == 0
    lm = load_model(ModelSource("vit_tiny_patch16_224", random_init=True), **TINY_VIT)
    for block in lm.model.blocks:
        block.attn = _NoMixing()
    black_image = torch.zeros(1, 3, 32, 32)
    from builder.sites import find_layers, run_to
    layer = find_layers(lm.model, "ffn", lm.input_size)[0]
    with torch.no_grad():
        (black,) = run_to(lm.model, lm.normalize(black_image), [layer])
    # threshold above every black patch's activation: blacked-out patches can never count as active
    threshold = float(black.max()) + 1e-3
    j = AnalysisJob(out=out, name="vit_tiny_patch16_224", index=images, workers=0, layers="0", units="0-31",
                    threshold=threshold)
    r = ANALYSES["spatial"].run(lm, j, torch.device("cpu"))["layers"]["0"]
    assert r["units"] > 0
    # each unit keeps round((1-x) n) of its n active patches: the mean ratio is known exactly
    expected = [np.mean([(n - round(f * n)) / n for n in r["active_patches"].values()]) for f in FRACTIONS]
    np.testing.assert_allclose(r["count"], expected, rtol=1e-6)
    assert r["sum"][0] == pytest.approx(1.0, rel=1e-5) and r["sum"][-1] == 0


# -- sites and the command line --------------------------------------------------------------------

def test_sites_visualizes_every_site_for_the_same_units_and_the_page_shows_them(tmp_path):
    out = tmp_path / "atlas"
    assert build.main(["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "2", "--units", "0-3",
                       "--out", str(out)]) == 0
    assert build.main(["analyze", "sites", *TINY_MODEL, "--layers", "0,2", "--units", "0-1", "--out", str(out)]) == 0
    data = json.loads((out / "analyses/sites.json").read_text())
    r = data["results"]["vit_tiny_patch16_224"]
    assert r["layers"] == [0, 2] and set(r["sites"]) == {"ffn", "q", "k", "v", "attn", "block"}
    assert r["recipe"]["steps"] == 2  # the recipe the atlas used for the FFN units
    for site in ("q", "k", "v", "attn", "block"):
        assert (out / f"shards/vit_tiny_patch16_224/{site}/L02/U00000-00002.h5").exists()
    rows = data["figures"][1]["rows"]
    assert [row["label"] for row in rows] == ["ffn", "q", "k", "v", "attn", "block"]
    assert rows[1]["units"][1] == ["U0001", "vit_tiny_patch16_224/q/L02/U0001"]
    from atlas.website import render
    render(out, workers=1, progress=False)
    page = (out / "site/analyses/sites.html").read_text()
    assert page.count('<a class="tile"') == 2 * 6 * 2 and "unit.html#vit_tiny_patch16_224/q/L02/U0001" in page
    from atlas.website.packs import read_unit
    assert read_unit(out / "site", "vit_tiny_patch16_224", "q", 2, 1)[1]["id"] == "vit_tiny_patch16_224/q/L02/U0001"


def test_a_resumed_build_keeps_results_with_the_same_inputs_and_redoes_changed_ones(tmp_path, images, capsys):
    lm = tiny()
    path = tmp_path / "atlas/analyses/frequency.json"
    run_analysis("frequency", lm, job(tmp_path, images, limit=6), resume=True)
    stamp, first = path.stat().st_mtime_ns, json.loads(path.read_text())
    assert first["inputs"]["vit_tiny_patch16_224"]["limit"] == 6
    again = run_analysis("frequency", lm, job(tmp_path, images, limit=6), resume=True)
    assert "kept for vit_tiny_patch16_224" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == stamp and again["frequency"] == first["results"]["vit_tiny_patch16_224"]
    run_analysis("frequency", lm, job(tmp_path, images, limit=9), resume=True)   # other inputs: computed
    assert json.loads(path.read_text())["results"]["vit_tiny_patch16_224"]["images"] == 9
    stamp = path.stat().st_mtime_ns
    run_analysis("frequency", lm, job(tmp_path, images, limit=9))                # `analyze` always computes
    assert path.stat().st_mtime_ns != stamp


def test_analyze_all_runs_what_applies_and_says_what_it_skips(tmp_path, capsys):
    out = tmp_path / "atlas"
    # the demo CNN names its classes, so the folder's classes must be among them
    images = scan_images(image_folder(tmp_path / "shapes", ("circle", "heart", "star"), 4))
    assert build.main(["analyze", "all", "--model", "resnet_atlas_demo", "--random-init", "--images",
                       str(images.root), "--workers", "0", "--limit", "9", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "token-mixing: skipped" in printed and "needs bounding boxes" in printed
    assert "spatial: skipped" in printed
    assert "sites: skipped" in printed and "no MLP blocks" in printed
    assert sorted(p.stem for p in (out / "analyses").glob("*.json")) == ["frequency"]
    r = json.loads((out / "analyses/frequency.json").read_text())["results"]["resnet_atlas_demo"]
    assert r["images"] == 9
    # the command lists what it wrote in the manifest (it once did only when the sites analysis ran)
    from atlas.verify import verify
    assert "analyses/frequency.json" in {e["path"] for e in json.loads((out / "manifest.json").read_text())["files"]}
    assert not [p for p in verify(out) if "not listed in the manifest" in p.message]
    assert build.main(["analyze", "token-mixing", "--model", "resnet_atlas_demo", "--random-init", "--images",
                       str(images.root), "--out", str(out)]) == 2
    assert build.main(["analyze", "nonsense", *TINY_MODEL, "--out", str(out)]) == 2
