"""Folders of photos at speed, in bounded memory: decoding runs in a thread pool ahead of detection
and embedding (JPEG decoders release the GIL, so it overlaps with the detector's work), and the
decoded images reach the detector in batches bounded by count and by pixels. However long the
input, at most `lookahead` decoded images and one batch are held at a time.
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from .errors import FaceVerifyError
from .images import ImageInput, load_rgb

#: detector batch limits: images, and pixels (about sixteen 1-megapixel photos)
BATCH_IMAGES, BATCH_PIXELS = 32, 16_000_000


def decode_ahead(images: Iterable[ImageInput], workers: int = 2,
                 lookahead: int = 64) -> Iterator[np.ndarray | FaceVerifyError]:
    """Each image decoded to RGB (or the error that stopped it), in input order, decoding up to
    `lookahead` images ahead of the consumer."""
    source = iter(images)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(_decode, image) for image in itertools.islice(source, lookahead))
        while pending:
            decoded = pending.popleft().result()
            for image in itertools.islice(source, 1):
                pending.append(pool.submit(_decode, image))
            yield decoded


def _decode(image: ImageInput) -> np.ndarray | FaceVerifyError:
    try:
        return load_rgb(image)
    except FaceVerifyError as exc:
        return exc


def pixel_batches(decoded: Iterable, max_images: int = BATCH_IMAGES,
                  max_pixels: int = BATCH_PIXELS) -> Iterator[list]:
    """Consecutive runs of items (errors included) holding at most `max_images` images and, unless
    one image alone is larger, at most `max_pixels` pixels."""
    batch, pixels = [], 0
    for item in decoded:
        size = item.shape[0] * item.shape[1] if isinstance(item, np.ndarray) else 0
        if batch and (len(batch) >= max_images or pixels + size > max_pixels):
            yield batch
            batch, pixels = [], 0
        batch.append(item)
        pixels += size
    if batch:
        yield batch
