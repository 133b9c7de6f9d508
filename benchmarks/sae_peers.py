"""ViT Atlas's SAE reader against the libraries' own code: checkpoints saved by SAELens (``save_model`` and
``save_inference_model`` of its training SAEs) and by saev (``saev.nn.dump``), with random weights,
uneven decoder norms, non-zero b_dec and thresholds, encoded by the library and by ``builder.sae``.

Not a test (the libraries are not dependencies): run it where they are installed, e.g.

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch sae-lens beartype einops jaxtyping orjson tyro scipy
    git clone https://github.com/OSU-NLP-Group/saev /tmp/saev
    PYTHONPATH=.:/tmp/saev/src /tmp/peers/bin/python benchmarks/sae_peers.py

Prints, per case, the largest |difference| between the two encoders' latents, and whether the config
the library writes has the keys tests/test_sae_libraries.py writes for it.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from builder.sae import load_sae  # noqa: E402

D, LATENTS = 64, 48


def _randomize(sae, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, LATENTS, generator=g) / D ** 0.5)
        sae.W_dec.copy_(torch.randn(LATENTS, D, generator=g) / D ** 0.5 * (0.2 + 2 * torch.rand(LATENTS, 1, generator=g)))
        sae.b_enc.copy_(torch.randn(LATENTS, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.3)


def saelens_cases(x: torch.Tensor, work: Path) -> list[tuple[str, float]]:
    import sae_lens
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.saes.sae import SAE
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    meta = sae_lens.saes.sae.SAEMetadata(model_name="vit_tiny", hook_name="blocks.1.hook_resid_post")
    results = []
    made = {
        "topk": TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=LATENTS, k=6, metadata=meta)),
        "batchtopk": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=LATENTS, k=6, metadata=meta)),
        "matryoshka_batchtopk": MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D, d_sae=LATENTS, k=6, matryoshka_widths=[16, LATENTS], metadata=meta)),
    }
    for i, (arch, sae) in enumerate(made.items()):
        _randomize(sae, i)
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold = torch.tensor(0.35, dtype=torch.double)
        sae.save_model(work / f"{arch}-training")
        sae.save_inference_model(work / f"{arch}-inference")
        library = SAE.load_from_disk(str(work / f"{arch}-inference"))     # the library's inference form
        with torch.no_grad():
            want = library.encode(x)
            if arch == "topk":
                training = sae.eval().encode(x)                            # the trainer's own encode
                results.append((f"SAELens {arch}: training encode vs inference encode (the library)",
                                float((training - want).abs().max())))
        for kind in ("training", "inference"):
            ours = load_sae(work / f"{arch}-{kind}").encode(x)
            results.append((f"SAELens {sae_lens.__version__} {arch} save_{'model' if kind == 'training' else 'inference_model'}",
                            float((ours - want).abs().max())))
        cfg = json.loads((work / f"{arch}-training" / "cfg.json").read_text())
        print(f"  SAELens {arch} save_model cfg.json keys: {sorted(cfg)}")
    return results


def saev_cases(x: torch.Tensor, work: Path) -> list[tuple[str, float]]:
    import saev.nn.modeling as m
    results = []
    for i, activation in enumerate([m.Relu(), m.TopK(top_k=6), m.BatchTopK(top_k=6), m.BatchTopK(top_k=6)]):
        sae = m.SparseAutoencoder(m.SparseAutoencoderConfig(d_model=D, d_sae=LATENTS, activation=activation))
        _randomize(sae, 10 + i)
        if isinstance(activation, m.BatchTopK):
            sae.activation.threshold.fill_(0.4 if i == 2 else 0.0)
        path = work / f"saev-{i}" / "sae.pt"
        m.dump(path, sae)
        with torch.no_grad():
            want = m.load(path).eval().encode(x.reshape(-1, D)).f_x.reshape(*x.shape[:-1], LATENTS)
            ours = load_sae(path).encode(x)
        name = type(activation).__name__ + (f" θ={float(sae.activation.threshold)}" if hasattr(sae.activation, "threshold")
                                            else "")
        results.append((f"saev schema {m.SCHEMA_VERSION} {name}", float((ours - want).abs().max())))
        if i == 2:
            header = path.read_bytes().split(b"\n", 1)[0][:400].decode()
            print(f"  saev header: {header}")
    return results


def main() -> None:
    x = torch.randn(5, 7, D, generator=torch.Generator().manual_seed(0)) * 2
    with tempfile.TemporaryDirectory() as tmp:
        results = saelens_cases(x, Path(tmp)) + saev_cases(x, Path(tmp))
    for name, diff in results:
        print(f"{name}: max |Δ| {diff:.2e} {'ok' if diff <= 1e-5 else 'DIFFERS'}")


if __name__ == "__main__":
    main()
