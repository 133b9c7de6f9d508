"""Decoding the user's image files into RGB, the same way for the probe and the website.

Anything Pillow decodes becomes 8-bit RGB: EXIF orientation is applied; grayscale, palette and CMYK
are converted; 16-bit and float images are scaled to 8 bits (Pillow's own conversion would clip
them to white); transparency is composited over white. Files that cannot be decoded raise
``ImageError`` with a one-line reason, so a pass can skip them and say why.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# File endings taken as images when scanning a folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# Images above this many pixels are refused (Pillow's decompression-bomb guard: 2x its warning limit).
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


class ImageError(Exception):
    """A file that cannot be decoded into an image; the message is the reason."""


def is_image_name(name: str) -> bool:
    """Whether a file name has an image ending."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit / float single-channel images to 8-bit grayscale."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a = a.astype(np.uint32) >> 8
    elif img.mode == "F":
        a = np.nan_to_num(a.astype(np.float64))
        a = a * 255 if a.max(initial=0) <= 1.0 else a
    elif a.max(initial=0) > 255:
        a = a.astype(np.float64) * (255 / (65535 if a.max() <= 65535 else a.max()))
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB Pillow image; raises ImageError with the reason if it cannot."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"too large: {img.width}x{img.height} pixels (limit {MAX_PIXELS:,})")
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                    img = _to_8bit(img)
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
                    rgba = img.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(background, rgba)
                return img.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"too large: {e}".split(" could be")[0]) from None
    except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, ...)
        reason = str(e).splitlines()[0].replace(f"'{path}'", "").strip() if str(e) else type(e).__name__
        raise ImageError(f"cannot decode: {reason}") from None
