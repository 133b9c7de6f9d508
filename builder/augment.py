"""The augmentations A(x) = GS(CS(Jitter(x))), drawn for a batch of units at once.

Every random number comes from ``counter_rng``: a hash of the unit's seed, the step and the element,
so a unit's augmentations never depend on which units share its batch, and a whole batch draws in a
few vectorized ops. Jitter is a circular shift, CS(x) = sigma * x + mu per copy and channel, GS adds
Gaussian noise per copy and channel (the authors' code) or per pixel (the paper's text).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .counter_rng import AUGMENT, INIT, NOISE, normal, uniform
from .recipe import Recipe


@dataclass
class Draw:
    """One step's augmentations of U units x C copies: copy = scale * roll(x, shift) + offset (+ pixel_noise)."""
    shifts: torch.Tensor | None        # long [U, 2] (one (dy, dx) per unit: shared) or [U * C, 2]; None: no roll
    scale: torch.Tensor                # [U, C, 3]: CS sigma
    offset: torch.Tensor               # [U, C, 3]: CS mu, plus the GS noise when it is per channel
    pixel_noise: torch.Tensor | None   # [U, C, 3, H, W]: the GS noise (std applied) when it is per pixel

    @property
    def copies(self) -> int:
        return self.scale.shape[1]


def initial_images(seeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each unit's starting image, uniform in (0, 1): [U, 3, H, W] (stream INIT of step 0)."""
    return uniform(seeds, 0, INIT, (3, *size))


def draw(seeds: torch.Tensor, step: int, recipe: Recipe, size: tuple[int, int]) -> Draw:
    """Step ``step``'s augmentations for the units with ``seeds`` (int64 [U]), ``recipe.batch_copies`` each.

    Per copy, 8 uniforms u (stream AUGMENT): shift_y = floor(u0 (2 jy + 1)) - jy, shift_x likewise
    from u1, mu_c = (2 u_{2+c} - 1) a, sigma_c = exp((2 u_{5+c} - 1) b). With a shared jitter every
    copy takes copy 0's shift. Noise (stream NOISE) is std(step) * z, z standard normal [C, 3] or
    [C, 3, H, W]; at std 0 none is drawn.
    """
    copies = recipe.batch_copies
    (jy, jx) = recipe.jitter_pixels(size)
    u = uniform(seeds, step, AUGMENT, (copies, 8))
    shifts = torch.stack([(u[..., 0] * (2 * jy + 1)).floor() - jy, (u[..., 1] * (2 * jx + 1)).floor() - jx], -1).long()
    shifts = shifts[:, 0] if recipe.jitter_shared else shifts.reshape(-1, 2)
    offset = (u[..., 2:5] * 2 - 1) * recipe.color_shift_mean
    scale = ((u[..., 5:8] * 2 - 1) * recipe.color_shift_log_std).exp()
    std, pixel_noise = recipe.noise_std(step), None
    if std > 0 and recipe.noise == "channel":
        offset = offset + std * normal(seeds, step, NOISE, (copies, 3))
    elif std > 0:
        pixel_noise = std * normal(seeds, step, NOISE, (copies, 3, *size))
    return Draw(shifts, scale, offset, pixel_noise)


def clean(units: int, device) -> Draw:
    """The identity augmentation (the recipe's clean steps): one copy, no shift, no colour shift, no noise."""
    return Draw(None, torch.ones(units, 1, 3, device=device), torch.zeros(units, 1, 3, device=device), None)


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


def jitter(images: torch.Tensor, shifts: torch.Tensor | None, copies: int) -> torch.Tensor:
    """Jitter(x): [U, 3, H, W] -> [U * S, 3, H, W], S = 1 when the copies share their shift (or there
    is none: ``shifts`` None), else ``copies``."""
    if shifts is None:
        return images
    if shifts.shape[0] != images.shape[0]:
        images = images.repeat_interleave(copies, dim=0)
    return roll_each(images, shifts)


def augment(images: torch.Tensor, d: Draw) -> torch.Tensor:
    """A(x) = GS(CS(Jitter(x))) for every copy: [U, 3, H, W] -> [U * C, 3, H, W], a unit's copies adjacent."""
    U, _, H, W = images.shape
    rolled = jitter(images, d.shifts, d.copies).view(U, -1, 3, H, W)
    copies = rolled * d.scale[..., None, None] + d.offset[..., None, None]
    if d.pixel_noise is not None:
        copies = copies + d.pixel_noise
    return copies.view(-1, 3, H, W)
