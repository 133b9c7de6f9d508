"""Devices, precisions and compilation: what a command's --device, --precision and --compile mean.

The defaults live here: ``auto`` everywhere. ``--precision auto`` is bf16 on CUDA (tensor cores,
with TF32 for what stays in fp32) and fp32 on the CPU; ``--compile auto`` compiles the engine's step
on CUDA only (the first compile of each layer costs seconds there, about a minute on a CPU).
"""
from __future__ import annotations

import torch

from atlas.format import AtlasError

DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "auto"
DEFAULT_COMPILE = "auto"
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_CHOICES = ("auto", "on", "off")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AtlasError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise AtlasError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for ``precision`` on ``device`` ('auto': bf16 on CUDA, fp32 elsewhere). Turns
    TF32 on for CUDA matrix products that stay in fp32."""
    if precision not in PRECISIONS:
        raise AtlasError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def resolve_compile(choice: str, device: torch.device) -> bool:
    """Whether the engine compiles its step ('auto': on CUDA only)."""
    if choice not in COMPILE_CHOICES:
        raise AtlasError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, not {choice!r}")
    return device.type == "cuda" if choice == "auto" else choice == "on"


def autocast(device: torch.device, precision: str):
    """bf16 autocast for a resolved ``precision`` of 'bf16' (the probe's and analyses' forward passes)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the engine's weights are cast to for a resolved precision ('fp32' or 'bf16')."""
    if precision not in _DTYPES:
        raise AtlasError(f"precision must be fp32 or bf16 here (resolve 'auto' first), not {precision!r}")
    return _DTYPES[precision]
