"""What the optimization maximizes: a unit's mean activation over patch tokens, with a TV penalty."""
from __future__ import annotations

import torch


def channel_total_variation(x: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """TV of each channel of each image: x [B, C, H, W] -> [B, C], the sum over the horizontal,
    vertical and both diagonal neighbour differences of their unsquared L2 norm over the image (``l2``,
    the authors'), or of their mean absolute value (``l1``: anisotropic TV, which penalizes an edge by
    its height, not its length times height squared, so it flattens regions and keeps sharp edges)."""
    diffs = (
        x[:, :, :, 1:] - x[:, :, :, :-1],
        x[:, :, 1:, :] - x[:, :, :-1, :],
        x[:, :, 1:, 1:] - x[:, :, :-1, :-1],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
    )
    if norm == "l1":
        return sum(d.flatten(2).abs().mean(dim=2) for d in diffs)
    return sum(d.flatten(2).norm(dim=2) for d in diffs)


def total_variation(x: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """TV of each image of ``x`` [B, C, H, W] -> [B]: the channel TVs averaged over channels (the
    authors' TV, which also averages over the copies of a batch)."""
    return channel_total_variation(x, norm).mean(dim=1)


def unit_maps(grid: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Each image's own channel of a patch grid: grid [B, h, w, D], channels long [B] -> [B, h, w]."""
    B, h, w, _ = grid.shape
    return grid.gather(3, channels.view(B, 1, 1, 1).expand(B, h, w, 1)).squeeze(3)


def unit_losses(maps: torch.Tensor, tv: torch.Tensor, tv_weight: float) -> torch.Tensor:
    """Per-unit loss [U] = mean over the unit's copies of (-activation + tv_weight * TV).

    ``maps`` [U * C, h, w] holds each copy's values of its own unit on the patch grid (a unit's C
    copies adjacent), ``tv`` [U, C] each copy's TV. The activation is the mean over the patch grid.
    Losses are per unit so that summing them gives each image its own gradient.
    """
    U, C = tv.shape
    activation = maps.float().mean(dim=(1, 2)).view(U, C)
    return (-activation + tv_weight * tv).mean(dim=1)
