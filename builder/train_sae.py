"""`build.py train-sae`: a small sparse autoencoder on one block's activations over an image folder,
written in the SAELens format (``cfg.json`` + ``sae_weights.safetensors``) with the metrics users check.

    1. collect  the block's patch tokens (its output, or its MLP's: ``--hook``) for every image, in
                the model's eval transform; a tenth of the images (every tenth) held out
    2. train    Adam on the reconstruction error of tokens scaled to mean norm sqrt(d_in): ReLU with an
                L1 penalty weighted by the decoder rows' norms, or TopK (k kept per token); b_dec starts
                at the tokens' mean, W_enc at W_decᵀ; latents silent for a while are restarted on the
                worst-reconstructed tokens (a few times, early)
    3. fold     the scaling into the weights, so the SAE reads the model's raw activations
    4. measure  on the held-out tokens: explained variance, L0 (latents active per token), the share of
                latents never active (dead)

Everything is seeded; the same command gives the same file. A run takes seconds to minutes on a CPU
for the sizes it is meant for (the demo: 256 latents on a 64-wide ViT); it starts over when killed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from atlas.folder import is_atlas, own_folder
from atlas.format import AtlasError
from atlas.shard import write_atomically

from .defaults import BATCH_SIZE, SEED
from .dataset import ImageDataset, ImageIndex, collate, loader_workers
from .device import resolve_device
from .models import LoadedModel
from .sae import HOOKS
from .sites import find_layers, run_to

KINDS = ("relu", "topk")
MAX_LATENTS = 2**20            # the widest SAE train-sae makes (published vision SAEs: up to 65,536)
MAX_STEPS = 10**7
MAX_BATCH_TOKENS = 2**24
TRAINED_BY = "build.py train-sae"   # cfg.json's vit_atlas.trained_by: marks a folder train-sae may write again


@dataclass
class TrainJob:
    """What `build.py train-sae` was asked for."""
    out: Path
    layer: int
    hook: str = "resid_post"        # or "mlp_out"
    kind: str = "topk"              # one of KINDS
    latents: int = 256
    k: int = 8                      # topk: latents kept per token
    l1: float = 3.0                 # relu: weight of the L1 penalty (on scaled tokens)
    steps: int = 3000
    batch_tokens: int = 1024
    lr: float = 1e-3
    seed: int = SEED
    batch_size: int = BATCH_SIZE
    workers: int | None = None
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        """The checks visualize and probe make of their numbers, before anything is loaded or trained."""
        if self.kind not in KINDS:
            raise AtlasError(f"--kind {self.kind!r}: kinds are {', '.join(KINDS)}")
        if self.hook not in HOOKS.values():
            raise AtlasError(f"--hook {self.hook!r}: hooks are {', '.join(HOOKS.values())}")
        for flag, value, lo, hi in (("--latents", self.latents, 1, MAX_LATENTS), ("--steps", self.steps, 1, MAX_STEPS),
                                    ("--batch-tokens", self.batch_tokens, 1, MAX_BATCH_TOKENS),
                                    ("--batch-size", self.batch_size, 1, MAX_BATCH_TOKENS),
                                    ("--layers", self.layer, 0, 10**4)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise AtlasError(f"{flag} must be a whole number from {lo} to {hi:,}, not {value}")
        if self.kind == "topk" and not 0 < self.k <= self.latents:
            raise AtlasError(f"--latents {self.latents} and --k {self.k}: need 0 < k <= latents")
        if not (math.isfinite(self.lr) and self.lr > 0) or not (math.isfinite(self.l1) and self.l1 >= 0):
            raise AtlasError(f"--lr must be a positive number and --l1 a number not below 0, not {self.lr} and {self.l1}")
        if self.workers is not None and self.workers < 0:
            raise AtlasError(f"--workers must not be negative, not {self.workers}")
        resolve_device(self.device)           # 'bogus', or cuda where there is none: one line now


def collect_tokens(lm: LoadedModel, index: ImageIndex, job: TrainJob) -> torch.Tensor:
    """Patch tokens [images, tokens, d_in] of the job's block and hook, float32 on the CPU."""
    blocks = {layer.index: layer for layer in find_layers(lm.model, "block", lm.input_size)}
    if job.layer not in blocks:
        raise AtlasError(f"--layers {job.layer}: the model's blocks are {min(blocks)}-{max(blocks)}")
    layer = blocks[job.layer]
    if job.hook == "mlp_out":
        layer = replace(layer, module=f"{layer.module}.ls2")
    device = resolve_device(job.device)
    model = lm.model.to(device)
    data = ImageDataset(index, lm.eval_transform())
    loader = torch.utils.data.DataLoader(data, batch_size=job.batch_size, num_workers=loader_workers(job.workers),
                                         collate_fn=collate)
    out = []
    with torch.no_grad():
        for rows, x, _ in tqdm(loader, desc="train-sae: tokens", unit="batch", disable=not job.progress):
            if x is None:
                continue
            (grid,) = run_to(model, x.to(device), [layer])           # the eval transform normalized x
            out.append(grid.reshape(grid.shape[0], -1, grid.shape[-1]).float().cpu())
    if not out:
        raise AtlasError(f"{index.root}: no image could be decoded to train on")
    return torch.cat(out)


