"""Values the gallery's tables hold, computed the same way wherever they are written."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np


def template_of(embeddings: np.ndarray) -> np.ndarray:
    """An identity's template: the mean of its embeddings, L2-normalised."""
    template = embeddings.mean(axis=0)
    template /= max(float(np.linalg.norm(template)), 1e-12)
    return template


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def now_precise() -> str:
    """UTC to the microsecond: audit lines sort by it (and by id)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
