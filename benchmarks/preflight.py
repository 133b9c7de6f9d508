"""What the GPU scripts (gpu.sh, gpu_check.sh) share: their preconditions, and the tiny ViT their
``--dry-run`` walks the commands with (the same one the tests use).

    python benchmarks/preflight.py check 0|1     # installed, CUDA visible (1: dry run, CPU); prints the device
    python benchmarks/preflight.py model-args    # the tiny ViT's timm arguments, as JSON
    python benchmarks/preflight.py spec OUT      # a build spec of the tiny ViT into OUT/atlas, on stdout
"""
from __future__ import annotations

import importlib
import json
import sys

# A ViT small enough for CPU tests and dry runs: 32 px, 4x4 patch grid + CLS, 3 blocks of 128 FFN units.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)


def check(dry: bool) -> str:
    """The device line of a results table; exits with a one-line reason when the script cannot run."""
    try:
        for name in ("atlas", "builder", "timm"):
            importlib.import_module(name)
        import torch
    except ImportError as e:
        sys.exit(f"ViT Atlas is not installed for {sys.executable} ({e}): run `pip install -e .` in the repository")
    if dry:
        return f"CPU (dry run), torch {torch.__version__}"
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device (check CUDA_VISIBLE_DEVICES and the driver); on a machine without one, "
                 "--dry-run walks the commands")
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"


def tiny_spec(out: str) -> str:
    """A build spec of the tiny ViT (quick preset, 2 steps, no probe) writing into ``out``/atlas."""
    args = ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY_VIT.items())
    return (f'[atlas]\nname = "dry-run"\nout = {json.dumps(out + "/atlas")}\n[build]\ndevice = "cpu"\n'
            f'[recipe]\npreset = "quick"\nsteps = 2\n[[models]]\nname = "vit_tiny_patch16_224"\nrandom_init = true\n'
            f'probe = false\nmodel_args = {{ {args} }}\n')


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "check" and len(sys.argv) == 3:
        print(check(sys.argv[2] == "1"))
    elif command == "model-args":
        print(json.dumps(TINY_VIT))
    elif command == "spec" and len(sys.argv) == 3:
        print(tiny_spec(sys.argv[2]), end="")
    else:
        sys.exit(__doc__)
