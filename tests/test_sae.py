"""SAE latents as units (issue 23): checkpoints in each format's own layout, made here with random weights,
give the latents a plain numpy encoder written from each format's documented formula gives, through the
visualize and the probe paths; a pickle that would run code is refused."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import atlas
import build
from builder.sae import load_sae
from tests.conftest import TINY_MODEL, TINY_VIT
from tests.helpers import assert_refused, image_folder, run_cli, save_prisma_checkpoint

D, LATENTS, LAYER = TINY_VIT["embed_dim"], 48, 1
MODEL = "vit_tiny_patch16_224"


def weights(seed: int, d_sae: int = LATENTS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D, d_sae, generator=g) / D ** 0.5, "b_enc": torch.randn(d_sae, generator=g) * 0.1,
            "W_dec": torch.randn(d_sae, D, generator=g) / d_sae ** 0.5, "b_dec": torch.randn(D, generator=g) * 0.1}


def saelens(folder, seed=0, architecture="standard", flat=False, **cfg):
    """cfg.json + sae_weights.safetensors as SAELens writes them (6.x: metadata.hook_name; before: flat)."""
    w = weights(seed)
    if architecture == "jumprelu":
        w["threshold"] = torch.rand(LATENTS, generator=torch.Generator().manual_seed(seed + 1)) * 0.2
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae_weights.safetensors"))
    hook = f"blocks.{LAYER}.hook_resid_post"
    base = {"d_in": D, "d_sae": LATENTS, "dtype": "float32", "apply_b_dec_to_input": True,
            "normalize_activations": "none", **cfg}
    if flat:
        base.update(hook_name=hook, hook_layer=LAYER, activation_fn_str="topk" if architecture == "topk" else "relu",
                    activation_fn_kwargs={"k": cfg.get("k", 5)} if architecture == "topk" else {})
        base.pop("k", None)
    else:
        base.update(architecture=architecture, metadata={"hook_name": hook, "model_name": MODEL})
    (folder / "cfg.json").write_text(json.dumps(base))
    return folder, {k: v.numpy() for k, v in w.items()}


def prisma(folder, seed=0, pickled=False, **cfg):
    """ViT-Prisma: config.json + a state dict .pt, or (newer) a pickled config class inside weights.pt."""
    w = weights(seed)
    folder.mkdir(parents=True)
    config = {"d_in": D, "d_sae": LATENTS, "hook_point_layer": LAYER, "layer_subtype": "hook_mlp_out",
              "hook_point": f"blocks.{LAYER}.hook_mlp_out", "activation_fn_str": "relu", "activation_fn_kwargs": {},
              "normalize_activations": "layer_norm", "cls_token_only": False, "architecture": "standard", **cfg}
    if pickled:
        save_prisma_checkpoint(folder / "weights.pt", w, {**config, "device": torch.device("cpu"),
                                                          "dtype": torch.float32})
    else:
        (folder / "config.json").write_text(json.dumps(config))
        torch.save(w, folder / "n_images_1000.pt")
    return folder, {k: v.numpy() for k, v in w.items()}


def saev(path, seed=0, schema=2, activation="TopK", top_k=5, threshold=None):
    """saev's sae.pt: one JSON header line, then torch.save of the state dict (a BatchTopK's with its
    inference threshold, ``activation.threshold``)."""
    w = weights(seed)
    if threshold is not None:
        w["activation.threshold"] = torch.tensor(threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {"d_vit": D, "exp_factor": LATENTS // D if LATENTS % D == 0 else 1, "seed": 0}
    header = ({"schema": 2, "cfg": {**cfg, "activation": {"cls": activation, "params": {"top_k": top_k}
                                                          if activation != "Relu" else {}}}, "lib": "x"}
              if schema == 2 else cfg)
    buf = io.BytesIO()
    torch.save(w, buf)
    path.write_bytes((json.dumps(header) + "\n").encode() + buf.getvalue())
    return path, {k: v.numpy() for k, v in w.items()}


# -- the reference: numpy, from each format's documented formula --------------------------------------

def reference(x: np.ndarray, w: dict, activation="relu", k=None, subtract=True, norm="none", topk_relu=True,
              rescale=False, threshold="threshold"):
    x = x.astype(np.float64)
    if norm == "layer_norm":
        x = x - x.mean(-1, keepdims=True)
        x = x / (x.std(-1, ddof=1, keepdims=True) + 1e-5)
    if subtract:
        x = x - w["b_dec"]
    pre = x @ w["W_enc"].astype(np.float64) + w["b_enc"]
    if rescale:                                       # SAELens rescale_acts_by_decoder_norm
        pre = pre * np.linalg.norm(w["W_dec"].astype(np.float64), axis=-1)
    if activation == "relu":
        return np.maximum(pre, 0)
    if activation == "jumprelu":
        return np.maximum(pre, 0) * (pre > w[threshold])
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    kept = np.take_along_axis(pre, idx, -1)
    np.put_along_axis(out, idx, np.maximum(kept, 0) if topk_relu else kept, -1)
    return out


def tokens_at(x: torch.Tensor, where: str) -> np.ndarray:
    """The tiny ViT's tokens at block LAYER (its output, or its ls2's) for normalized images, by a plain
    forward hook on the timm model (the same random weights the command line builds)."""
    from builder.models import ModelSource, load_model
    model = load_model(ModelSource(MODEL, random_init=True), **TINY_VIT).model
    got = {}
    module = model.blocks[LAYER] if where == "resid_post" else model.blocks[LAYER].ls2
    handle = module.register_forward_hook(lambda m, i, o: got.setdefault("t", o.detach()))
    with torch.no_grad():
        model(x.float())
    handle.remove()
    return got["t"].numpy()


def model_config():
    from builder.models import ModelSource, load_model
    lm = load_model(ModelSource(MODEL, random_init=True), **TINY_VIT)
    return lm.data_config, torch.tensor(lm.mean).view(1, 3, 1, 1), torch.tensor(lm.std).view(1, 3, 1, 1)


CASES = {
    "saelens-relu": (lambda p: saelens(p), dict(), "resid_post"),
    "saelens-jumprelu": (lambda p: saelens(p, 1, "jumprelu"), dict(activation="jumprelu"), "resid_post"),
    "saelens-topk-flat": (lambda p: saelens(p, 2, "topk", flat=True, k=5, normalize_activations="layer_norm"),
                          dict(activation="topk", k=5, norm="layer_norm"), "resid_post"),
    "prisma": (lambda p: prisma(p, 3), dict(norm="layer_norm"), "mlp_out"),
    "prisma-pickled-config": (lambda p: prisma(p, 4, pickled=True), dict(norm="layer_norm"), "mlp_out"),
    "saev-topk": (lambda p: saev(p / "sae.pt", 5), dict(activation="topk", k=5, subtract=False, topk_relu=False),
                  "resid_post"),
    "saev-relu-before-schema": (lambda p: saev(p / "sae.pt", 6, schema=1, activation="Relu"), dict(), "resid_post"),
    # issue 30: a SAELens trainer's topk checkpoint (decoder-norm rescaling, unfolded) and a saev BatchTopK
    "saelens-topk-rescaled": (lambda p: saelens(p, 7, "topk", k=5, rescale_acts_by_decoder_norm=True),
                              dict(activation="topk", k=5, rescale=True), "resid_post"),
    "saev-batchtopk": (lambda p: saev(p / "sae.pt", 8, activation="BatchTopK", threshold=0.05),
                       dict(activation="jumprelu", subtract=False, threshold="activation.threshold"), "resid_post"),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("sae-images"), ("a", "b"), 6, 32)


# the quick loop runs two cases (SAELens with layer norm and topk; a pickled ViT-Prisma config); CI runs all
QUICK = ("saelens-topk-flat", "prisma-pickled-config")


@pytest.mark.parametrize("case", [c if c in QUICK else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_latents_equal_the_formula_through_visualize_and_probe(case, tmp_path, images):
    make, formula, where = CASES[case]
    path, w = make(tmp_path / "ckpt")
    sae = load_sae(path)
    assert (sae.d_in, sae.d_sae, sae.hook) == (D, LATENTS, where)
    out = tmp_path / "atlas"
    layers = [] if sae.layer is not None else ["--layers", str(LAYER)]
    common = [*TINY_MODEL, "--site", "sae", "--sae", str(path), *layers, "--out", str(out)]
    assert build.main(["visualize", *common, "--preset", "quick", "--steps", "3", "--units", "0-7"]) == 0
    assert build.main(["probe", *common, "--images", str(images), "--k", "4", "--workers", "0"]) == 0
    site = f"sae-{sae.name}"
    data_config, mean, std = model_config()
    with atlas.open(out) as a:
        units = [a.unit(MODEL, LAYER, u, site=site) for u in range(8)]
        # visualize: the stored activation and map are the latent's own values on the stored picture
        pixels = torch.from_numpy(np.stack([u.picture("viz").image for u in units])).permute(0, 3, 1, 2)
        lat = reference(tokens_at((pixels / 255 - mean) / std, where)[:, 1:], w, **formula)   # [n, T, d_sae]
        for i, u in enumerate(units):
            want = lat[i, :, i].reshape(u.picture("viz").map.shape)
            np.testing.assert_allclose(u.picture("viz").map.astype(np.float64), want, atol=2e-3)   # float16 maps
            assert abs(u.picture("viz").activation - want.mean()) <= 1e-5 * max(1, abs(want.mean()))
        # probe: each image's score is the latent's mean over the patches, and the top-k are the largest
        import timm.data
        from atlas.images import load_rgb
        transform = timm.data.create_transform(**data_config, is_training=False)
        x = torch.stack([transform(load_rgb(a.dataset.root / p)) for p in a.dataset.paths])
        scores = reference(tokens_at(x, where)[:, 1:], w, **formula).mean(axis=1)          # [images, d_sae]
        for u in units:
            np.testing.assert_allclose([t.score for t in u.topk], np.sort(scores[:, u.index])[::-1][:len(u.topk)],
                                       rtol=1e-5, atol=1e-6)
        assert a.shard_attrs(MODEL, LAYER, site=site)["sae"]["sha256"] == sae.sha256   # the SAE's identity, recorded


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"d_in": D, "d_sae": LATENTS, "hook_point_layer": LAYER}))
    torch.save({"state_dict": weights(0), "cfg": Payload()}, folder / "weights.pt")
    out = tmp_path / "atlas"
    assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(folder), "--steps", "1",
                           "--preset", "quick", "--out", str(out)), "refused", "system")
    assert not (tmp_path / "pwned").exists() and not (out / "shards").exists()


def test_an_sae_for_another_model_or_block_is_one_line(tmp_path):
    path, _ = saelens(tmp_path / "ok")
    assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(path), "--layers", "2",
                           "--out", str(tmp_path / "a")), "leaves out")
    wide = tmp_path / "wide"
    wide.mkdir()
    w = {k: torch.cat([v, v], dim=0) if k in ("W_enc",) else v for k, v in weights(0).items()}
    save_file(w, str(wide / "sae_weights.safetensors"))
    (wide / "cfg.json").write_text((path / "cfg.json").read_text())
    assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(wide), "--out", str(tmp_path / "b")),
                   "W_enc is 64x48")
    assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--out", str(tmp_path / "c")), "--sae PATH")


@pytest.mark.slow
def test_latents_and_neurons_are_related_and_the_website_shows_them_side_by_side(tmp_path, images):
    """An SAE site probed beside the model's neurons: each latent's related units elsewhere in its model
    are neurons (and theirs latents), by the correlation of their per-image scores; the website's unit
    record lists them, and an SAE unit's page works like a neuron's."""
    from atlas.website import render
    from atlas.website.packs import read_unit
    path, _ = saelens(tmp_path / "ckpt")
    out = tmp_path / "atlas"
    probe = ["probe", *TINY_MODEL, "--images", str(images), "--k", "4", "--workers", "0", "--related", "exact",
             "--out", str(out)]
    assert build.main(probe + ["--layers", str(LAYER)]) == 0
    assert build.main(probe + ["--site", "sae", "--sae", str(path)]) == 0
    assert build.main(["visualize", *TINY_MODEL, "--site", "sae", "--sae", str(path), "--preset", "quick",
                       "--steps", "2", "--units", "0-3", "--out", str(out)]) == 0
    site = "sae-ckpt"
    with atlas.open(out) as a:
        latent = a.unit(MODEL, LAYER, 2, site=site)
        elsewhere = [r for r in latent.related if r.scope == "same model"]
        assert elsewhere and all(atlas.parse_unit_id(r.id)[1] == "ffn" for r in elsewhere)
        neuron = a.unit(MODEL, LAYER, 5)
        assert any(atlas.parse_unit_id(r.id)[1] == site for r in neuron.related if r.scope == "same model")
        assert latent.id == f"{MODEL}/{site}/L{LAYER:02d}/U0002" and latent.pictures == ["viz"]
    render(out, workers=1, progress=False)
    _, meta, _ = read_unit(out / "site", MODEL, site, LAYER, 2)
    assert meta["id"] == latent.id and [r[1] for r in meta["related"]] == [r.id for r in latent.related]
    assert any(f"{MODEL}/ffn/" in r[1] for r in meta["related"])


@pytest.mark.slow
def test_a_build_spec_reads_saes_and_verify_covers_their_sites(tmp_path):
    from atlas.verify import verify
    from tests.helpers import write_spec
    saelens(tmp_path / "my_sae")
    spec = write_spec(tmp_path, extra='sae = ["my_sae"]')
    assert build.main(["plan", str(spec), "--no-calibrate"]) == 0
    assert build.main(["run", str(spec)]) == 0
    out = tmp_path / "atlas"
    assert verify(out) == []
    with atlas.open(out) as a:
        latent = a.unit(MODEL, LAYER, 7, site="sae-my_sae")
        assert latent.parts == ["viz", "probe"] or set(latent.parts) == {"viz", "probe"}
        assert len(a.units(MODEL, LAYER, site="sae-my_sae")) == 24     # the spec's units apply to its latents
    assert "sae-my_sae" in json.loads((out / "manifest.json").read_text())["models"][MODEL]["sites"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_train_sae_writes_a_saelens_sae_whose_metrics_hold(kind, tmp_path, images):
    """train-sae's files are SAELens's layout, read back by --sae; the explained variance, L0 and dead
    fraction it reports are what its weights give on the held-out images' tokens (every tenth image)."""
    from builder.dataset import scan_images
    out = tmp_path / "trained"
    assert build.main(["train-sae", *TINY_MODEL, "--images", str(images), "--layers", str(LAYER), "--kind", kind,
                       "--latents", "64", "--k", "8", "--steps", "300", "--workers", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    reported = cfg["vit_atlas"]["metrics"]
    sae = load_sae(out)
    assert (sae.format, sae.d_sae, sae.layer, sae.activation) == ("saelens", 64, LAYER, kind)
    data_config, _, _ = model_config()
    import timm.data
    from atlas.images import load_rgb
    index = scan_images(images)
    transform = timm.data.create_transform(**data_config, is_training=False)
    held = [p for i, p in enumerate(index.paths) if i % 10 == 0]
    x = tokens_at(torch.stack([transform(load_rgb(index.root / p)) for p in held]), "resid_post")[:, 1:].reshape(-1, D)
    from safetensors.numpy import load_file
    w = load_file(str(out / "sae_weights.safetensors"))
    f = reference(x, w, kind, k=8)
    recon = f @ w["W_dec"] + w["b_dec"]
    explained = 1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert reported["explained_variance"] == pytest.approx(explained, abs=1e-4)
    assert reported["l0"] == pytest.approx((f > 0).sum(1).mean(), abs=1e-4)
    assert reported["dead_fraction"] == pytest.approx((~(f > 0).any(0)).mean(), abs=1e-6)
    assert explained > 0.2 and (kind == "relu" or reported["l0"] <= 8)   # 170 training tokens: better than their mean


@pytest.mark.parametrize("damage", ["config a list", "weights not safetensors", "saev body not torch", "prisma junk"])
def test_a_damaged_checkpoint_is_one_line(damage, tmp_path):
    ckpt = tmp_path / "ckpt"
    if damage.startswith("saev"):
        ckpt.mkdir()
        (ckpt / "sae.pt").write_bytes(b'{"schema": 2}\nnot a torch file')
    elif damage == "prisma junk":
        ckpt.mkdir()
        (ckpt / "config.json").write_text("{}")
        (ckpt / "weights.pt").write_bytes(b"junk")
    else:
        saelens(ckpt)
        if damage == "config a list":
            (ckpt / "cfg.json").write_text("[1, 2]")
        else:
            (ckpt / "sae_weights.safetensors").write_bytes(b"junk")
    out = tmp_path / "atlas"
    assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(ckpt), "--layers", str(LAYER),
                           "--out", str(out)), "ckpt")
    assert not out.exists()
