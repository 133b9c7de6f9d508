"""`python build.py train-demo`: train the demo ViT and CNN on generated shapes, on CPU, from a seed.

Training images come from ``shapes.generate(train_seed, i)``; the held-out images are the demo
dataset itself (``shapes.generate(1, i)``, another seed, never trained on). Each model is saved as
safetensors next to ``demo_weights.json``, which records the sha256, the held-out accuracy, the
command and the settings.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from atlas.folder import own_folder
from atlas.format import AtlasError
from atlas.manifest import sha256_file

from .clip import NAME as CLIP, train_clip, word_accuracy
from .fit import fit
from .models import CNN, VIT, WEIGHTS
from ..models import ModelSource, load_model
from .shapes import CLASSES, generate
from ..defaults import DEMO_IMAGES, DEMO_SEED

HELD_OUT_SEED, HELD_OUT_N = DEMO_SEED, DEMO_IMAGES   # the held-out set is the demo's dataset
RECORD = "demo_weights.json"


@dataclass
class TrainConfig:
    """Settings of a train-demo run (all recorded with the weights)."""
    seed: int = 0
    train_seed: int = 0
    n_train: int = 40000
    epochs_vit: int = 50          # the ViT learns shapes slowly from scratch; the CNN quickly
    epochs_cnn: int = 15
    epochs_clip: int = 8          # the image-text model (clip_atlas_demo), on the first n_clip images
    n_clip: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05          # share of the one-cycle schedule spent warming up
    label_smoothing: float = 0.0
    held_out_n: int = HELD_OUT_N
    # The robust phase (issue 35), off by default (the shipped ViT has none: docs/DECISIONS.md): the ViT
    # fine-tuned against an L2 PGD attack so that the images optimized for its units look more like shapes
    # (Santurkar et al. 2019); 5 epochs were measured (docs/benchmarks.md "Demo pictures a person can read").
    robust_epochs: int = 0
    robust_epsilon: float = 0.5   # L2 radius of the attack, in [0, 1] pixel units (64x64x3 image)
    robust_steps: int = 2         # PGD steps, each 2.5 * epsilon / robust_steps long
    robust_lr: float = 3e-4
    crop_scale: float = 0.6       # random resized crops keep 60-100% of the area ...
    color_jitter: float = 0.3     # ... and brightness and contrast move by up to 30%

    def epochs(self, name: str) -> int:
        """Epochs for a demo model."""
        return self.epochs_vit if name == VIT else self.epochs_cnn


def images_and_labels(seed: int, n: int, keep: bool = False) -> tuple[torch.Tensor, torch.Tensor, list]:
    """n generated images as a uint8 tensor [n, 3, 64, 64], their labels, and (``keep``) the samples
    (what the demo's image-text model's captions are made from)."""
    samples = [generate(seed, i) for i in range(n)]
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([s.label for s in samples]), samples if keep else []


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.5


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images ``x``."""
    model.eval()
    correct = sum((model(_normalize(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(x), batch))
    return correct / len(x)


def train_model(name: str, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, progress: bool = True):
    """Train one demo model from ``cfg.seed``; returns the model and the per-step losses."""
    torch.manual_seed(cfg.seed)
    model = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(cfg.seed)

    def loss_of(idx):
        batch = x[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        return F.cross_entropy(model(_normalize(batch)), y[idx], label_smoothing=cfg.label_smoothing)
    losses = fit(model, loss_of, len(x), cfg.epochs(name), cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup, g,
                 f"train {name}", progress)
    return model.eval(), losses


def _crop_and_jitter(batch: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Flip, random-resized-crop and brightness/contrast jitter of uint8 images, as floats in [0, 1]."""
    b = batch.float() / 255
    flip = torch.rand(len(b), generator=g) < 0.5
    b = torch.where(flip[:, None, None, None], b.flip(3), b)
    size = b.shape[-1]
    crops = []
    for image in b:
        side = max(8, round(size * math.sqrt(cfg.crop_scale + (1 - cfg.crop_scale) * torch.rand(1, generator=g).item())))
        top, left = (torch.randint(0, size - side + 1, (2,), generator=g)).tolist()
        crops.append(F.interpolate(image[None, :, top:top + side, left:left + side], size=(size, size),
                                   mode="bilinear", align_corners=False)[0])
    b = torch.stack(crops)
    brightness, contrast = (1 + cfg.color_jitter * (2 * torch.rand(2, len(b), 1, 1, 1, generator=g) - 1))
    mean = b.mean((1, 2, 3), keepdim=True)
    return (((b - mean) * contrast + mean) * brightness).clamp(0, 1)


def _l2_attack(model: torch.nn.Module, b: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
               g: torch.Generator) -> torch.Tensor:
    """Projected gradient ascent on the loss within an L2 ball of radius ``cfg.robust_epsilon``
    around images ``b`` in [0, 1], from a random start inside the ball (Madry et al. 2018)."""
    def per_image_norm(t):
        return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1).clamp_min(1e-12)
    eps = cfg.robust_epsilon
    delta = torch.randn(b.shape, generator=g)
    delta = delta / per_image_norm(delta) * eps * torch.rand(len(b), 1, 1, 1, generator=g)
    step = 2.5 * eps / cfg.robust_steps
    model.eval()
    for _ in range(cfg.robust_steps):
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model((b + delta - 0.5) / 0.5), y), delta)
        with torch.no_grad():
            delta = delta + step * grad / per_image_norm(grad)
            delta = delta * (eps / per_image_norm(delta)).clamp(max=1.0)
            delta = (b + delta).clamp(0, 1) - b
    model.train()
    return (b + delta).detach()


def train_robust(model: torch.nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, progress: bool = True):
    """The robust phase: fine-tune ``model`` on adversarial examples of augmented images; returns
    the model and the per-step losses."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)

    def loss_of(idx):
        batch = _l2_attack(model, _crop_and_jitter(x[idx], cfg, g), y[idx], cfg, g)
        return F.cross_entropy(model((batch - 0.5) / 0.5), y[idx])
    losses = fit(model, loss_of, len(x), cfg.robust_epochs, cfg.batch_size, cfg.robust_lr, cfg.weight_decay, cfg.warmup,
                 g, "robust phase", progress)
    return model.eval(), losses


def train_demo(out: Path | None = None, cfg: TrainConfig = TrainConfig(), models=(VIT, CNN), command: str = "",
               progress: bool = True, vit_from: Path | None = None) -> dict:
    """Train the demo models, save them in ``out`` (default: the committed weights' folder) and record
    what was done in ``out/demo_weights.json``. The ViT is trained in two phases (standard, then
    robust); ``vit_from`` names the standard phase's weights to start the robust phase from."""
    out = own_folder(Path(out) if out else WEIGHTS, "--out", lambda folder: (folder / RECORD).is_file(),
                     f"is not empty and holds no demo weights (no {RECORD}); give a new or empty folder")
    x, y, samples = images_and_labels(cfg.train_seed, cfg.n_train, keep=CLIP in models)
    held_x, held_y, held = images_and_labels(HELD_OUT_SEED, cfg.held_out_n, keep=CLIP in models)
    record_path = out / RECORD
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for name in models:
        t0 = time.time()
        if name == CLIP:
            model, losses = train_clip(x[:cfg.n_clip], samples[:cfg.n_clip], cfg.epochs_clip, cfg.seed, progress=progress)
        elif name == VIT:
            if vit_from and not cfg.robust_epochs:
                raise AtlasError("--vit-from starts the ViT's robust phase: give --robust-epochs N too")
            if vit_from:
                model = load_model(ModelSource(VIT, checkpoint=str(vit_from))).model.requires_grad_(True)
                phase1 = {"from": str(vit_from), "sha256": sha256_file(vit_from),
                          "held_out_accuracy": accuracy(model, held_x, held_y)}
            else:
                model, losses = train_model(name, cfg, x, y, progress)
                phase1 = {"train_loss_last": float(np.mean(losses[-max(1, len(losses) // 10):])),
                          "held_out_accuracy": accuracy(model, held_x, held_y)}
            if cfg.robust_epochs:
                model, losses = train_robust(model, cfg, x, y, progress)
            else:
                phase1 = None             # one phase: the record is the standard training's
        else:
            model, losses = train_model(name, cfg, x, y, progress)
        tenth = max(1, len(losses) // 10)  # losses averaged over the first and last tenth of the steps
        path = out / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        score = word_accuracy(model, held_x, held) if name == CLIP else accuracy(model, held_x, held_y)
        record[name] = {
            "file": path.name, "sha256": sha256_file(path),
            **({"held_out_word_accuracy": score} if name == CLIP else {"held_out_accuracy": score}),
            "held_out": {"seed": HELD_OUT_SEED, "n": cfg.held_out_n}, "classes": list(CLASSES),
            "train_loss_first": float(np.mean(losses[:tenth])), "train_loss_last": float(np.mean(losses[-tenth:])),
            **({"standard_phase": phase1} if name == VIT and phase1 else {}),
            "config": asdict(cfg), "command": command, "seconds": round(time.time() - t0, 1),
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, "
                       f"timm {timm.__version__}",
        }
        record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record
