"""Two detectors as one: the second looks only at photos in which the first found no face."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Face


class Fallback:
    """`primary`'s faces, or `secondary`'s where `primary` found none (a profile one misses, say).
    The whole-photo fallback for tight crops is the primary's."""

    def __init__(self, primary, secondary):
        self.primary, self.secondary = primary, secondary
        self.name = f"{primary.name}>{secondary.name}"

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        found = self.primary.detect(images)
        missing = [i for i, faces in enumerate(found) if not faces]
        if missing:
            for i, faces in zip(missing, self.secondary.detect([images[i] for i in missing])):
                found[i] = faces
        return found

    def detect_whole(self, images: Sequence[np.ndarray], min_score: float | None = None) -> list[list[Face]]:
        return self.primary.detect_whole(images, min_score)
