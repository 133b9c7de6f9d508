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
import torch._dynamo
from tqdm import tqdm

from .augment import Draw, build_copies, clean, draw, jitter, pixel_noise
from .counter_rng import seed_tensor
from .device import compute_dtype, exact_fp32
from .forward import TruncatedViT, unit_forward
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


def step_losses(images, shifts, affine, scale, offset, noise_key, noise_hi, noise_std, forward, units, mean, std,
                tv_weight: float, tv_on_noise: bool, autocast: bool, tv_norm: str = "l2"):
    """Per-unit losses [U] of one step (see ``augment.Draw`` for the augmentation tensors; the per-pixel
    noise, when the recipe has it, comes as its keys and std and is drawn here, see ``PixelNoise``).

    The copies are built already normalized: (sigma * roll(x) + mu + noise - mean) / std. TV is taken
    on the unnormalized copies; where they carry no per-pixel noise it is computed once per source
    image, because CS scales each channel's neighbour differences by sigma and per-channel noise leaves
    them unchanged: TV(copy) = mean_c sigma_c * TV_c(roll(x)).
    """
    U, _, H, W = images.shape
    C = scale.shape[1]
    rolled = jitter(images, shifts, C, affine).view(U, -1, 3, H, W)             # (U, 1 or C, 3, H, W)
    pixel = pixel_noise(noise_key, noise_hi, noise_std, (C, 3, H, W)) if noise_key is not None else None
    noise = pixel / std[:, None, None] if pixel is not None else None
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        maps = forward.copies(rolled, scale / std, (offset - mean) / std, noise, units)   # (U * C, h, w)
    if pixel is not None and tv_on_noise:
        x = build_copies(rolled, scale, offset, pixel)
        tv = channel_total_variation(x, tv_norm).mean(dim=1).view(U, C)
    else:
        tv = (channel_total_variation(rolled.view(-1, 3, H, W), tv_norm).view(U, -1, 3) * scale).mean(dim=2)
    return unit_losses(maps, tv, tv_weight)


# What a failed compile raises: Dynamo's own errors, and every backend error (Inductor's C++ and
# Triton compiles included), which Dynamo wraps in BackendCompilerFailed. The same classes from
# torch 2.5 (the floor in pyproject.toml) on. CUDA errors at run time (a CUDA graph's included) are
# not among them: they stop the run.
COMPILER_ERRORS = (torch._dynamo.exc.TorchDynamoException,)


class Step:
    """Losses and image gradients of one step for one layer's forward, compiled when asked.

    Only ``TruncatedViT`` compiles (plain modules and tensors; CUDA graphs on CUDA, Inductor's default
    on the CPU); the hook path runs eagerly, as its exception-stopped forward would break the graph.
    A step is made per layer with a fresh Dynamo cache, and every batch of the layer has one shape
    (``optimize_units`` pads), so a layer compiles one graph for its augmented steps and one for its
    clean steps, whatever the number of steps, batches or retries; a halving after out-of-memory adds
    one. If compiling fails, this layer continues eagerly (same numbers, lower speed): ``mode`` says
    so, and the build log and the shard's attributes record it. Out-of-memory errors pass through
    (the scheduler halves the batch).
    """

    def __init__(self, forward, compile: bool = False, device: torch.device | None = None):
        self.forward = forward
        self.fn = step_losses
        if not compile:
            self.mode = "eager"
        elif not isinstance(forward, TruncatedViT):
            self.mode = "eager (the hook path does not compile)"
        else:
            torch._dynamo.reset()
            cuda = device is not None and device.type == "cuda"
            self.fn = torch.compile(step_losses, mode="reduce-overhead" if cuda else None, dynamic=False)
            self.mode = "compiled"

    def __call__(self, param, params: torch.Tensor, d: Draw, units, mean, std, tv_weight: float,
                 tv_on_noise: bool, autocast: bool, tv_norm: str = "l2") -> torch.Tensor:
        """The step's per-unit losses (detached); their gradient is accumulated into ``params.grad``."""
        noise = (d.noise.key, d.noise.hi, d.noise.std) if d.noise is not None else (None, None, None)
        args = (d.shifts, d.affine, d.scale, d.offset, *noise, self.forward, units, mean, std, tv_weight,
                tv_on_noise, autocast, tv_norm)
        try:
            losses = self.fn(param.image(params), *args)
            losses.sum().backward()
        except COMPILER_ERRORS as e:
            if isinstance(e.__cause__, torch.OutOfMemoryError):
                raise e.__cause__ from None     # out of memory while compiling: the scheduler halves the batch
            if self.fn is step_losses:
                raise
            reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
            tqdm.write(f"warning: torch.compile failed ({reason}); this layer continues eagerly "
                       "(recorded in the build log and the shard)")
            self.fn, self.mode = step_losses, f"eager (compiling failed: {reason})"
            params.grad = None
            losses = step_losses(param.image(params), *args)
            losses.sum().backward()
        return losses.detach().clone()


