"""The augmentations A(x) = GS(CS(Jitter(x))), drawn for each unit from its own random generator.

Each unit owns a ``torch.Generator`` seeded from its unit seed, and every random number of its
run comes from that generator in a fixed order, so a unit's images do not depend on which units
share its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .recipe import Recipe


@dataclass
class Draw:
    """One step's augmentation parameters for a batch of units x copies (rows unit-major)."""
    shifts: torch.Tensor   # long [B, 2]: circular shift (dy, dx)
    scale: torch.Tensor    # [B, 3, 1, 1]: ColorShift sigma
    offset: torch.Tensor   # [B, 3, 1, 1]: ColorShift mu
    noise: torch.Tensor    # [B, 3, H, W] (per pixel) or [B, 3, 1, 1] (per channel), standard normal


def draw(generators: list[torch.Generator], recipe: Recipe, size: tuple[int, int], device) -> Draw:
    """Draw one step's augmentations: ``recipe.batch_copies`` copies for each unit's generator."""
    copies = recipe.batch_copies
    (jy, jx), noise_size = recipe.jitter_pixels(size), (size if recipe.noise == "pixel" else (1, 1))
    uniforms, noises = [], []
    for g in generators:
        uniforms.append(torch.rand(copies, 8, generator=g, device=device))
        noises.append(torch.randn(copies, 3, *noise_size, generator=g, device=device))
    u = torch.cat(uniforms)
    limit = torch.tensor([jy, jx], device=device)
    shifts = (u[:, :2] * (2 * limit + 1)).floor().long() - limit
    offset = (u[:, 2:5] * 2 - 1) * recipe.color_shift_mean
    scale = ((u[:, 5:8] * 2 - 1) * recipe.color_shift_log_std).exp()
    return Draw(shifts, scale.view(-1, 3, 1, 1), offset.view(-1, 3, 1, 1), torch.cat(noises))


def _roll(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll`` with its own (dy, dx) for every image of the batch, as one gather."""
    B, C, H, W = x.shape
    rows = (torch.arange(H, device=x.device)[None] - shifts[:, :1]) % H
    cols = (torch.arange(W, device=x.device)[None] - shifts[:, 1:]) % W
    index = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, H * W).expand(B, C, H * W)
    return x.reshape(B, C, H * W).gather(2, index).view(B, C, H, W)


class _RollEach(torch.autograd.Function):
    """Per-image roll whose gradient is the opposite roll (cheaper than indexing's scatter-add)."""

    @staticmethod
    def forward(ctx, x, shifts):
        ctx.save_for_backward(shifts)
        return _roll(x, shifts)

    @staticmethod
    def backward(ctx, grad):
        (shifts,) = ctx.saved_tensors
        return _roll(grad, -shifts), None


def roll_each(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circularly shift image i of ``x`` [B, C, H, W] by ``shifts[i]`` = (dy, dx); differentiable."""
    return _RollEach.apply(x, shifts)


def augment(images: torch.Tensor, d: Draw, noise_std: float) -> torch.Tensor:
    """A(x) for every copy: images [U, 3, H, W] -> [U * copies, 3, H, W] (copies of a unit adjacent)."""
    copies = d.shifts.shape[0] // images.shape[0]
    x = roll_each(images.repeat_interleave(copies, dim=0), d.shifts)
    return x * d.scale + d.offset + noise_std * d.noise
