"""`vit-atlas label` end to end (issue 31): a tiny random-init ViT probed over the demo's shapes, labelled
from all three sources, and every stored label re-derived outside the label code: NetDissect's IoU by brute
force from the layer's own activations (a forward hook, not the builder's capture), INVERT's AUC and
OR-formula by pairwise counts over the probe's scores with concepts read from the tables by hand, and
CLIP-Dissect's soft-WPMI by its paper's loop. Planted concepts (image sets chosen from a unit's scores) must
come out as that unit's best label. Then resuming a killed pass, bad input, the reader and the export."""
from __future__ import annotations

import csv
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import build
from atlas.labels import label_file
from atlas.media import model_view
from atlas.reader import Atlas
from tests.conftest import TINY_MODEL, TINY_VIT
from tests.helpers import assert_refused, run_cli
from tests.test_label_scores import clip_dissect_soft_wpmi

NAME = "vit_tiny_patch16_224"
LABEL = ["label", *TINY_MODEL, "--layers", "0-1", "--workers", "0", "--batch-size", "16"]   # batch size last
PLANTED = (1, 7)            # the unit a planted concept is cut for
OR_UNIT = (1, 11)           # the unit whose top images are split into two concepts


def pairwise_auc(scores: np.ndarray, members: np.ndarray) -> float:
    """P(score of a member > score of a non-member) + half the ties, counted pair by pair."""
    pos, neg = scores[members], scores[~members]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(atlas, dataset folder, concept dataset, attribute table, the planted concepts' images)."""
    base = tmp_path_factory.mktemp("labels")
    ds, concepts, out = base / "shapes", base / "concepts", base / "atlas"
    assert build.main(["make-dataset", "--out", str(ds), "--n", "128", "--seed", "5", "--concepts", str(concepts),
                       "--concept-images", "40"]) == 0
    assert build.main(["probe", *TINY_MODEL, "--images", str(ds), "--layers", "0-1", "--k", "5", "--workers", "0",
                       "--related", "exact", "--out", str(out)]) == 0
    a = Atlas(out)
    scores = a.image_scores(NAME, "ffn")
    column = lambda layer, unit: scores.scores[:, np.flatnonzero((scores.layer == layer) & (scores.unit == unit))[0]]  # noqa: E731
    order = np.argsort(-column(*PLANTED).astype(np.float64), kind="stable")
    hi = set(order[:len(order) // 4].tolist())                        # the unit's top quarter
    top = np.argsort(-column(*OR_UNIT).astype(np.float64), kind="stable")[:16].tolist()
    left, right = set(top[0::2]), set(top[1::2])                    # its top 16, dealt into two halves
    table = base / "planted.csv"
    with open(ds / "attributes.csv") as f, open(table, "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["relative_path", "color", "planted"])
        rows = list(csv.DictReader(f))
        row_of = {p: i for i, p in enumerate(a.dataset.paths)}
        for r in rows:
            i = row_of[r["relative_path"]]
            w.writerow([r["relative_path"], r["color"], ";".join(
                name for name, group in (("planted-hi", hi), ("planted-left", left), ("planted-right", right)) if i in group)])
    assert build.main([*LABEL, "--broden", str(concepts), "--classes", "--attributes", str(table), "--clip", "demo",
                       "--out", str(out)]) == 0
    return out, ds, concepts, table, {"hi": hi, "left": left, "right": right}


def layer_activations(layer: int, images: list[Image.Image]) -> torch.Tensor:
    """The post-GELU FFN activations of ``layer`` [n, h, w, units], through a forward hook on timm's block."""
    from builder.models import ModelSource, load_model
    lm = load_model(ModelSource(NAME, random_init=True), **TINY_VIT)
    grabbed = []
    handle = lm.model.blocks[layer].mlp.act.register_forward_hook(lambda m, i, o: grabbed.append(o.detach()))
    transform = lm.eval_transform()
    with torch.no_grad():
        lm.model(torch.stack([transform(im) for im in images]))
    handle.remove()
    tokens = grabbed[0][:, lm.model.num_prefix_tokens:]                  # [n, 16, units]
    side = int(math.isqrt(tokens.shape[1]))
    return tokens.reshape(len(images), side, side, -1), lm.data_config


def test_netdissect_labels_are_the_brute_force_iou_of_each_units_thresholded_maps(labelled):
    out, _, concepts, _, _ = labelled
    with h5py.File(out / label_file(NAME, "ffn")) as f:
        g = f["netdissect"]
        layer_of, unit_of, concept, score, threshold = (g[k][()] for k in ("layer", "unit", "concept", "score", "extra"))
        names = [x.decode() for x in g["names"][()]]
        categories = [x.decode() for x in g["categories"][()]]
        assert g.attrs["quantile"] == 0.005 and g.attrs["images"] == 40
    label_names = {int(r["number"]): r["name"] for r in csv.DictReader(open(concepts / "label.csv"))}
    index = list(csv.DictReader(open(concepts / "index.csv")))
    images = [Image.open(concepts / "images" / r["image"]).convert("RGB") for r in index]
    acts, config = layer_activations(0, images)
    acts = acts.permute(0, 3, 1, 2)                                              # [n, units, 4, 4]
    up = F.interpolate(acts, size=(32, 32), mode="bilinear", align_corners=False)
    masks = {}                                  # per image: category -> label numbers in the model's view
    for r in index:
        for cat in ("color", "object", "texture"):
            rgb = Image.open(concepts / "images" / r[cat]).convert("RGB")
            view = np.asarray(model_view(rgb, {**config, "interpolation": "nearest"}, 32), np.int64)
            masks.setdefault(r["image"], {})[cat] = view[..., 0] + 256 * view[..., 1]
    rows = np.flatnonzero(layer_of == 0)
    assert len(rows) == 128 and (unit_of[rows] == np.arange(128)).all()
    checked = 0
    for j in rows[::9]:
        u = unit_of[j]
        values = acts[:, u].flatten().double().numpy()
        # the threshold: the top 0.5% of the unit's patch values, from a histogram (within one of its bins)
        assert (values > threshold[j, 0]).mean() >= 0.005 and (values > threshold[j, 0]).mean() < 0.05
        on = (up[:, u] > float(threshold[j, 0])).numpy()                         # [n, 32, 32]
        iou = {}
        for number, name in label_names.items():
            if number == 0:
                continue
            cat = next(c for c in ("color", "object", "texture") if any((m[c] == number).any() for m in masks.values()))
            inter = union_extra = mask_total = 0
            for i, r in enumerate(index):
                m = masks[r["image"]][cat] == number
                present = (masks[r["image"]][cat][on[i]] > 0).any()    # NetDissect: the category under the unit
                inter += (m & on[i]).sum()
                union_extra += on[i].sum() if present else 0
                mask_total += m.sum()
            iou[name] = inter / (union_extra + mask_total - inter + 1e-10)
        best = sorted(iou.items(), key=lambda x: -x[1])[:5]
        got = [(names[c], s) for c, s in zip(concept[j], score[j]) if c >= 0]
        assert [n for n, _ in got][:1] == [best[0][0]] or math.isclose(iou[got[0][0]], best[0][1], abs_tol=1e-6)
        for n, s in got:
            assert s == pytest.approx(iou[n], abs=1e-5), (u, n)
        assert categories[concept[j][0]] in ("color", "object", "texture")
        checked += 1
    assert checked >= 14


def concept_memberships(ds, table, paths) -> dict[str, np.ndarray]:
    """Image-level concepts read by hand: each image's class (its folder) and every table cell."""
    members = {}
    for i, p in enumerate(paths):
        members.setdefault(p.split("/")[0], np.zeros(len(paths), bool))[i] = True
    row_of = {p: i for i, p in enumerate(paths)}
    for r in csv.DictReader(open(table)):
        for column in ("color", "planted"):
            for name in filter(None, r[column].split(";")):
                members.setdefault(name, np.zeros(len(paths), bool))[row_of[r["relative_path"]]] = True
    return {k: v for k, v in members.items() if 0 < v.mean() < 1}


def test_invert_labels_are_pairwise_aucs_and_the_planted_concepts_win(labelled):
    out, ds, _, table, planted = labelled
    a = Atlas(out)
    scores = a.image_scores(NAME, "ffn")
    members = concept_memberships(ds, table, a.dataset.paths)
    for j in range(0, len(scores.layer), 23):
        layer, unit = int(scores.layer[j]), int(scores.unit[j])
        s = scores.scores[:, j].astype(np.float64)
        want = sorted(((pairwise_auc(s, m), name) for name, m in members.items()), key=lambda x: -x[0])
        got = [x for x in a.unit_labels(NAME, "ffn", layer, unit) if x.source == "invert" and x.category != "formula"]
        assert len(got) == 5 and got[0].score == pytest.approx(want[0][0], abs=1e-6)
        for label in got:
            assert label.score == pytest.approx(pairwise_auc(s, members[label.concept]), abs=1e-6)
    best = [x for x in a.unit_labels(NAME, "ffn", *PLANTED) if x.source == "invert"][0]
    assert (best.concept, best.rank) == ("planted-hi", 0) and best.score > 0.99 and best.p_value < 1e-6
    formula = [x for x in a.unit_labels(NAME, "ffn", *OR_UNIT) if x.category == "formula"]
    assert len(formula) == 1 and set(formula[0].concept.split(" OR ")) == {"planted-left", "planted-right"}
    s = scores.scores[:, np.flatnonzero((scores.layer == OR_UNIT[0]) & (scores.unit == OR_UNIT[1]))[0]].astype(np.float64)
    assert formula[0].score == pytest.approx(pairwise_auc(s, members["planted-left"] | members["planted-right"]), abs=1e-6)


def test_clip_dissect_labels_are_its_papers_soft_wpmi_over_the_demo_image_text_model(labelled):
    from builder.demo.clip import DemoClip
    out, ds, _, _, _ = labelled
    a = Atlas(out)
    model = DemoClip.load(torch.device("cpu"))
    words = [w for w, _ in model.default_words]
    images = [Image.open(ds / p).convert("RGB") for p in a.dataset.paths]
    similarity = (model.embed_images(images) @ model.embed_texts(words).T).double().numpy()
    scores = a.image_scores(NAME, "ffn")
    cols = scores.columns(1)
    want = clip_dissect_soft_wpmi(similarity, scores.scores[:, cols].astype(np.float64))      # [units, words]
    for k, j in enumerate(cols[::11]):
        got = [x for x in a.unit_labels(NAME, "ffn", 1, int(scores.unit[j])) if x.source == "clip-dissect"]
        row = want[list(cols).index(j)]
        assert got[0].score == pytest.approx(row.max(), abs=1e-4)
        for label in got:
            assert label.score == pytest.approx(row[words.index(label.concept)], abs=1e-4)
            assert label.category in {c for _, c in model.default_words}


def test_a_killed_netdissect_pass_resumes_to_the_same_labels(labelled, tmp_path, monkeypatch):
    """Killed after its thresholds and a few batches (state saved every batch), then run again with another
    batch size: the same labels as the uninterrupted run's, bit for bit."""
    from builder.labels import scores as label_scores
    out, _, concepts, _, _ = labelled
    again = tmp_path / "again"
    assert build.main(["probe", *TINY_MODEL, "--images", str(labelled[1]), "--layers", "0-1", "--k", "5",
                       "--workers", "0", "--related", "exact", "--out", str(again)]) == 0
    calls = {"n": 0}
    real = label_scores.IoUTally.add_batch

    def dies(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *args)
    monkeypatch.setattr(label_scores.IoUTally, "add_batch", dies)
    assert build.main([*LABEL[:-1], "8", "--broden", str(concepts), "--checkpoint-every", "0", "--out", str(again)]) == 130
    assert list((again / ".probe").glob("labels-*"))                 # its state survived the kill
    monkeypatch.setattr(label_scores.IoUTally, "add_batch", real)
    assert build.main([*LABEL[:-1], "32", "--broden", str(concepts), "--out", str(again)]) == 0
    with h5py.File(out / label_file(NAME, "ffn")) as f, h5py.File(again / label_file(NAME, "ffn")) as g:
        for name in ("layer", "unit", "concept", "score", "extra"):
            np.testing.assert_array_equal(f["netdissect"][name][()], g["netdissect"][name][()])
    assert not list((again / ".probe").glob("labels-*"))


def test_label_refuses_bad_input_in_one_line(labelled, tmp_path):
    out, ds, concepts, table, _ = labelled
    before = (out / label_file(NAME, "ffn")).read_bytes()
    assert_refused(run_cli(*LABEL, "--out", str(out)), "needs a source")
    assert_refused(run_cli(*LABEL, "--broden", str(tmp_path), "--out", str(out)), "no index.csv")
    assert_refused(run_cli(*LABEL, "--classes", "--k", "0", "--out", str(out)), "--k")
    assert_refused(run_cli(*LABEL, "--clip", "nonsense", "--out", str(out)), "open_clip model name")
    assert_refused(run_cli(*LABEL, "--attributes", str(tmp_path / "none.csv"), "--out", str(out)), "cannot be read")
    unprobed = tmp_path / "unprobed"
    assert_refused(run_cli(*LABEL, "--classes", "--out", str(unprobed)), "run the probe")
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for name in ("category.csv", "label.csv", "c_color.csv", "c_object.csv", "c_texture.csv"):
        (hostile / name).write_bytes((concepts / name).read_bytes())
    rows = (concepts / "index.csv").read_text().splitlines()
    (hostile / "index.csv").write_text("\n".join([rows[0], rows[1].replace("00000.png", "../../../etc/passwd", 1)]))
    assert_refused(run_cli(*LABEL, "--broden", str(hostile), "--out", str(out)), "not a plain relative file name")
    assert (out / label_file(NAME, "ffn")).read_bytes() == before        # nothing finished was touched


def test_a_damaged_label_file_is_left_out_with_a_warning_and_verify_names_it(labelled, tmp_path, capsys):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(labelled[0], out)
    path = out / label_file(NAME, "ffn")
    with h5py.File(path, "r+") as f:
        f["invert/concept"][0, 0] = 10_000                              # past its concept set
    a = Atlas(out)
    assert [x.source for x in a.unit_labels(NAME, "ffn", 0, 0)] == []
    assert "leaving out the labels" in capsys.readouterr().out
    assert build.main(["verify", str(out)]) == 2
    assert label_file(NAME, "ffn") in capsys.readouterr().out


def test_labels_are_a_table_of_the_export(labelled, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    out = labelled[0]
    assert build.main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    files = sorted((tmp_path / "export" / "labels").glob("*.parquet"))
    assert files and "config_name: labels" in (tmp_path / "export" / "README.md").read_text()
    table = pq.read_table(files[0]).to_pylist()
    a = Atlas(out)
    row = next(r for r in table if r["source"] == "invert" and r["layer"] == PLANTED[0] and r["unit"] == PLANTED[1]
               and r["rank"] == 0)
    best = [x for x in a.unit_labels(NAME, "ffn", *PLANTED) if x.source == "invert"][0]
    assert (row["concept"], row["score"]) == (best.concept, pytest.approx(best.score))
    assert len({(r["source"], r["layer"], r["unit"]) for r in table}) == 3 * 2 * 128


# -- planted detectors ------------------------------------------------------------------------------

RED, PLAIN = 0, 1           # the planted units of block 0


class PlantedUnits(torch.nn.Module):
    """Block 0's fc1, replaced: each token is its patch's pixels (the patch embedding is the identity), and
    unit RED fires on the share of the patch's pixels that are the generator's red (R > 0.7, G and B < 0.35),
    unit PLAIN on a patch of one flat colour (every channel's range under 0.03); every other unit is 0."""

    def __init__(self, units: int):
        super().__init__()
        self.out_features = units

    def forward(self, x):
        pixels = ((x[..., :192] + 1) / 2).unflatten(-1, (3, 64))          # [B, T, channel, pixel] in [0, 1]
        red = ((pixels[..., 0, :] > 0.7) & (pixels[..., 1, :] < 0.35) & (pixels[..., 2, :] < 0.35)).float().mean(-1)
        flat = ((pixels.amax(-1) - pixels.amin(-1)).amax(-1) < 0.03).float()
        out = torch.zeros(*x.shape[:-1], self.out_features)
        out[..., RED] = 4 * red - 0.5
        out[..., PLAIN] = 2 * flat - 0.5
        out[:, 0] = 0                                                        # the class token fires on nothing
        return out


def planted_model():
    """A timm ViT (8-pixel patches, 192 channels) whose block 0 holds the planted units by construction."""
    from builder.models import ModelSource, load_model
    lm = load_model(ModelSource(NAME, random_init=True), **{**TINY_VIT, "embed_dim": 192, "num_heads": 2, "depth": 1})
    m = lm.model
    with torch.no_grad():
        m.patch_embed.proj.weight.copy_(torch.eye(192).view(192, 3, 8, 8))   # token channel c*64 + 8y + x
        m.patch_embed.proj.bias.zero_()
        m.pos_embed.zero_()
        m.cls_token.zero_()
        m.blocks[0].attn.proj.weight.zero_()                               # attention adds nothing
        m.blocks[0].attn.proj.bias.zero_()
    m.blocks[0].norm2 = torch.nn.Identity()
    m.blocks[0].mlp.fc1 = PlantedUnits(m.blocks[0].mlp.fc2.in_features)
    assert lm.mean == (0.5, 0.5, 0.5) and lm.std == (0.5, 0.5, 0.5)         # tokens are 2 * pixel - 1
    return lm


def test_planted_detectors_are_labelled_with_their_concept_by_every_source_that_sees_it(labelled, tmp_path):
    """The red unit is labelled red by netdissect (colour masks), invert (the colour column) and clip-dissect
    (the demo image-text model's colour words, 99% right on held-out captions); the plain unit is labelled
    plain by netdissect and invert (the texture masks and column). Each score re-derived in numpy."""
    from builder.dataset import scan_images
    from builder.labels import LabelJob, run_labels
    from builder.probe import ProbeJob, run_probe
    from builder.spec import LabelSources
    _, ds, concepts, _, _ = labelled
    lm = planted_model()
    out = tmp_path / "planted"
    run_probe(lm, scan_images(ds), ProbeJob(out=out, name="planted", k=5, workers=0, related="exact", progress=False))
    run_labels(lm, LabelJob(out=out, name="planted", workers=0, progress=False, sources=LabelSources(
        broden=concepts, attributes=ds / "attributes.csv", clip="demo")))
    a = Atlas(out)
    best = {(unit, x.source): x for unit in (RED, PLAIN) for x in a.unit_labels("planted", "ffn", 0, unit) if x.rank == 0}
    assert {s: best[RED, s].concept for s in ("netdissect", "invert", "clip-dissect")} == \
        {"netdissect": "red", "invert": "red", "clip-dissect": "red"}
    assert {s: best[PLAIN, s].concept for s in ("netdissect", "invert")} == {"netdissect": "plain", "invert": "plain"}
    assert best[RED, "netdissect"].score > 0.3 and best[PLAIN, "netdissect"].score > 0.1      # detectors (>= 0.04)
    # the scores, re-derived: IoU from the unit's own maps, AUC from pairwise counts, soft-WPMI from its loop
    index = list(csv.DictReader(open(concepts / "index.csv")))
    images = [Image.open(concepts / "images" / r["image"]).convert("RGB") for r in index]
    x = torch.stack([lm.eval_transform()(im) for im in images])
    grabbed = []
    handle = lm.model.blocks[0].mlp.act.register_forward_hook(lambda m, i, o: grabbed.append(o))
    with torch.no_grad():
        lm.model(x)
    handle.remove()
    maps = grabbed[0][:, 1:].reshape(len(images), 4, 4, -1).permute(0, 3, 1, 2)       # the patches' tokens
    up = F.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False)
    numbers = {r["name"]: int(r["number"]) for r in csv.DictReader(open(concepts / "label.csv"))}
    for unit, concept, cat in ((RED, "red", "color"), (PLAIN, "plain", "texture")):
        label = best[unit, "netdissect"]
        on = (up[:, unit] > label.threshold).numpy()
        inter = union = 0
        for i, r in enumerate(index):
            rgb = Image.open(concepts / "images" / r[cat]).convert("RGB")
            view = np.asarray(model_view(rgb, {**lm.data_config, "interpolation": "nearest"}, 32), np.int64)
            m = view[..., 0] + 256 * view[..., 1]
            inter += (on[i] & (m == numbers[concept])).sum()
            union += (on[i].sum() if (m[on[i]] > 0).any() else 0) + (m == numbers[concept]).sum()
        assert label.score == pytest.approx(inter / (union - inter), abs=1e-5)
    scores = a.image_scores("planted", "ffn")
    table = list(csv.DictReader(open(ds / "attributes.csv")))
    row_of = {p: i for i, p in enumerate(a.dataset.paths)}
    for unit, column, concept in ((RED, "color", "red"), (PLAIN, "texture", "plain")):
        members = np.zeros(len(row_of), bool)
        members[[row_of[r["relative_path"]] for r in table if concept in r[column].split(";")]] = True
        s = scores.scores[:, np.flatnonzero(scores.unit == unit)[0]].astype(np.float64)
        assert best[unit, "invert"].score == pytest.approx(pairwise_auc(s, members), abs=1e-6)
        assert best[unit, "invert"].score > 0.9
    from builder.demo.clip import DemoClip
    clip = DemoClip.load(torch.device("cpu"))
    words = [w for w, _ in clip.default_words]
    similarity = (clip.embed_images([Image.open(ds / p).convert("RGB") for p in a.dataset.paths])
                  @ clip.embed_texts(words).T).double().numpy()
    wpmi = clip_dissect_soft_wpmi(similarity, scores.scores[:, scores.columns(0)].astype(np.float64))
    assert best[RED, "clip-dissect"].score == pytest.approx(wpmi[RED, words.index("red")], abs=1e-4)
