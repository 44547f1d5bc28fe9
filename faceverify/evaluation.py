"""Pairs protocols run on aligned crops: detect and align each image once, then score any embedder.

`AlignedPairs` is shared by `faceverify evaluate` and by training-time validation (which caches it
to disk, so each evaluation during training costs only the embedding of the crops). Crops are kept
per alignment template (a model may take several), and a cache knows which templates it holds and
which detector's landmarks aligned them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .align import ARCFACE_112, Template
from .data import Pair
from .detect import Detector
from .detect.base import detector_name
from .errors import FaceVerifyError, ModelError
from .metrics import cosine_scores
from .pipeline import aligned_batches
from .policies import LEGACY_DETECTOR


def align_photos(paths: Sequence, names: Sequence[str], detector: Detector, face_policy: str,
                 templates: Sequence[Template] = (ARCFACE_112,), progress: bool = True):
    """(crops per template, ok, failures by name) of photos detected and aligned in batches
    (`pipeline`: decoding runs ahead); a photo without a usable face keeps blank crops, `ok` False
    and its reason."""
    crops = tuple(np.zeros((len(paths), t.size, t.size, 3), np.uint8) for t in templates)
    ok = np.zeros(len(paths), bool)
    failures = {}
    offset = 0
    with tqdm(total=len(paths), desc="detect+align", unit="img", disable=not progress) as bar:
        for found in aligned_batches(list(paths), list(names), detector, face_policy, templates=templates):
            for index, result in enumerate(found, offset):
                if isinstance(result, FaceVerifyError):
                    failures[names[index]] = str(result)
                else:
                    ok[index] = True
                    for array, crop in zip(crops, result.crops):
                        array[index] = crop
            offset += len(found)
            bar.update(len(found))
    return crops, ok, failures


def save_crops(crops: tuple[np.ndarray, ...], templates: Sequence[Template], detector: str) -> dict:
    """npz fields for crops per template, and the detector that placed them."""
    return {"templates": np.array([t.name for t in templates], dtype=str), "detector": np.array(detector),
            **{f"crops_{i}": c for i, c in enumerate(crops)}}


def load_crops(z) -> tuple[tuple[np.ndarray, ...], tuple[Template, ...], str]:
    """(crops per template, templates, detector name) from an npz written with `save_crops`
    (caches written before detectors were named hold MTCNN's crops)."""
    names = z["templates"].tolist() if "templates" in z else []
    if not names:
        raise ModelError("an aligned-crops cache from an older version: delete it to rebuild")
    return (tuple(z[f"crops_{i}"] for i in range(len(names))), tuple(Template.from_dict({"name": n}) for n in names),
            str(z["detector"]) if "detector" in z else LEGACY_DETECTOR)


class _Crops:
    """Crops per template, and the check that they are the ones a model takes."""

    crops: tuple
    templates: tuple
    detector: str

    def check_detector(self, name: str) -> None:
        """`ModelError` unless these crops were aligned on `name`'s landmarks."""
        if self.detector != name:
            raise ModelError(f"these aligned crops were made with {self.detector} landmarks, not {name}: "
                             "rebuild the cache (or choose that detector)")

    def crops_for(self, templates: Sequence[Template]) -> tuple[np.ndarray, ...]:
        """The crops aligned to `templates` (a model's), or `ModelError` if this set lacks one."""
        have = {t.name: c for t, c in zip(self.templates, self.crops)}
        missing = [t.name for t in templates if t.name not in have]
        if missing:
            raise ModelError(f"these aligned crops were made for {[t.name for t in self.templates]}, "
                             f"not {missing}: rebuild the cache for this model")
        return tuple(have[t.name] for t in templates)

    def embeddings(self, embed: Callable[..., np.ndarray], templates: Sequence[Template] = (ARCFACE_112,)
                   ) -> np.ndarray:
        """(N, dim) unit embeddings of every photo by `embed` on the crops of the model's
        `templates` (zeros where `ok` is False)."""
        usable = np.flatnonzero(self.ok)
        if not len(usable):
            return np.zeros((len(self.ok), 1), np.float32)
        found = embed(*(c[usable] for c in self.crops_for(templates))).astype(np.float32)
        out = np.zeros((len(self.ok), found.shape[1]), np.float32)
        out[usable] = found / np.linalg.norm(found, axis=1, keepdims=True)
        return out


@dataclass
class AlignedPairs(_Crops):
    """Unique images' crops (one array per template) and the pairs as indices into them; `ok[i]`
    is False where image i had no usable face (its pairs then count as errors)."""

    crops: tuple
    templates: tuple
    detector: str
    ok: np.ndarray
    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    failures: dict

    @classmethod
    def build(cls, pairs: Sequence[Pair], detector: Detector, face_policy: str = "central",
              templates: Sequence[Template] = (ARCFACE_112,), progress: bool = True) -> "AlignedPairs":
        paths = sorted({p.left for p in pairs} | {p.right for p in pairs})
        index = {p: i for i, p in enumerate(paths)}
        crops, ok, failures = align_photos(paths, [str(p) for p in paths], detector, face_policy,
                                           templates, progress)
        return cls(crops, tuple(templates), detector_name(detector), ok, np.array([index[p.left] for p in pairs]),
                   np.array([index[p.right] for p in pairs]), np.array([p.same for p in pairs]),
                   np.array([p.fold for p in pairs]), failures)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, **save_crops(self.crops, self.templates, self.detector), ok=self.ok,
                            left=self.left, right=self.right,
                            same=self.same, folds=self.folds,
                            failure_paths=np.array(list(self.failures), dtype=str),
                            failure_reasons=np.array(list(self.failures.values()), dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> "AlignedPairs":
        with np.load(path, allow_pickle=False) as z:
            return cls(*load_crops(z), z["ok"], z["left"], z["right"], z["same"], z["folds"],
                       dict(zip(z["failure_paths"].tolist(), z["failure_reasons"].tolist())))

    def scores(self, embed: Callable[..., np.ndarray], templates: Sequence[Template] = (ARCFACE_112,)):
        """(cosine score per pair, valid per pair) using `embed` on the usable crops of the
        model's `templates`."""
        embeddings = self.embeddings(embed, templates)
        valid = self.ok[self.left] & self.ok[self.right]
        return cosine_scores(embeddings[self.left], embeddings[self.right]), valid


@dataclass
class AlignedIdentities(_Crops):
    """Every photo of a labelled set, aligned once (per template); `labels[i]` indexes
    `identities`. Scoring all cross-identity pairs (millions from a few thousand photos) resolves
    FARs far below what a pairs file's few hundred impostor pairs can."""

    crops: tuple
    templates: tuple
    detector: str
    ok: np.ndarray
    labels: np.ndarray
    identities: list
    failures: dict

    @classmethod
    def build(cls, samples: Sequence, detector: Detector, face_policy: str = "central",
              templates: Sequence[Template] = (ARCFACE_112,), progress: bool = True) -> "AlignedIdentities":
        crops, ok, failures = align_photos([s.path for s in samples], [s.key for s in samples],
                                           detector, face_policy, templates, progress)
        identities, labels = np.unique([s.identity for s in samples], return_inverse=True)
        return cls(crops, tuple(templates), detector_name(detector), ok, labels, identities.tolist(), failures)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, **save_crops(self.crops, self.templates, self.detector), ok=self.ok,
                            labels=self.labels,
                            identities=np.array(self.identities, dtype=str),
                            failure_keys=np.array(list(self.failures), dtype=str),
                            failure_reasons=np.array(list(self.failures.values()), dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> "AlignedIdentities":
        with np.load(path, allow_pickle=False) as z:
            return cls(*load_crops(z), z["ok"], z["labels"], z["identities"].tolist(),
                       dict(zip(z["failure_keys"].tolist(), z["failure_reasons"].tolist())))

    def scores(self, embed: Callable[..., np.ndarray], templates: Sequence[Template] = (ARCFACE_112,)):
        """(genuine, impostor) cosine scores of every pair of usable photos (i < j)."""
        return all_pairs_scores(self.embeddings(embed, templates)[self.ok], self.labels[self.ok])


def all_pairs_scores(embeddings: np.ndarray, labels: np.ndarray, block: int = 2048):
    """(genuine, impostor) inner products of every pair (i < j) of unit `embeddings`, by blocks of
    rows so memory stays bounded on large sets."""
    genuine, impostor = [], []
    for start in range(0, len(embeddings), block):
        rows = embeddings[start:start + block]
        similarity = rows @ embeddings[start:].T  # columns from `start`: each pair once
        upper = np.triu(np.ones(similarity.shape, bool), k=1)
        same = labels[start:start + block, None] == labels[None, start:]
        genuine.append(similarity[upper & same])
        impostor.append(similarity[upper & ~same])
    return np.concatenate(genuine), np.concatenate(impostor)


def template_scores(embeddings: np.ndarray, labels: np.ndarray, per_template: int = 2, block: int = 2048):
    """(genuine, impostor) scores of comparisons as a gallery makes them: each identity with more
    than `per_template` photos gets a template (the mean of its first `per_template` unit
    embeddings, re-normalised, as `Gallery` builds one); its other photos are its genuine probes,
    every photo of another identity an impostor probe. A re-normalised mean scores strangers
    higher than a single photo does, so a gallery's false accepts follow these, not photo pairs."""
    templates, owners, genuine = [], [], []
    for identity in np.unique(labels):
        rows = np.flatnonzero(labels == identity)
        if len(rows) <= per_template:
            continue
        template = embeddings[rows[:per_template]].mean(axis=0)
        templates.append(template / np.linalg.norm(template))
        owners.append(identity)
        genuine.append(embeddings[rows[per_template:]] @ templates[-1])
    if not templates:
        raise ValueError(f"no identity has more than {per_template} photos: no template comparisons")
    templates, owners = np.stack(templates), np.array(owners)
    impostor = []
    for start in range(0, len(embeddings), block):
        scores = embeddings[start:start + block] @ templates.T
        impostor.append(scores[labels[start:start + block, None] != owners[None, :]])
    return np.concatenate(genuine), np.concatenate(impostor)

