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
from tqdm import tqdm

from atlas.folder import own_folder
from atlas.manifest import sha256_file

from .models import CNN, VIT, WEIGHTS
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
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05          # share of the one-cycle schedule spent warming up
    label_smoothing: float = 0.0
    held_out_n: int = HELD_OUT_N

    def epochs(self, name: str) -> int:
        """Epochs for a demo model."""
        return self.epochs_vit if name == VIT else self.epochs_cnn


def images_and_labels(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n generated images as a uint8 tensor [n, 3, 64, 64] and their labels."""
    samples = [generate(seed, i) for i in range(n)]
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([s.label for s in samples])


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = cfg.epochs(name)
    steps = epochs * math.ceil(len(x) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=cfg.warmup)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    bar = tqdm(total=steps, desc=f"train {name}", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            batch = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            loss = F.cross_entropy(model(_normalize(batch)), y[idx], label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    return model.eval(), losses


def train_demo(out: Path | None = None, cfg: TrainConfig = TrainConfig(), models=(VIT, CNN), command: str = "",
               progress: bool = True) -> dict:
    """Train the demo models, save them in ``out`` (default: the committed weights' folder) and record
    what was done in ``out/demo_weights.json``."""
    out = own_folder(Path(out) if out else WEIGHTS, "--out", lambda folder: (folder / RECORD).is_file(),
                     f"is not empty and holds no demo weights (no {RECORD}); give a new or empty folder")
    x, y = images_and_labels(cfg.train_seed, cfg.n_train)
    held_x, held_y = images_and_labels(HELD_OUT_SEED, cfg.held_out_n)
    record_path = out / RECORD
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for name in models:
        t0 = time.time()
        model, losses = train_model(name, cfg, x, y, progress)
        tenth = max(1, len(losses) // 10)  # losses averaged over the first and last tenth of the steps
        path = out / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        record[name] = {
            "file": path.name, "sha256": sha256_file(path), "held_out_accuracy": accuracy(model, held_x, held_y),
            "held_out": {"seed": HELD_OUT_SEED, "n": cfg.held_out_n}, "classes": list(CLASSES),
            "train_loss_first": float(np.mean(losses[:tenth])), "train_loss_last": float(np.mean(losses[-tenth:])),
            "config": asdict(cfg), "command": command, "seconds": round(time.time() - t0, 1),
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, "
                       f"timm {timm.__version__}",
        }
        record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record
