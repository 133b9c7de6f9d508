"""Counter-based random numbers: every number a unit's run uses is a hash of (unit seed, step, stream,
index), so a batch of units draws all of them in a few vectorized ops, no unit's numbers depend on
which other units share its batch, and CPU and CUDA produce the same integers.

The hash is ``lowbias32`` (x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16,
all mod 2^32), computed on int64 tensors with the multiplications split in 16-bit halves so nothing
overflows. For a unit seed s (63 bits: lo = s mod 2^32, hi = s >> 32), a step t and a stream k:

    key   = mix(lo ^ mix(hi ^ mix((16 t + k) mod 2^32)))
    word  = mix(hi ^ mix(key ^ i))                for element i = 0, 1, ... of the stream
    u     = ((word >> 9) + 0.5) / 2^23            uniform in (0, 1), exact in float32
    z     = sqrt(2) * erfinv(2u - 1)              standard normal

docs/FORMAT.md ("Unit seed") repeats this so anyone can regenerate a unit's augmentations.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF

# streams of one step (k above); INIT is drawn at step 0
INIT, AUGMENT, NOISE, GEOMETRY = 0, 1, 2, 3


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64, without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 hash of each 32-bit value in ``x`` (int64 tensor)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix_int(x: int) -> int:
    """``mix`` of one Python int (the step and stream part of the key)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def keys(seeds: torch.Tensor, step: int, stream: int) -> torch.Tensor:
    """One key per unit for (step, stream): seeds int64 [U] -> int64 [U]."""
    lo, hi = seeds & MASK32, (seeds >> 32) & MASK32
    return mix(lo ^ mix(hi ^ _mix_int((16 * step + stream) & MASK32)))


def uniform(seeds: torch.Tensor, step: int, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform (0, 1) float32 numbers [U, *shape]: element i of unit u is a hash of (seed_u, step, stream, i)."""
    return uniform_from_keys(keys(seeds, step, stream), high_words(seeds), shape)


def normal(seeds: torch.Tensor, step: int, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal float32 numbers [U, *shape] (inverse CDF of ``uniform``)."""
    return normal_from_keys(keys(seeds, step, stream), high_words(seeds), shape)


def high_words(seeds: torch.Tensor) -> torch.Tensor:
    """Each seed's high 32 bits (``hi`` above), int64 [U]."""
    return (seeds >> 32) & MASK32


def uniform_from_keys(key: torch.Tensor, hi: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``uniform`` from each unit's key for (step, stream) and its seed's high word: the part whose
    work grows with the elements, in tensor ops only, so it runs inside a compiled step without a
    recompile per step (the step enters through the keys, not as a Python number)."""
    n = 1
    for s in shape:
        n *= s
    index = torch.arange(n, device=key.device, dtype=torch.int64)
    words = mix(hi[:, None] ^ mix(key[:, None] ^ index))
    return (((words >> 9).to(torch.float32) + 0.5) * 2.0 ** -23).view(key.shape[0], *shape)


def normal_from_keys(key: torch.Tensor, hi: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``normal`` from keys (see ``uniform_from_keys``)."""
    return torch.erfinv(uniform_from_keys(key, hi, shape) * 2 - 1) * 2 ** 0.5


def seed_tensor(seeds: list[int], device) -> torch.Tensor:
    """Unit seeds as an int64 tensor on ``device`` (one host-to-device copy per batch)."""
    return torch.tensor(seeds, dtype=torch.int64, device=device)
