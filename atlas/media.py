"""Images for the website: WebP encodings, the model's view of a dataset image, and activation maps.

Maps travel as one byte per patch (``quantize_map``); the browser draws them on the patch grid through
a transparent-to-yellow ramp (``RAMP`` in site_templates/static/atlas.js, the one place it is defined), so no
copy of a photo is ever baked with a map.
"""
from __future__ import annotations

import functools
import io
import json

import numpy as np
from PIL import Image

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}

# WebP qualities (0-100) and effort (0-6) of what the website shows: docs/benchmarks.md has the bytes and
# the seconds they give (a ViT-B/16 atlas encodes 150,000 pictures; effort 1 is 2.8x as fast as 4 for 7%).
PICTURE_QUALITY, PICTURE_EFFORT = 45, 1     # optimized pictures at their own size (unit view)
TILE_QUALITY, TILE_EFFORT = 60, 2           # optimized pictures as layer-page tiles
THUMB_QUALITY, THUMB_EFFORT = 55, 4         # dataset thumbnails


def webp(image: Image.Image | np.ndarray, size: int | None = None, quality: int = PICTURE_QUALITY,
         effort: int = PICTURE_EFFORT) -> bytes:
    """WebP bytes of an RGB image, downscaled (never upscaled) so its longer side is at most ``size``."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    if size and max(img.size) > size:
        scale = size / max(img.size)
        target = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        factor = int(max(img.size) // size)
        if factor >= 2:                     # a box reduction first, then Lanczos: the same look, half the time
            img = img.reduce(factor)
        img = img.resize(target, Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=quality, method=effort)
    return buf.getvalue()


def quantize_map(values: np.ndarray, scale: float, bits: int = 8) -> bytes:
    """An activation map (or maps), ``bits`` (8 or 4) per patch: ``ceil(L · v / scale)`` clipped to [0, L]
    with L = 2^bits − 1, so that exactly the values <= 0 (and NaN) are 0, transparent when drawn; with 4
    bits two patches share a byte, the first in the high half. ``scale`` > 0: the value drawn at full
    strength."""
    top = 2 ** bits - 1
    v = np.nan_to_num(np.asarray(values, np.float64), nan=0.0).ravel()
    q = (np.ceil(np.clip(v / scale, 0, 1) * top) if scale > 0 else np.zeros_like(v)).astype(np.uint8)
    if bits == 4:
        q = np.concatenate([q, np.zeros(len(q) % 2, np.uint8)])
        q = (q[0::2] << 4) | q[1::2]
    return q.tobytes()


def model_view(img: Image.Image, data_config: dict, size: int | None = None) -> Image.Image:
    """The part of a dataset image the model saw, through timm's own eval transform for ``data_config``
    (its resize and crop of whatever ``crop_mode``; no normalization), so that activation maps on the
    patch grid line up with it. With ``size``, the same geometry scaled so the longer side is ``size``
    (a thumbnail in one resampling instead of two)."""
    for op in _view_ops(json.dumps({k: data_config.get(k) for k in _VIEW_KEYS}, sort_keys=True), size):
        img = op(img)
    return img


_VIEW_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation")


@functools.lru_cache(maxsize=32)
def _view_ops(config: str, size: int | None) -> tuple:
    import timm.data
    cfg = json.loads(config)
    _, h, w = cfg["input_size"]
    if size:
        scale = size / max(h, w)
        cfg["input_size"] = (3, max(1, round(h * scale)), max(1, round(w * scale)))
    transform = timm.data.create_transform(**{k: v for k, v in cfg.items() if v is not None}, is_training=False)
    geometric = []
    for op in transform.transforms:
        if type(op).__name__ in ("ToTensor", "MaybeToTensor", "Normalize", "ToNumpy", "MaybePILToTensor"):
            break                           # from here on the transform makes the tensor the model gets
        geometric.append(op)
    return tuple(geometric)
