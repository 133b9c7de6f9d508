"""Shared fixtures: tiny random-init timm models (no weights, no network) and temporary atlases."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub in tests
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A ViT small enough for CPU tests: 32 px, 4x4 patch grid + CLS, 3 blocks of 128 FFN units.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)


@pytest.fixture(scope="session")
def tiny_vit():
    from builder.models import ModelSource, load_model
    return load_model(ModelSource("vit_tiny_patch16_224", random_init=True), **TINY_VIT)
