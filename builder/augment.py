"""The augmentations A(x) = GS(CS(Jitter(x))), drawn for a batch of units at once.

Every random number comes from ``counter_rng``: a hash of the unit's seed, the step and the element,
so a unit's augmentations never depend on which units share its batch, and a whole batch draws in a
few vectorized ops. Jitter is a circular shift, CS(x) = sigma * x + mu per copy and channel, GS adds
Gaussian noise per copy and channel (the authors' code) or per pixel (the paper's text).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .counter_rng import AUGMENT, GEOMETRY, NOISE, high_words, keys, normal, normal_from_keys, uniform
from .recipe import Recipe


@dataclass
class PixelNoise:
    """One step's per-pixel GS noise as what generates it: std * z, z drawn from the units' keys for
    (step, NOISE). Kept as keys, not numbers, so the compiled step draws it (fused, no [U, C, 3, H, W]
    tensor made eagerly at every step) and every step, the last one at std 0 included, has one shape."""
    key: torch.Tensor   # int64 [U]: counter_rng.keys(seeds, step, NOISE)
    hi: torch.Tensor    # int64 [U]: the seeds' high words
    std: torch.Tensor   # float32 []: the step's noise std (a tensor: one graph for every step)

    def sample(self, copies: int, size: tuple[int, int]) -> torch.Tensor:
        """The noise [U, copies, 3, H, W]."""
        return pixel_noise(self.key, self.hi, self.std, (copies, 3, *size))


def pixel_noise(key: torch.Tensor, hi: torch.Tensor, std: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """std * standard normal [U, *shape] from the units' noise keys (``PixelNoise``)."""
    return std * normal_from_keys(key, hi, shape)


@dataclass
class Draw:
    """One step's augmentations of U units x C copies: copy = scale * roll(x, shift) + offset (+ pixel noise)."""
    shifts: torch.Tensor | None        # long [U, 2] (one (dy, dx) per unit: shared) or [U * C, 2]; None: no roll
    affine: torch.Tensor | None        # [U or U * C, 2, 3]: rotation, zoom and shift as grid_sample's theta
    scale: torch.Tensor                # [U, C, 3]: CS sigma
    offset: torch.Tensor               # [U, C, 3]: CS mu, plus the GS noise when it is per channel
    noise: PixelNoise | None           # the GS noise when it is per pixel
    size: tuple[int, int] = (0, 0)     # (H, W) of the images

    @property
    def copies(self) -> int:
        return self.scale.shape[1]

    @property
    def pixel_noise(self) -> torch.Tensor | None:
        """The per-pixel noise [U, C, 3, H, W] (std applied), or None."""
        return self.noise.sample(self.copies, self.size) if self.noise is not None else None