def optimize_units(lm: LoadedModel, layer: Layer, units: list[int], seeds: list[int], recipe: Recipe,
                   device: torch.device, precision: str = "fp32", forward=None, step: Step | None = None,
                   pad_to: int | None = None) -> UnitImages:
    """Optimize one image per unit of ``layer`` (the recipe's render loop).

    ``forward`` and ``step`` are made once per layer by the scheduler (a compiled step is reused
    across batches); by default the layer's forward in ``precision`` and an eager step. ``pad_to``:
    run a batch of that many units, the last unit repeated, so every batch of a layer has one shape
    (one compiled graph); a unit's result does not depend on its batch, and the copies are dropped.
    """
    H, W = lm.input_size
    forward = forward or unit_forward(lm, layer, compute_dtype(precision), device)
    step = step or Step(forward)
    n = len(units)
    if pad_to is not None and pad_to > n:
        units, seeds = list(units) + [units[-1]] * (pad_to - n), list(seeds) + [seeds[-1]] * (pad_to - n)
    seeds_t = seed_tensor(seeds, device)
    channels = torch.tensor(units, device=device)
    mean, std = lm.normalization(device)
    autocast = compute_dtype(precision) != torch.float32
    param = parametrization(recipe.parametrization, (H, W))
    params = param.init(seeds_t, (H, W)).requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=recipe.lr, betas=recipe.betas, fused=device.type == "cuda")
    augmented_steps = recipe.steps - recipe.clean_steps
    patch = (H // layer.grid[0], W // layer.grid[1])          # the pixels of one of this layer's tokens
    record, curve = set(recipe.loss_steps()), []
    for t in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(t)
        d = draw(seeds_t, t, recipe, (H, W), patch) if t < augmented_steps else clean(len(units), device)
        optimizer.zero_grad(set_to_none=True)
        losses = step(param, params, d, channels, mean, std, recipe.tv, recipe.tv_input == "augmented", autocast,
                      recipe.tv_norm)
        optimizer.step()
        param.project(params)
        if t in record:
            curve.append(losses)
    with torch.no_grad():
        images = param.image(params).detach()[:n]
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8)
    activation, maps = measure(lm, layer, pixels, channels[:n])
    loss = torch.stack(curve, dim=1).float()[:n]
    finite = torch.isfinite(loss).all(1) & torch.isfinite(images).flatten(1).all(1) & torch.isfinite(activation)
    return UnitImages(pixels.permute(0, 2, 3, 1).cpu().numpy(), activation.cpu().numpy(),
                      maps.to(torch.float16).cpu().numpy(), loss.cpu().numpy(), finite.cpu().numpy(), images.cpu())


@torch.no_grad()
def measure(lm: LoadedModel, layer: Layer, pixels: torch.Tensor, channels: torch.Tensor, batch: int = 64):
    """Activation (mean over the patch grid) and map of each uint8 image [n, 3, H, W] for its unit,
    in fp32 with the model's plain forward: what anyone re-deriving from the stored image gets."""
    acts, maps = [], []
    model = lm.model.to(pixels.device)
    with exact_fp32():
        for i in range(0, len(pixels), batch):
            x = lm.normalize(pixels[i:i + batch].float() / 255)
            (grid,) = run_to(model, x, [layer])
            m = unit_maps(grid.float(), channels[i:i + batch])
            acts.append(m.mean(dim=(1, 2)))
            maps.append(m)
    return torch.cat(acts), torch.cat(maps)
