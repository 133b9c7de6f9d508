"""SAE checkpoints as their libraries write them (issue 30): each layout below is what the library's own save
code writes (SAELens 6.x ``TrainingSAE.save_model`` / ``save_inference_model``, saev's ``nn.dump`` at header
schemas 4 and 5, ViT-Prisma's training checkpoints and release folders), with random weights, non-zero
``b_dec`` and thresholds; the latents ViT Atlas reads equal a plain numpy version of each library's
inference encoder to 1e-5, and a folder that names several checkpoints is resolved by its own manifest
or refused with the choices."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from atlas.format import AtlasError
from builder.sae import load_sae
from tests.conftest import TINY_MODEL
from tests.helpers import assert_refused, run_cli, save_prisma_checkpoint

D, LATENTS, LAYER = 64, 48, 1
X = np.random.default_rng(0).normal(size=(5, 7, D)).astype(np.float32) * 2      # tokens: 5 images x 7 patches


def weights(seed: int, uneven_decoder: bool = True) -> dict[str, torch.Tensor]:
    """Random weights with non-zero biases and, as training leaves them, decoder rows of uneven norm."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(LATENTS, D, generator=g) / D ** 0.5
    if uneven_decoder:
        W_dec = W_dec * (0.2 + 2 * torch.rand(LATENTS, 1, generator=g))
    return {"W_enc": torch.randn(D, LATENTS, generator=g) / D ** 0.5, "b_enc": torch.randn(LATENTS, generator=g) * 0.3,
            "W_dec": W_dec, "b_dec": torch.randn(D, generator=g) * 0.3}


def latents(path, **kwargs) -> np.ndarray:
    return load_sae(path, **kwargs).encode(torch.from_numpy(X)).numpy()


# -- SAELens 6.x ------------------------------------------------------------------------------------

METADATA = {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12", "model_name": "vit_tiny",
            "hook_name": f"blocks.{LAYER}.hook_resid_post", "hook_head_index": None, "context_size": 50,
            "prepend_bos": True, "seqpos_slice": [None], "model_from_pretrained_kwargs": {}}
BASE = {"d_in": D, "d_sae": LATENTS, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "reshape_activations": "none"}
TRAINING = {"topk": {"decoder_init_norm": 0.1, "k": 6, "use_sparse_activations": False, "aux_loss_coefficient": 1.0,
                     "rescale_acts_by_decoder_norm": True},
            "batchtopk": {"decoder_init_norm": 0.1, "k": 6.0, "use_sparse_activations": False,
                          "aux_loss_coefficient": 1.0, "rescale_acts_by_decoder_norm": True, "topk_threshold_lr": 0.01},
            "matryoshka_batchtopk": {"decoder_init_norm": 0.1, "k": 6.0, "use_sparse_activations": False,
                                     "aux_loss_coefficient": 1.0, "rescale_acts_by_decoder_norm": True,
                                     "topk_threshold_lr": 0.01, "matryoshka_widths": [16, LATENTS],
                                     "use_matryoshka_aux_loss": False}}
THETA = 0.35


def saelens_save_model(folder, arch: str, seed: int = 0, **cfg) -> dict:
    """``TrainingSAE.save_model``: the training state dict as it is (a batchtopk SAE's ``topk_threshold`` buffer,
    float64, included; weights unfolded) and ``cfg.to_dict()`` (the training config, its architecture)."""
    w = weights(seed)
    if arch != "topk":
        w["topk_threshold"] = torch.tensor(THETA, dtype=torch.float64)
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({**BASE, "metadata": METADATA, **TRAINING[arch], **cfg,
                                                 "architecture": arch}))
    return {k: v.double().numpy() for k, v in w.items()}


def saelens_save_inference_model(folder, arch: str, seed: int = 0) -> dict:
    """``TrainingSAE.save_inference_model``: the topk family folds the decoder norms into the encoder
    (``_fold_norm_topk``); batchtopk pops ``topk_threshold`` into a jumprelu ``threshold``; the config is the
    inference class's fields (topk keeps ``rescale_acts_by_decoder_norm``; batchtopk becomes jumprelu)."""
    w = weights(seed)
    norm = w["W_dec"].norm(dim=-1)
    w = {"W_enc": w["W_enc"] * norm[None], "b_enc": w["b_enc"] * norm, "W_dec": w["W_dec"] / norm[:, None],
         "b_dec": w["b_dec"]}
    if arch == "topk":
        cfg = {**BASE, "metadata": METADATA, "k": 6, "rescale_acts_by_decoder_norm": True, "architecture": "topk"}
    else:
        w["threshold"] = torch.ones_like(w["b_enc"]) * torch.tensor(THETA, dtype=torch.float64).item()
        cfg = {**BASE, "metadata": METADATA, "architecture": "jumprelu"}
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return {k: v.double().numpy() for k, v in w.items()}