def draw(seeds: torch.Tensor, step: int, recipe: Recipe, size: tuple[int, int], patch: tuple[int, int] = (1, 1)) -> Draw:
    """Step ``step``'s augmentations for the units with ``seeds`` (int64 [U]), ``recipe.batch_copies`` each,
    for images of ``size`` whose layer reads tokens of ``patch`` pixels (the jitter's floor).

    Per copy, 8 uniforms u (stream AUGMENT): shift_y = floor(u0 (2 jy + 1)) - jy, shift_x likewise
    from u1, mu_c = (2 u_{2+c} - 1) a, sigma_c = exp((2 u_{5+c} - 1) b). With a shared jitter every
    copy takes copy 0's shift. Noise (stream NOISE) is std(step) * z, z standard normal [C, 3] or
    [C, 3, H, W] (per channel: none at std 0; per pixel: drawn inside the step, ``PixelNoise``). With rotation or zoom (``recipe.affine``), 2 more uniforms per
    copy (stream GEOMETRY) give angle = (2 u0 - 1) rotate degrees and zoom = 1 + (2 u1 - 1) scale_jitter,
    and the copy is resampled (bilinear, reflected at the border) by that and its shift, not rolled.
    """
    copies = recipe.batch_copies
    (jy, jx) = recipe.jitter_pixels(size, patch)
    u = uniform(seeds, step, AUGMENT, (copies, 8))
    shifts = torch.stack([(u[..., 0] * (2 * jy + 1)).floor() - jy, (u[..., 1] * (2 * jx + 1)).floor() - jx], -1).long()
    shifts = shifts[:, 0] if recipe.jitter_shared else shifts.reshape(-1, 2)
    offset = (u[..., 2:5] * 2 - 1) * recipe.color_shift_mean
    scale = ((u[..., 5:8] * 2 - 1) * recipe.color_shift_log_std).exp()
    std, noise = recipe.noise_std(step), None
    if recipe.noise == "channel" and std > 0:
        offset = offset + std * normal(seeds, step, NOISE, (copies, 3))
    elif recipe.noise == "pixel" and (recipe.noise_start > 0 or recipe.noise_end > 0):
        noise = PixelNoise(keys(seeds, step, NOISE), high_words(seeds),
                           torch.tensor(std, dtype=torch.float32, device=seeds.device))
    affine = None
    if recipe.affine:
        g = uniform(seeds, step, GEOMETRY, (copies, 2))
        g = g[:, 0] if recipe.jitter_shared else g.reshape(-1, 2)
        angle = torch.deg2rad((g[:, 0] * 2 - 1) * recipe.rotate)
        zoom = 1 + (g[:, 1] * 2 - 1) * recipe.scale_jitter
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        H, W = size
        affine = torch.stack([torch.stack([cos, -sin, 2 * shifts[:, 1].float() / W], -1),
                              torch.stack([sin, cos, 2 * shifts[:, 0].float() / H], -1)], 1)
        shifts = None
    return Draw(shifts, affine, scale, offset, noise, size)


def clean(units: int, device) -> Draw:
    """The identity augmentation (the recipe's clean steps): one copy, no shift, no colour shift, no noise."""
    return Draw(None, None, torch.ones(units, 1, 3, device=device), torch.zeros(units, 1, 3, device=device), None)


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


def jitter(images: torch.Tensor, shifts: torch.Tensor | None, copies: int,
           affine: torch.Tensor | None = None) -> torch.Tensor:
    """Jitter(x): [U, 3, H, W] -> [U * S, 3, H, W], S = 1 when the copies share their geometry (or there
    is none), else ``copies``: rolled by ``shifts``, or resampled by ``affine`` (grid_sample's theta)."""
    move = affine if affine is not None else shifts
    if move is None:
        return images
    if move.shape[0] != images.shape[0]:
        images = images.repeat_interleave(copies, dim=0)
    if affine is None:
        return roll_each(images, shifts)
    grid = torch.nn.functional.affine_grid(affine.to(images.dtype), list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                                           align_corners=False)


def build_copies(rolled: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 pixel_noise: torch.Tensor | None) -> torch.Tensor:
    """The copies as images: rolled [U, S, 3, H, W] (S = 1 or C), scale and offset [U, C, 3], pixel_noise
    [U, C, 3, H, W] or None -> [U * C, 3, H, W], a unit's copies adjacent."""
    U, C = scale.shape[:2]
    x = rolled * scale[..., None, None] + offset[..., None, None]
    if pixel_noise is not None:
        x = x + pixel_noise
    return x.reshape(U * C, *rolled.shape[2:])


def augment(images: torch.Tensor, d: Draw) -> torch.Tensor:
    """A(x) = GS(CS(Jitter(x))) for every copy: [U, 3, H, W] -> [U * C, 3, H, W], a unit's copies adjacent."""
    U, _, H, W = images.shape
    return build_copies(jitter(images, d.shifts, d.copies, d.affine).view(U, -1, 3, H, W), d.scale, d.offset,
                        d.pixel_noise)
