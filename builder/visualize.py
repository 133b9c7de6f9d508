"""The feature-visualization engine: one optimized image per unit, many units of one layer per batch.

The loop reads like the recipe: start from uniform noise; at every step draw the augmentations, run
the copies to the unit's activation, take the loss, step Adam, clamp to [0, 1]. Every unit's image is
its own parameter row, its loss involves only its own copies and channel, and its random numbers are a
hash of its own seed (``counter_rng``), so a unit's result does not depend on its batch. The forward
stops at the unit's layer (``forward.unit_forward``); weights are frozen, so backward computes
gradients for the images only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .augment import build_copies, clean, draw, jitter
from .counter_rng import seed_tensor
from .device import compute_dtype
from .forward import unit_forward
from .models import LoadedModel
from .objective import channel_total_variation, unit_losses, unit_maps
from .param import parametrization
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


def step_losses(images, shifts, affine, scale, offset, pixel_noise, forward, units, mean, std, tv_weight: float,
                tv_on_noise: bool, autocast: bool):
    """Per-unit losses [U] of one step (see ``augment.Draw`` for the augmentation tensors).

    The copies are built already normalized: (sigma * roll(x) + mu + noise - mean) / std. TV is taken
    on the unnormalized copies; where they carry no per-pixel noise it is computed once per source
    image, because CS scales each channel's neighbour differences by sigma and per-channel noise leaves
    them unchanged: TV(copy) = mean_c sigma_c * TV_c(roll(x)).
    """
    U, _, H, W = images.shape
    C = scale.shape[1]
    rolled = jitter(images, shifts, C, affine).view(U, -1, 3, H, W)             # (U, 1 or C, 3, H, W)
    noise = pixel_noise / std[:, None, None] if pixel_noise is not None else None
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        maps = forward.copies(rolled, scale / std, (offset - mean) / std, noise, units)   # (U * C, h, w)
    if pixel_noise is not None and tv_on_noise:
        x = build_copies(rolled, scale, offset, pixel_noise)
        tv = channel_total_variation(x).mean(dim=1).view(U, C)
    else:
        tv = (channel_total_variation(rolled.view(-1, 3, H, W)).view(U, -1, 3) * scale).mean(dim=2)
    return unit_losses(maps, tv, tv_weight)


class Step:
    """Losses and image gradients of one step, compiled with ``torch.compile`` when asked.

    CUDA compiles with CUDA graphs ("reduce-overhead"), the CPU with Inductor's default. If compiling
    fails (no compiler, an unsupported op), the step warns once and continues eagerly: same numbers,
    lower speed. Out-of-memory errors pass through (the scheduler halves the batch).
    """

    def __init__(self, compile: bool = False, device: torch.device | None = None):
        self.fn = step_losses
        if compile:
            import torch._dynamo
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            mode = "reduce-overhead" if device is not None and device.type == "cuda" else None
            self.fn = torch.compile(step_losses, mode=mode, dynamic=False)

    def __call__(self, param, params: torch.Tensor, *args) -> torch.Tensor:
        """The step's per-unit losses (detached); their gradient is accumulated into ``params.grad``."""
        try:
            losses = self.fn(param.image(params), *args)
            losses.sum().backward()
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 (compiler errors come in many classes)
            if self.fn is step_losses:
                raise
            tqdm.write(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                       "continuing without it")
            self.fn = step_losses
            params.grad = None
            losses = step_losses(param.image(params), *args)
            losses.sum().backward()
        return losses.detach().clone()


def optimize_units(lm: LoadedModel, layer: Layer, units: list[int], seeds: list[int], recipe: Recipe,
                   device: torch.device, precision: str = "fp32", forward=None, step: Step | None = None
                   ) -> UnitImages:
    """Optimize one image per unit of ``layer`` (the recipe's render loop).

    ``forward`` and ``step`` are made once per layer by the scheduler (a compiled step is reused
    across batches); by default the layer's forward in ``precision`` and an eager step.
    """
    H, W = lm.input_size
    forward = forward or unit_forward(lm, layer, compute_dtype(precision), device)
    step = step or Step()
    seeds_t = seed_tensor(seeds, device)
    channels = torch.tensor(units, device=device)
    mean, std = lm.normalization(device)
    autocast = compute_dtype(precision) != torch.float32
    param = parametrization(recipe.parametrization, (H, W))
    params = param.init(seeds_t, (H, W)).requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=recipe.lr, betas=recipe.betas, fused=device.type == "cuda")
    augmented_steps = recipe.steps - recipe.clean_steps
    record, curve = set(recipe.loss_steps()), []
    for t in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(t)
        d = draw(seeds_t, t, recipe, (H, W)) if t < augmented_steps else clean(len(units), device)
        optimizer.zero_grad(set_to_none=True)
        losses = step(param, params, d.shifts, d.affine, d.scale, d.offset, d.pixel_noise, forward, channels,
                      mean, std, recipe.tv, recipe.tv_input == "augmented", autocast)
        optimizer.step()
        param.project(params)
        if t in record:
            curve.append(losses)
    with torch.no_grad():
        images = param.image(params).detach()
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8)
    activation, maps = measure(lm, layer, pixels, channels)
    loss = torch.stack(curve, dim=1).float()
    finite = torch.isfinite(loss).all(1) & torch.isfinite(images).flatten(1).all(1) & torch.isfinite(activation)
    return UnitImages(pixels.permute(0, 2, 3, 1).cpu().numpy(), activation.cpu().numpy(),
                      maps.to(torch.float16).cpu().numpy(), loss.cpu().numpy(), finite.cpu().numpy(), images.cpu())


@torch.no_grad()
def measure(lm: LoadedModel, layer: Layer, pixels: torch.Tensor, channels: torch.Tensor, batch: int = 64):
    """Activation (mean over the patch grid) and map of each uint8 image [n, 3, H, W] for its unit,
    in fp32 with the model's plain forward: what anyone re-deriving from the stored image gets."""
    acts, maps = [], []
    model = lm.model.to(pixels.device)
    for i in range(0, len(pixels), batch):
        x = lm.normalize(pixels[i:i + batch].float() / 255)
        (grid,) = run_to(model, x, [layer])
        m = unit_maps(grid.float(), channels[i:i + batch])
        acts.append(m.mean(dim=(1, 2)))
        maps.append(m)
    return torch.cat(acts), torch.cat(maps)
