"""Folders of photos at speed, in bounded memory: decoding runs in a thread pool ahead of detection
and embedding (JPEG decoders release the GIL, so it overlaps with the detector's work), and the
decoded images reach the detector in batches bounded by count and by pixels. However long the
input, at most `lookahead` decoded images and one batch are held at a time.
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .align import ARCFACE_112, Template
from .detect import AlignedFace, Detector, detect_and_align
from .errors import FaceVerifyError
from .images import ImageInput, load_rgb

#: detector batch limits: images, and pixels (about sixteen 1-megapixel photos)
BATCH_IMAGES, BATCH_PIXELS = 32, 16_000_000

T = TypeVar("T")
_DONE = object()


def run_ahead(items: Iterator[T]) -> Iterator[T]:
    """The items of `items`, the next one computed in a background thread while the consumer works
    on the current one: detecting batch k + 1 overlaps embedding batch k (both release the GIL).
    `items` runs in that thread (thread-local state such as torch's grad mode does not follow it);
    a consumer that stops early waits for the item under way, then `items` is closed."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahead") as pool:
        pending = pool.submit(next, items, _DONE)
        try:
            while (item := pending.result()) is not _DONE:
                pending = pool.submit(next, items, _DONE)
                yield item
        finally:
            wait([pending])
            if hasattr(items, "close"):
                items.close()


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


def aligned_batches(images: Sequence[ImageInput], names: Sequence[str], detector: Detector,
                    face_policy: str, workers: int = 2, templates: Sequence[Template] = (ARCFACE_112,)
                    ) -> Iterator[list[AlignedFace | FaceVerifyError]]:
    """`detect_and_align` over any number of images, batch by batch: each batch's results (the face
    `face_policy` picks, aligned to each of `templates`, or the error) in input order, decoding
    running ahead."""
    done = 0
    for batch in pixel_batches(decode_ahead(images, workers)):
        batch_names, done = names[done:done + len(batch)], done + len(batch)
        ok = [i for i, item in enumerate(batch) if isinstance(item, np.ndarray)]
        results: list = list(batch)
        found = detect_and_align([batch[i] for i in ok], detector, face_policy,
                                 [batch_names[i] for i in ok], templates)
        for i, result in zip(ok, found):
            results[i] = result
        yield results
