"""Pairs protocols run on aligned crops: detect and align each image once, then score any embedder.

`AlignedPairs` is shared by `faceverify evaluate` and by training-time validation (which caches it
to disk, so each evaluation during training costs only the embedding of the crops).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .align import ALIGNED_SIZE
from .data import Pair
from .detect import Detector
from .errors import FaceVerifyError
from .metrics import cosine_scores
from .pipeline import aligned_batches


def align_photos(paths: Sequence, names: Sequence[str], detector: Detector, face_policy: str,
                 progress: bool = True):
    """(crops, ok, failures by name) of photos detected and aligned in batches (`pipeline`: decoding
    runs ahead); a photo without a usable face keeps a blank crop, `ok` False and its reason."""
    crops = np.zeros((len(paths), ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    failures = {}
    offset = 0
    with tqdm(total=len(paths), desc="detect+align", unit="img", disable=not progress) as bar:
        for found in aligned_batches(list(paths), list(names), detector, face_policy):
            for index, result in enumerate(found, offset):
                if isinstance(result, FaceVerifyError):
                    failures[names[index]] = str(result)
                else:
                    crops[index], ok[index] = result.crop, True
            offset += len(found)
            bar.update(len(found))
    return crops, ok, failures


@dataclass
class AlignedPairs:
    """Unique images' crops and the pairs as indices into them; `ok[i]` is False where image i
    had no usable face (its pairs then count as errors)."""

    crops: np.ndarray
    ok: np.ndarray
    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    failures: dict

    @classmethod
    def build(cls, pairs: Sequence[Pair], detector: Detector, face_policy: str = "central",
              progress: bool = True) -> "AlignedPairs":
        paths = sorted({p.left for p in pairs} | {p.right for p in pairs})
        index = {p: i for i, p in enumerate(paths)}
        crops, ok, failures = align_photos(paths, [str(p) for p in paths], detector, face_policy,
                                           progress)
        return cls(crops, ok, np.array([index[p.left] for p in pairs]),
                   np.array([index[p.right] for p in pairs]), np.array([p.same for p in pairs]),
                   np.array([p.fold for p in pairs]), failures)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, crops=self.crops, ok=self.ok, left=self.left, right=self.right,
                            same=self.same, folds=self.folds,
                            failure_paths=np.array(list(self.failures), dtype=str),
                            failure_reasons=np.array(list(self.failures.values()), dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> "AlignedPairs":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["crops"], z["ok"], z["left"], z["right"], z["same"], z["folds"],
                       dict(zip(z["failure_paths"].tolist(), z["failure_reasons"].tolist())))

    def scores(self, embed: Callable[[np.ndarray], np.ndarray]):
        """(cosine score per pair, valid per pair) using `embed` on the usable crops."""
        embeddings = np.zeros((len(self.crops), 1), np.float32)
        usable = np.flatnonzero(self.ok)
        if len(usable):
            found = embed(self.crops[usable])
            embeddings = np.zeros((len(self.crops), found.shape[1]), np.float32)
            embeddings[usable] = found
        valid = self.ok[self.left] & self.ok[self.right]
        return cosine_scores(embeddings[self.left], embeddings[self.right]), valid


@dataclass
class AlignedIdentities:
    """Every photo of a labelled set, aligned once; `labels[i]` indexes `identities`. Scoring all
    cross-identity pairs (millions from a few thousand photos) resolves FARs far below what a
    pairs file's few hundred impostor pairs can."""

    crops: np.ndarray
    ok: np.ndarray
    labels: np.ndarray
    identities: list
    failures: dict

    @classmethod
    def build(cls, samples: Sequence, detector: Detector, face_policy: str = "central",
              progress: bool = True) -> "AlignedIdentities":
        crops, ok, failures = align_photos([s.path for s in samples], [s.key for s in samples],
                                           detector, face_policy, progress)
        identities, labels = np.unique([s.identity for s in samples], return_inverse=True)
        return cls(crops, ok, labels, identities.tolist(), failures)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, crops=self.crops, ok=self.ok, labels=self.labels,
                            identities=np.array(self.identities, dtype=str),
                            failure_keys=np.array(list(self.failures), dtype=str),
                            failure_reasons=np.array(list(self.failures.values()), dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> "AlignedIdentities":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["crops"], z["ok"], z["labels"], z["identities"].tolist(),
                       dict(zip(z["failure_keys"].tolist(), z["failure_reasons"].tolist())))

    def scores(self, embed: Callable[[np.ndarray], np.ndarray], block: int = 2048):
        """(genuine, impostor) cosine scores of every pair of usable photos (i < j), by blocks of
        rows so memory stays bounded on large sets."""
        usable = np.flatnonzero(self.ok)
        embeddings = embed(self.crops[usable]).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        labels = self.labels[usable]
        genuine, impostor = [], []
        for start in range(0, len(usable), block):
            rows = embeddings[start:start + block]
            similarity = rows @ embeddings[start:].T  # columns from `start`: each pair once
            upper = np.triu(np.ones(similarity.shape, bool), k=1)
            same = labels[start:start + block, None] == labels[None, start:]
            genuine.append(similarity[upper & same])
            impostor.append(similarity[upper & ~same])
        return np.concatenate(genuine), np.concatenate(impostor)
