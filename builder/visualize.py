"""The feature-visualization engine: one optimized image per unit, many units per batch.

A batch holds units of one layer. Every unit's image is its own parameter row, its loss involves
only its own copies and its own channel, and its randomness comes from its own generator, so a
unit's result does not depend on its batch. The forward pass stops at the unit's layer
(``sites.run_to``); weights are frozen, so backward computes gradients for the images only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .augment import augment, draw
from .models import LoadedModel
from .objective import unit_activation, unit_losses
from .recipe import Recipe
from .sites import Layer, run_to


@dataclass
class UnitImages:
    """The engine's output for n units (the rows of a shard's ``viz`` part)."""
    image: np.ndarray       # uint8 [n, H, W, 3]
    activation: np.ndarray  # float32 [n]: activation of the stored uint8 image, unaugmented, fp32
    map: np.ndarray         # float16 [n, h, w]
    loss: np.ndarray        # float32 [n, m]: loss at recipe.loss_steps()
    finite: np.ndarray      # bool [n]: no NaN/inf anywhere in the unit's run
    pixels: torch.Tensor    # float [n, 3, H, W]: the optimized image before quantization (for checks)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forward pass when asked; the images and Adam state stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def optimize_units(lm: LoadedModel, layer: Layer, units: list[int], seeds: list[int], recipe: Recipe,
                   device: torch.device, precision: str = "fp32") -> UnitImages:
    """Optimize one image per unit of ``layer`` (the recipe's render loop)."""
    H, W = lm.input_size
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    images = torch.stack([torch.rand(3, H, W, generator=g, device=device) for g in generators])
    images.requires_grad_(True)
    channels = torch.tensor(units, device=device)
    optimizer = torch.optim.Adam([images], lr=recipe.lr, betas=recipe.betas)
    record = set(recipe.loss_steps())
    curve = []
    for step in range(recipe.steps):
        for group in optimizer.param_groups:  # cosine annealing from lr to 0
            group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        if step < recipe.steps - recipe.clean_steps:
            n = recipe.batch_copies
            copies = augment(images, draw(generators, recipe, (H, W), device), recipe.noise_std(step))
        else:  # the recipe's last clean_steps: the stored image itself, unaugmented
            copies, n = images, 1
        with autocast(device, precision):
            (grid,) = run_to(lm.model, lm.normalize(copies), [layer])
        losses = unit_losses(grid, copies, channels, n, recipe.tv)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        with torch.no_grad():
            images.clamp_(0, 1)
        if step in record:
            curve.append(losses.detach())
    pixels = (images.detach() * 255).round().clamp(0, 255).to(torch.uint8)
    activation, maps = measure(lm, layer, pixels, channels)
    loss = torch.stack(curve, dim=1).float()
    finite = torch.isfinite(loss).all(1) & torch.isfinite(images.detach()).flatten(1).all(1) \
        & torch.isfinite(activation)
    return UnitImages(pixels.permute(0, 2, 3, 1).cpu().numpy(), activation.cpu().numpy(),
                      maps.to(torch.float16).cpu().numpy(), loss.cpu().numpy(), finite.cpu().numpy(),
                      images.detach().cpu())


@torch.no_grad()
def measure(lm: LoadedModel, layer: Layer, pixels: torch.Tensor, channels: torch.Tensor, batch: int = 64):
    """Activation (mean over the patch grid) and map of each uint8 image [n, 3, H, W] for its unit,
    in fp32 with the model's plain forward: what anyone re-deriving from the stored image gets."""
    acts, maps = [], []
    for i in range(0, len(pixels), batch):
        x = lm.normalize(pixels[i:i + batch].float() / 255)
        (grid,) = run_to(lm.model, x, [layer])
        a, m = unit_activation(grid.float(), channels[i:i + batch])
        acts.append(a)
        maps.append(m)
    return torch.cat(acts), torch.cat(maps)