def train(tokens: torch.Tensor, job: TrainJob) -> tuple[dict[str, torch.Tensor], dict]:
    """The SAE's weights for raw activations and its held-out metrics, from tokens [images, T, d_in]."""
    g = torch.Generator().manual_seed(job.seed)
    held = torch.zeros(len(tokens), dtype=torch.bool)
    held[::10] = True
    if held.all() or not held.any():
        raise AtlasError(f"train-sae needs at least 2 images, not {len(tokens)}")
    train_x, test_x = tokens[~held].reshape(-1, tokens.shape[-1]), tokens[held].reshape(-1, tokens.shape[-1])
    d = train_x.shape[1]
    mean = train_x.mean(0)
    scale = math.sqrt(d) / float((train_x - mean).norm(dim=1).mean())
    x_all = train_x * scale
    W_dec = torch.randn(job.latents, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {"W_enc": W_dec.t().clone(), "b_enc": torch.zeros(job.latents), "W_dec": W_dec,
              "b_dec": (mean * scale).clone()}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=job.lr)
    last_active = torch.zeros(job.latents, dtype=torch.long)
    window = max(50, job.steps // 20)
    restarts_until = job.steps // 2
    bar = tqdm(range(job.steps), desc=f"train-sae: {job.kind} {job.latents} latents", unit="step",
               disable=not job.progress)
    for step in bar:
        batch = x_all[torch.randint(len(x_all), (job.batch_tokens,), generator=g)]
        f = _encode(params, batch, job)
        recon = f @ params["W_dec"] + params["b_dec"]
        mse = (recon - batch).pow(2).sum(1).mean()
        loss = mse + (job.l1 * (f * params["W_dec"].norm(dim=1)).sum(1).mean() if job.kind == "relu" else 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            last_active[(f > 0).any(0)] = step
            if job.kind == "topk":
                params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)   # unit rows: f carries the scale
            dead = (step - last_active) > window
            if step < restarts_until and step % window == window - 1 and dead.any():
                _restart(params, dead, batch, recon, opt, g)
                last_active[dead] = step
        if step % 100 == 0:
            bar.set_postfix(mse=f"{float(mse.detach()):.3f}")
    with torch.no_grad():
        folded = {"W_enc": params["W_enc"] * scale, "b_enc": params["b_enc"].clone(),
                  "W_dec": params["W_dec"] / scale, "b_dec": params["b_dec"] / scale}
        metrics = measure(folded, test_x, job)
    return {k: v.detach().contiguous() for k, v in folded.items()}, metrics


def _encode(params: dict, x: torch.Tensor, job: TrainJob) -> torch.Tensor:
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    if job.kind == "relu":
        return torch.relu(pre)
    top = torch.topk(pre, job.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def _restart(params, dead, batch, recon, opt, g) -> None:
    """Point dead latents at the worst-reconstructed tokens of the batch; reset their Adam moments."""
    error = (batch - recon).pow(2).sum(1)
    n = int(dead.sum())
    worst = torch.multinomial(error / error.sum(), n, replacement=n > len(error), generator=g)
    direction = batch[worst] - params["b_dec"]
    direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-8)
    idx = torch.flatnonzero(dead)
    params["W_dec"][idx] = direction
    params["W_enc"][:, idx] = direction.t() * 0.2
    params["b_enc"][idx] = 0
    for name, p in params.items():
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                if name == "W_enc":
                    state[key][:, idx] = 0
                elif name in ("W_dec", "b_enc"):
                    state[key][idx] = 0


def measure(weights: dict, x: torch.Tensor, job: TrainJob) -> dict:
    """Explained variance, L0 and dead fraction of an SAE (raw-activation weights) on tokens [N, d_in]."""
    with torch.no_grad():
        f = _encode(weights, x, job)
        recon = f @ weights["W_dec"] + weights["b_dec"]
        explained = 1 - float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        return {"explained_variance": explained, "l0": float((f > 0).sum(1).float().mean()),
                "dead_fraction": float((~(f > 0).any(0)).float().mean()), "tokens": int(len(x))}


def write_saelens(out: Path, weights: dict, job: TrainJob, model_name: str, metrics: dict, images: int) -> Path:
    """The SAE as SAELens writes one: ``cfg.json`` and ``sae_weights.safetensors`` in ``out`` (created),
    with this run's settings and metrics in ``cfg.json`` (``vit_atlas``), each file written atomically."""
    from safetensors.torch import save
    hook = {v: k for k, v in HOOKS.items()}[job.hook]
    cfg = {"architecture": "standard" if job.kind == "relu" else "topk", "d_in": weights["W_enc"].shape[0],
           "d_sae": job.latents, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "use_patches_only": True,
           "metadata": {"model_name": model_name, "hook_name": f"blocks.{job.layer}.{hook}", "hook_layer": job.layer},
           "vit_atlas": {"trained_by": TRAINED_BY, "kind": job.kind, "steps": job.steps, "lr": job.lr,
                         "l1": job.l1 if job.kind == "relu" else None, "batch_tokens": job.batch_tokens,
                         "seed": job.seed, "images": images, "metrics": metrics}}
    if job.kind == "topk":
        cfg["k"] = job.k
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "sae_weights.safetensors", save(weights))
    write_atomically(out / "cfg.json", (json.dumps(cfg, indent=2) + "\n").encode())
    return out


