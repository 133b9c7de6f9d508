"""Shared fixtures: tiny random-init timm models (no weights, no network) and temporary atlases."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub in tests
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from benchmarks.preflight import TINY_VIT  # noqa: E402  (the tiny ViT of the tests and the GPU scripts' dry runs)


TINY_MODEL = ["--model", "vit_tiny_patch16_224", "--random-init", "--model-args", json.dumps(TINY_VIT)]
EVIL = '<script>alert("x")</script> & \'quotes\''


def make_tricky_folder(root: Path) -> tuple[Path, Path]:
    """Images whose file and class names need escaping, and a labels file naming evil classes."""
    rng = np.random.default_rng(0)
    folder = root / "imgs"
    rows = []
    for c, cls in enumerate(["shopping cart", EVIL, "a&b"]):
        sub = folder / f"dir{c} <&>"
        sub.mkdir(parents=True)
        for i in range(8):
            name = f'"img" {i} <b>.png' if c == 1 else f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(sub / name)
            rows.append(f'"{sub.name}/{name.replace(chr(34), chr(34) * 2)}","{cls.replace(chr(34), chr(34) * 2)}"')
    labels = root / "labels.csv"
    labels.write_text("relative_path,label\n" + "\n".join(rows) + "\n")
    return folder, labels


@pytest.fixture(autouse=True)
def own_remote_cache(tmp_path_factory, monkeypatch):
    """Every test reads hosted atlases through a cache of its own (never ~/.cache/vit-atlas, whose
    content-addressed files would let one test's reads answer another's)."""
    monkeypatch.setenv("VIT_ATLAS_CACHE", str(tmp_path_factory.mktemp("remote-cache")))


@pytest.fixture(scope="session")
def small_atlas(tmp_path_factory):
    """A small rendered atlas whose dataset has names that need escaping: (atlas folder, index.html)."""
    import build
    from atlas.website import render
    base = tmp_path_factory.mktemp("small-atlas")
    folder, labels = make_tricky_folder(base)
    out = base / 'atlas & "co" <x>'
    assert build.main(["visualize", *TINY_MODEL, "--preset", "quick", "--steps", "3", "--layers", "0-1",
                       "--units", "0-39", "--shard-units", "16", "--out", str(out)]) == 0
    assert build.main(["visualize", *TINY_MODEL, "--preset", "fourier", "--steps", "3", "--layers", "0",
                       "--units", "0-39", "--shard-units", "16", "--out", str(out)]) == 0   # a second picture
    assert build.main(["probe", *TINY_MODEL, "--images", str(folder), "--labels", str(labels), "--layers", "0-1",
                       "--k", "5", "--workers", "0", "--shard-units", "16", "--out", str(out)]) == 0
    assert build.main(["visualize", *TINY_MODEL, "--site", "attn", "--preset", "quick", "--steps", "3", "--layers", "0",
                       "--units", "0-7", "--out", str(out)]) == 0                                       # another site
    assert build.main(["probe", *TINY_MODEL, "--site", "attn", "--images", str(folder), "--labels", str(labels),
                       "--layers", "0", "--units", "0-7", "--k", "5", "--workers", "0", "--out", str(out)]) == 0
    index = render(out, workers=2, progress=False)
    return out, index


@pytest.fixture(scope="session")
def tiny_vit():
    from builder.models import ModelSource, load_model
    return load_model(ModelSource("vit_tiny_patch16_224", random_init=True), **TINY_VIT)
