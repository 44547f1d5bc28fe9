"""Decoding and validation of user images: anything in, RGB uint8 HxWx3 out, or a typed error.

Every entry point (CLI, API, app, dataset preparation) goes through `load_rgb`, so EXIF rotation,
odd modes and size limits are handled once.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]

#: Default pixel limit (about 8k x 5k): larger inputs are refused before decoding.
MAX_PIXELS = 40_000_000


def load_rgb(source: ImageInput, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return the image as a contiguous RGB uint8 array of shape (H, W, 3).

    Accepts a path, encoded bytes, a PIL image or a numpy array (HxW gray, HxWx3 RGB or HxWx4 RGBA;
    uint8, uint16 or float in [0, 1]). EXIF orientation is applied; grayscale, palette, RGBA,
    16-bit and CMYK images are converted to RGB.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, "image")
        return _pil_to_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        return _decode(io.BytesIO(bytes(source)), "<bytes>", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"{path}: no such file")
        with open(path, "rb") as fh:
            return _decode(fh, str(path), max_pixels)
    raise InvalidImageError(f"unsupported image input of type {type(source).__name__}")


def _decode(fh, name: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                _check_pixels(im.size, max_pixels, name)  # header only: nothing decoded yet
                im.load()
                return _pil_to_rgb(im)
    except Image.DecompressionBombError as exc:  # PIL refuses at open, before our own check
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels[1]) / 1e6:.1f} MP" if pixels else "the image"
        raise ImageTooLargeError(f"{name}: {size}, over the {max_pixels / 1e6:.0f} MP limit; "
                                 "downscale it first") from None
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"{name}: not a readable image ({exc.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, InvalidImageError):
            raise
        raise InvalidImageError(f"{name}: corrupt or truncated image ({exc})") from None


def _check_pixels(size, max_pixels: int, name: str) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {w}x{h} is {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:.0f} MP limit; "
            "downscale it first")
    if w < 1 or h < 1:
        raise InvalidImageError(f"{name}: empty image")


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(im), max_pixels=None)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _array_to_rgb(arr: np.ndarray, max_pixels: int | None) -> np.ndarray:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InvalidImageError(f"array of shape {arr.shape} is not an HxW, HxWx3 or HxWx4 image")
    if max_pixels is not None:
        _check_pixels((arr.shape[1], arr.shape[0]), max_pixels, "array")
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:].astype(np.float32) / 255.0
        arr = (arr[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidImageError("float image contains NaN or infinity")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        low, peak = int(arr.min(initial=0)), int(arr.max(initial=0))
        if low < 0 or peak > 65535:
            raise InvalidImageError(f"integer image values {low}..{peak} are outside 0..65535")
        if arr.dtype == np.uint16 or peak > 255:  # 16-bit samples: keep the top byte
            return (arr.astype(np.uint32) >> 8).astype(np.uint8)
        return arr.astype(np.uint8)
    raise InvalidImageError(f"unsupported array dtype {arr.dtype}")
