"""What the optimization maximizes: a unit's mean activation over patch tokens, with a TV penalty."""
from __future__ import annotations

import torch


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """TV of each image of ``x`` [B, C, H, W] -> [B]: for the horizontal, vertical and both diagonal
    neighbour differences, the (unsquared) L2 norm over the image of each channel, averaged over
    channels, summed over the four directions (as the authors' code does)."""
    diffs = (
        x[:, :, :, 1:] - x[:, :, :, :-1],
        x[:, :, 1:, :] - x[:, :, :-1, :],
        x[:, :, 1:, 1:] - x[:, :, :-1, :-1],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
    )
    return sum(d.flatten(2).norm(dim=2).mean(dim=1) for d in diffs)


def unit_activation(grid: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Each image's activation of its own unit: grid [B, h, w, D], units long [B] -> [B] (mean over
    the patch grid) and its map [B, h, w]."""
    B, h, w, D = grid.shape
    maps = grid.gather(3, units.view(B, 1, 1, 1).expand(B, h, w, 1)).squeeze(3)
    return maps.float().mean(dim=(1, 2)), maps


def unit_losses(grid: torch.Tensor, augmented: torch.Tensor, units: torch.Tensor, copies: int,
                tv_weight: float) -> torch.Tensor:
    """Per-unit loss [U] = -(activation averaged over copies) + tv_weight * (TV averaged over copies).

    ``grid`` and ``augmented`` hold ``copies`` adjacent rows per unit; ``units`` holds one channel per
    unit. Losses are per unit so that summing them gives each image its own gradient.
    """
    activation, _ = unit_activation(grid, units.repeat_interleave(copies))
    tv = total_variation(augmented.float())
    return (-activation + tv_weight * tv).view(-1, copies).mean(dim=1)