def saelens_reference(x, w, arch, rescale=True, k=6, theta=None) -> np.ndarray:
    """SAELens's encode: process_sae_in (x − b_dec), hidden_pre = x·W_enc + b_enc, × ‖W_dec‖ in the topk family
    with rescale_acts_by_decoder_norm; TopK keeps the k largest and applies a ReLU; JumpReLU relu(h)·[h > θ]."""
    h = (x.astype(np.float64) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if rescale:
        h = h * np.linalg.norm(w["W_dec"], axis=-1)
    if arch == "topk":
        out = np.zeros_like(h)
        idx = np.argsort(-h, axis=-1)[..., :k]
        np.put_along_axis(out, idx, np.maximum(np.take_along_axis(h, idx, -1), 0), -1)
        return out
    theta = w["threshold"] if theta is None else theta
    return np.maximum(h, 0) * (h > theta)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_saelens_training_checkpoints_encode_as_saelens_does(arch, tmp_path):
    """Cases 1 and 2: the trainer's own checkpoints keep rescale_acts_by_decoder_norm with unfolded weights,
    and a batchtopk SAE's inference form is a JumpReLU at its topk_threshold on the rescaled pre-activations."""
    w = saelens_save_model(tmp_path / "ckpt", arch)
    want = saelens_reference(X, w, "topk" if arch == "topk" else "jumprelu", theta=THETA)
    np.testing.assert_allclose(latents(tmp_path / "ckpt"), want, atol=1e-5)
    sae = load_sae(tmp_path / "ckpt")
    assert sae.record()["library"] == "SAELens" and sae.record()["version"] == "6.54.12"
    assert sae.record()["architecture"] == arch and sae.rescale
    if arch != "topk":
        assert sae.record()["threshold"] == pytest.approx(THETA) and "h > θ" in sae.record()["encoder"]


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_saelens_inference_saves_give_the_training_saes_latents(arch, tmp_path):
    """The same SAE saved for inference (folded, batchtopk as jumprelu) reads to the same latents."""
    w = saelens_save_model(tmp_path / "training", arch)
    saelens_save_inference_model(tmp_path / "inference", arch)
    want = saelens_reference(X, w, "topk" if arch == "topk" else "jumprelu", theta=THETA)
    np.testing.assert_allclose(latents(tmp_path / "inference"), want, atol=1e-5)


def test_saelens_topk_without_the_flag_and_other_architectures(tmp_path):
    w = saelens_save_model(tmp_path / "plain", "topk", rescale_acts_by_decoder_norm=False)
    np.testing.assert_allclose(latents(tmp_path / "plain"), saelens_reference(X, w, "topk", rescale=False), atol=1e-5)
    for arch in ("gated", "transcoder"):
        folder = tmp_path / arch
        saelens_save_model(folder, "topk")
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": arch}))
        with pytest.raises(AtlasError, match=arch):
            load_sae(folder)
    folder = tmp_path / "no-threshold"
    saelens_save_model(folder, "batchtopk")
    from safetensors.torch import load_file
    state = load_file(str(folder / "sae_weights.safetensors"))
    del state["topk_threshold"]
    save_file(state, str(folder / "sae_weights.safetensors"))
    with pytest.raises(AtlasError, match="topk_threshold"):
        load_sae(folder)


# -- saev ------------------------------------------------------------------------------------------

def saev_dump(path, schema: int, theta: float | None, seed: int = 3, cls: str = "BatchTopK") -> dict:
    """saev's ``nn.dump``: one compact JSON header line (orjson, OPT_APPEND_NEWLINE), then ``torch.save`` of
    the state dict into the same file. Schema 5 serializes the activation with ``_serialize_dataclass``
    (nested classes, ``key`` fields); schema 4 (saev 2025-11-16) with ``{cls, params: asdict(...)}``."""
    w = weights(seed, uneven_decoder=False)
    state = {"W_dec": w["W_dec"], "b_dec": w["b_dec"], "W_enc": w["W_enc"], "b_enc": w["b_enc"]}
    if theta is not None:
        state["activation.threshold"] = torch.tensor(theta)
    if schema == 5:
        activation = {"cls": cls, "params": {"key": "batch-top-k", "top_k": 6, "sparsity": {
            "cls": "NoSparsity", "params": {"key": "no-sparsity"}}, "momentum": 0.1, "aux": {
            "cls": "AuxK", "params": {"key": "auxk", "k_aux": 512, "alpha": 0.03125}}}}
        cfg = {"d_model": D, "d_sae": LATENTS, "activation": activation, "reinit_blend": 0.8,
               "reinit_enc_dec_tranpose": True, "remove_parallel_grads": True, "normalize_w_dec": True}
    else:
        cfg = {"d_model": D, "d_sae": LATENTS, "activation": {"cls": cls, "params": {"top_k": 6, "momentum": 0.1}},
               "n_reinit_samples": 524288, "remove_parallel_grads": True, "normalize_w_dec": True, "seed": 0}
    header = {"schema": schema, "cfg": cfg, "commit": "ce1add2f", "lib": "1.1.0"}
    buf = io.BytesIO()
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n" + buf.getvalue())
    return {k: v.double().numpy() for k, v in w.items()}


def saev_reference(x, w, theta: float) -> np.ndarray:
    """saev's BatchTopKActivation in eval mode: h = x·W_enc + b_enc; h where h > θ (θ > 0), else a ReLU."""
    h = x.astype(np.float64) @ w["W_enc"] + w["b_enc"]
    return np.where(h > theta, h, 0) if theta > 0 else np.where(h > 0, h, 0)


@pytest.mark.parametrize("schema, theta", [(5, 0.4), (5, 0.0), (4, 0.4)])
def test_saev_batchtopk_reads_its_inference_threshold(schema, theta, tmp_path):
    """Case 3: every BatchTopK SAE saev published since November 2025 carries activation.threshold."""
    w = saev_dump(tmp_path / "sae.pt", schema, theta)
    np.testing.assert_allclose(latents(tmp_path / "sae.pt"), saev_reference(X, w, theta), atol=1e-5)
    record = load_sae(tmp_path / "sae.pt").record()
    assert record["library"] == "saev" and record["version"].startswith(f"schema {schema}")
    assert record["architecture"] == "BatchTopK" and record["activation"] == "jumprelu"


def test_saev_batchtopk_without_a_threshold_and_abs_topk_are_refused_by_name(tmp_path):
    saev_dump(tmp_path / "old" / "sae.pt", 4, None)
    with pytest.raises(AtlasError, match="no per-image encoder"):
        load_sae(tmp_path / "old" / "sae.pt")
    saev_dump(tmp_path / "abs" / "sae.pt", 4, 0.4, cls="AbsBatchTopK")
    with pytest.raises(AtlasError, match="AbsBatchTopK"):
        load_sae(tmp_path / "abs" / "sae.pt")


def saev_release(root, runs: list[tuple[str, int, float]]) -> dict[str, dict]:
    """A saev release of many checkpoints as push_dinov3.py stages it: layer_<N>/<run>/sae.pt and a
    manifest.jsonl line per run (run_id, layer, l0, mse, sha256, path)."""
    made, lines = {}, []
    for i, (run, layer, theta) in enumerate(runs):
        rel = f"layer_{layer}/{run}/sae.pt"
        made[run] = saev_dump(root / rel, 5, theta, seed=10 + i)
        digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        lines.append(json.dumps({"run_id": run, "layer": layer, "l0": 20.0 + i, "mse": 0.1, "sha256": digest,
                                 "path": rel}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return made


def test_a_saev_release_is_read_one_run_at_a_time_by_its_manifest(tmp_path):
    """Case 5: the release's root folder lists its runs; --sae-run or a layer with one run picks one, whose
    layer comes from the manifest and whose sha256 is checked."""
    root = tmp_path / "SAE_DINOv3"
    made = saev_release(root, [("aaaa1111", 3, 0.2), ("bbbb2222", 3, 0.5), ("cccc3333", 1, 0.3)])
    with pytest.raises(AtlasError, match="aaaa1111.*bbbb2222.*cccc3333"):
        load_sae(root)
    with pytest.raises(AtlasError, match="2 runs on layer 3"):
        load_sae(root, layer=3)
    sae = load_sae(root, run="bbbb2222")
    assert (sae.layer, sae.run, sae.name) == (3, "bbbb2222", "bbbb2222")
    np.testing.assert_allclose(sae.encode(torch.from_numpy(X)).numpy(), saev_reference(X, made["bbbb2222"], 0.5),
                               atol=1e-5)
    assert load_sae(root, layer=1).run == "cccc3333"
    assert load_sae(root / "layer_1/cccc3333/sae.pt").layer == 1          # a file of the release: its manifest's layer
    with open(root / "layer_3/aaaa1111/sae.pt", "ab") as f:                  # a changed download
        f.write(b"\0")
    with pytest.raises(AtlasError, match="sha256"):
        load_sae(root, run="aaaa1111")
    assert_refused(run_cli("visualize", *TINY_MODEL, "--site", "sae", "--sae", str(root), "--out",
                           str(tmp_path / "atlas")), "--sae-run", "bbbb2222")


# -- ViT-Prisma ------------------------------------------------------------------------------------

PRISMA_CONFIG = {"d_in": D, "d_sae": LATENTS, "hook_point_layer": LAYER, "layer_subtype": "hook_resid_post",
                 "hook_point": f"blocks.{LAYER}.hook_resid_post", "activation_fn_str": "relu",
                 "activation_fn_kwargs": {}, "normalize_activations": "none", "cls_token_only": False,
                 "architecture": "standard"}


def prisma_training_run(folder, checkpoints: list[int]) -> dict[int, dict]:
    """A ViT-Prisma training run's folder (train_sae.py ``checkpoint``): config.json, then per checkpoint
    ``n_images_<N>.pt`` ({"cfg": ..., "state_dict": ...} by ``save_model``) and its log feature sparsity."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(PRISMA_CONFIG))
    made = {}
    for i, n in enumerate(checkpoints):
        w = weights(20 + i)
        torch.save({"state_dict": w}, folder / f"n_images_{n}.pt")
        torch.save(torch.randn(LATENTS), folder / f"n_images_{n}_log_feature_sparsity.pt")
        made[n] = {k: v.double().numpy() for k, v in w.items()}
    return made


def test_a_prisma_training_run_is_refused_with_its_checkpoints_and_the_last_named(tmp_path):
    """Case 4: sorted names put the checkpoint at 80% of training first (n_images_130000 < n_images_1300000)."""
    steps = [130000 * i for i in range(1, 11)]
    made = prisma_training_run(tmp_path / "run", steps)
    with pytest.raises(AtlasError, match="holds 10 checkpoints.*the last of a training run: n_images_1300000.pt"):
        load_sae(tmp_path / "run")
    final = load_sae(tmp_path / "run" / "n_images_1300000.pt")
    h = (X.astype(np.float64) - made[1300000]["b_dec"]) @ made[1300000]["W_enc"] + made[1300000]["b_enc"]
    np.testing.assert_allclose(final.encode(torch.from_numpy(X)).numpy(), np.maximum(h, 0), atol=1e-5)


def test_a_prisma_checkpoint_with_its_config_pickled_inside_needs_no_flag(tmp_path):
    """Case 5: a ViT-Prisma .pt without config.json is recognized by its pickled config's name (read, not run)."""
    w = weights(30)
    save_prisma_checkpoint(tmp_path / "n_images_5000.pt", w, PRISMA_CONFIG)
    sae = load_sae(tmp_path / "n_images_5000.pt")
    assert (sae.format, sae.layer, sae.record()["library"]) == ("prisma", LAYER, "ViT-Prisma")
    w = {k: v.double().numpy() for k, v in w.items()}
    h = (X.astype(np.float64) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    np.testing.assert_allclose(sae.encode(torch.from_numpy(X)).numpy(), np.maximum(h, 0), atol=1e-5)
    torch.save(w, tmp_path / "bare.pt")                                      # a state dict alone: no configuration
    with pytest.raises(AtlasError, match="without its configuration"):
        load_sae(tmp_path / "bare.pt")
