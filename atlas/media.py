"""Images for the site: WebP encodings, the model's view of a dataset image, and activation maps.

Maps are drawn from the stored grids as tiny PNGs (one pixel per patch; the browser scales them),
coloured on a transparent-to-yellow ramp, and embedded as data URIs: no copy of a photo is baked.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}

# The map colour ramp: activation 0 -> transparent, rising through red to yellow (opaque-ish).
_RAMP = np.array([[0, 0, 0, 0], [120, 0, 80, 90], [220, 40, 40, 150], [255, 160, 0, 190], [255, 255, 80, 215]], float)


def webp(image: Image.Image | np.ndarray, size: int | None = None, quality: int = 82) -> bytes:
    """WebP bytes of an RGB image, downscaled (never upscaled) so its longer side is at most ``size``."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    if size and max(img.size) > size:
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue()


def view_geometry(size: tuple[int, int], data_config: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """timm's eval resize and center crop for an image of ``size`` (W, H): the resized (W, H) and the
    crop's (left, top) offset; the crop is ``data_config["input_size"]``."""
    _, th, tw = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 1.0
    w, h = size
    if data_config.get("crop_mode", "center") == "squash":
        new = (round(tw / crop_pct), round(th / crop_pct))
    else:  # torchvision Resize(int): the shorter side to floor(size / crop_pct)
        short = int(np.floor(min(th, tw) / crop_pct))
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return new, (int(round((new[0] - tw) / 2.0)), int(round((new[1] - th) / 2.0)))


def model_view(img: Image.Image, data_config: dict) -> Image.Image:
    """The part of a dataset image the model saw: timm's eval resize and center crop (no normalize),
    so activation maps on the patch grid line up with it."""
    _, th, tw = data_config["input_size"]
    resample = _RESAMPLE.get(data_config.get("interpolation", "bicubic"), Image.BICUBIC)
    new, (left, top) = view_geometry(img.size, data_config)
    return img.resize(new, resample).crop((left, top, left + tw, top + th))


def _ramp(t: np.ndarray) -> np.ndarray:
    """RGBA colours of the map ramp at positions ``t`` in [0, 1]."""
    t = np.clip(t, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    frac = (t - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


# Maps are drawn in 16 levels: a 4-bit palette PNG is a third of the RGBA size on a 14x14 grid, and
# the exact values stay in the shards.
MAP_LEVELS = 16
_PALETTE = _ramp(np.linspace(0, 1, MAP_LEVELS))


def map_png(values: np.ndarray, scale: float) -> bytes:
    """PNG (4-bit palette, one pixel per patch) of an activation map: values / scale through the
    colour ramp in MAP_LEVELS steps, rounded up so that only values <= 0 are transparent."""
    v = np.nan_to_num(np.asarray(values, np.float64) / scale if scale > 0 else np.zeros_like(values, float))
    level = np.ceil(np.clip(v, 0, 1) * (MAP_LEVELS - 1)).astype(np.uint8)
    img = Image.fromarray(level, "P")
    img.putpalette(_PALETTE[:, :3].flatten().tolist())
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True, bits=4, transparency=bytes(_PALETTE[:, 3].tolist()))
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A data: URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode()
