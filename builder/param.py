"""Parametrizations: what the optimizer changes and how it becomes an image (lucent's split).

- ``pixel``: the image itself, uniform in (0, 1) at the start, clamped to [0, 1] after every step —
  the paper's (and the authors' code's) parametrization.
- ``fourier``: lucent's ``fft_image`` with ``to_valid_rgb``: per colour channel a spectrum (real and
  imaginary parts, N(0, 0.01²) at the start), scaled by 1 / max(frequency, 1 / side) so that every
  frequency gets the same step size, turned into an image by the inverse real FFT (orthonormal, / 4),
  mapped from a decorrelated colour space to RGB by the square root of ImageNet's colour correlation
  (lucent's matrix, columns normalized to the largest norm), and squashed into (0, 1) by a sigmoid.

Each one is batched over units and draws its start from the unit's own counter-based random
numbers (stream INIT), so a unit's picture does not depend on its batch.
"""
from __future__ import annotations

import torch

from .counter_rng import INIT, normal, uniform

# lucent's color_correlation_svd_sqrt (the square root of ImageNet's RGB covariance)
COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02],
                                  [0.27, 0.00, -0.05],
                                  [0.27, -0.09, 0.03]])


class Pixel:
    """The image is the parameter; clamped to [0, 1] after every step."""
    name = "pixel"

    def init(self, seeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return uniform(seeds, 0, INIT, (3, *size))

    def image(self, params: torch.Tensor) -> torch.Tensor:
        return params

    @torch.no_grad()
    def project(self, params: torch.Tensor) -> None:
        params.clamp_(0, 1)


class Fourier:
    """A decorrelated-colour spectrum per unit, scaled by frequency (lucent's fft_image + to_valid_rgb)."""
    name = "fourier"

    def __init__(self, size: tuple[int, int], decay_power: float = 1.0, sd: float = 0.01):
        self.size, self.decay_power, self.sd = tuple(size), decay_power, sd
        self._scales: dict = {}

    def _scale(self, device) -> torch.Tensor:
        if str(device) not in self._scales:
            H, W = self.size
            fy = torch.fft.fftfreq(H, device=device)[:, None]
            fx = torch.fft.rfftfreq(W, device=device)[None, :]
            freqs = (fy ** 2 + fx ** 2).sqrt()
            self._scales[str(device)] = 1.0 / freqs.clamp(min=1.0 / max(H, W)) ** self.decay_power
        return self._scales[str(device)]

    def init(self, seeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        H, W = size
        return self.sd * normal(seeds, 0, INIT, (3, H, W // 2 + 1, 2))

    def image(self, params: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_complex(params.contiguous()) * self._scale(params.device)
        decorrelated = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4.0        # (U, 3, H, W)
        matrix = COLOR_CORRELATION.to(params.device)
        matrix = matrix / matrix.norm(dim=0).max()
        return torch.sigmoid(torch.einsum("ij,ujhw->uihw", matrix, decorrelated))

    def project(self, params: torch.Tensor) -> None:
        pass


def parametrization(name: str, size: tuple[int, int]):
    """The parametrization called ``name`` for images of ``size`` (H, W)."""
    if name == "pixel":
        return Pixel()
    if name == "fourier":
        return Fourier(size)
    raise ValueError(f"unknown parametrization {name!r}")


PARAMETRIZATIONS = ("pixel", "fourier")