def sae_folder(out: Path) -> Path:
    """``out`` if train-sae may write its SAE there: new, empty, or an SAE it wrote before; never an atlas
    or a folder holding someone else's files (a user's cfg.json)."""
    def ours(folder: Path) -> bool:
        try:
            cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8")[:1 << 20])
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(cfg, dict) and isinstance(cfg.get("vit_atlas"), dict) and \
            cfg["vit_atlas"].get("trained_by") == TRAINED_BY
    if Path(out).is_dir() and is_atlas(Path(out)):
        raise AtlasError(f"--out {out} is an atlas; give the SAE a folder of its own (an atlas's verify would "
                         "find its files)")
    return own_folder(out, "--out", ours, "is not empty and holds no SAE train-sae wrote; give a new or empty folder")


def run_train_sae(lm: LoadedModel, index: ImageIndex, job: TrainJob, model_name: str) -> dict:
    """`build.py train-sae`: collect, train, fold, measure, write; returns the metrics."""
    sae_folder(job.out)
    torch.manual_seed(job.seed)
    np.random.seed(job.seed)
    tokens = collect_tokens(lm, index, job)
    weights, metrics = train(tokens, job)
    if not all(torch.isfinite(w).all() for w in weights.values()) or not math.isfinite(metrics["explained_variance"]):
        raise AtlasError("training diverged (NaN or inf in the weights): lower --lr (or --l1) and run again; "
                         "nothing was written")
    write_saelens(job.out, weights, job, model_name, metrics, len(tokens))
    return metrics
