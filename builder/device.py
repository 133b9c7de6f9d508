"""Devices, precisions and compilation: what a command's --device, --precision and --compile mean.

The defaults live here: ``auto`` everywhere. ``--precision`` means what it says: ``fp32`` is IEEE
fp32 (TF32 off, for cuBLAS and cuDNN alike, whose own default lets convolutions use it); ``tf32`` is
fp32 weights with TF32 tensor-core products (CUDA only); ``bf16`` casts the engine's weights and runs
under bf16 autocast. ``auto`` is bf16 for the visualization engine on CUDA and fp32 elsewhere; the
probe and analyses resolve ``auto`` to fp32 (``resolve_precision(..., engine=False)``), so the stored
activations of pictures and the probe's scores are both fp32 and comparable. ``--compile auto``
compiles the engine's step on CUDA only (the first compile of each layer costs seconds there, about a
minute on a CPU).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from atlas.format import AtlasError

DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "auto"
DEFAULT_COMPILE = "auto"
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
COMPILE_CHOICES = ("auto", "on", "off")
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AtlasError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise AtlasError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device, engine: bool = True) -> str:
    """'fp32', 'tf32' or 'bf16' for ``precision`` on ``device`` ('auto': bf16 for the visualization
    engine on CUDA, else fp32), with the process's TF32 switches set to match: on for 'tf32' only."""
    if precision not in PRECISIONS:
        raise AtlasError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise AtlasError("--precision tf32 is a CUDA tensor-core mode; on the CPU use fp32 (or auto)")
    if precision == "auto":
        precision = "bf16" if engine and device.type == "cuda" else "fp32"
    _set_tf32(precision == "tf32")
    return precision


def _set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


@contextmanager
def exact_fp32():
    """IEEE fp32 products inside, whatever the precision of the run (a stored activation is what anyone
    re-deriving it in fp32 gets); the TF32 switches are restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    _set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def resolve_compile(choice: str, device: torch.device) -> bool:
    """Whether the engine compiles its step ('auto': on CUDA only)."""
    if choice not in COMPILE_CHOICES:
        raise AtlasError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, not {choice!r}")
    return device.type == "cuda" if choice == "auto" else choice == "on"


def autocast(device: torch.device, precision: str):
    """bf16 autocast for a resolved ``precision`` of 'bf16' (the probe's and analyses' forward passes)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the engine's weights are cast to for a resolved precision ('fp32', 'tf32' or 'bf16')."""
    if precision not in _DTYPES:
        raise AtlasError(f"precision must be fp32, tf32 or bf16 here (resolve 'auto' first), not {precision!r}")
    return _DTYPES[precision]
