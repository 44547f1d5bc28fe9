"""Run a pairs protocol through a `Verifier`: every image embedded once, failures counted as errors."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from .data import Pair
from .errors import FaceVerifyError
from .metrics import cosine_scores


def score_pairs(verifier, pairs: Sequence[Pair], batch_size: int = 64, progress: bool = True,
                face_policy: str = "central"):
    """(scores, same, folds, valid, failures) for the pairs; `failures` maps path → reason."""
    paths = sorted({p.left for p in pairs} | {p.right for p in pairs})
    embeddings, failures = {}, {}
    with tqdm(total=len(paths), desc="embed", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            for path, result in zip(chunk, verifier.analyze(chunk, [str(p) for p in chunk], face_policy)):
                if isinstance(result, FaceVerifyError):
                    failures[str(path)] = str(result)
                else:
                    embeddings[path] = result.embedding
            bar.update(len(chunk))
    dim = next(iter(embeddings.values())).shape[0] if embeddings else 1
    zero = np.zeros(dim, np.float32)
    valid = np.array([p.left in embeddings and p.right in embeddings for p in pairs])
    scores = cosine_scores(np.stack([embeddings.get(p.left, zero) for p in pairs]),
                           np.stack([embeddings.get(p.right, zero) for p in pairs]))
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    return scores, same, folds, valid, failures

