"""Training data: prepared (aligned) identity datasets → one in-memory uint8 array + labels.

Each dataset is a folder written by `prepare` (crops + manifest.csv). Identities are prefixed by
their dataset's folder name so that label spaces stay disjoint across datasets. Decoded crops are
cached as one .npy file, so the loader is an array index, never the bottleneck.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..data import load_samples
from ..errors import FaceVerifyError
from .teachers import TEACHER_FACTORIES, TEACHERS_DIR, load_teacher_parts


@dataclass
class FaceArray:
    """crops (N, size, size, 3) uint8 RGB (one template's size), labels (N,) int64, identity names by label, and per
    distillation teacher its (N, dim) float16 embeddings (NaN rows where it has none)."""

    crops: np.ndarray
    labels: np.ndarray
    identities: list[str]
    teachers: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict:
        counts = np.bincount(self.labels)
        return {"images": int(len(self.labels)), "identities": len(self.identities),
                "images_per_identity_median": float(np.median(counts))}


def load_face_array(datasets: list[str | Path], cache_dir: str | Path | None = None,
                    min_images: int = 2, split: str = "train", progress: bool = True,
                    teachers: list[str] = ()) -> FaceArray:
    """Crops and labels of the `split` rows of prepared `datasets`, identities with ≥ `min_images`,
    and the embeddings `teachers` computed for them (`training/teacher_embed.py`).

    A dataset is a `prepare` output folder, or a `.npz` pack written by `pack_face_array` (whose
    identity names already carry their dataset prefix, and which holds the teachers' embeddings it
    was packed with).
    """
    unknown = sorted(set(teachers) - set(TEACHER_FACTORIES))
    if unknown:
        raise FaceVerifyError(f"unknown teacher(s) {unknown}; choose from {sorted(TEACHER_FACTORIES)}")
    sources, keys, names = [], [], []
    taught: dict[str, list[np.ndarray]] = {name: [] for name in teachers}
    for dataset in datasets:
        if str(dataset).endswith(".npz"):
            with np.load(dataset, allow_pickle=False) as pack:
                blob, offsets = pack["blob"], pack["offsets"]
                sources += [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
                names += pack["identities"][pack["identity_index"]].tolist()
                for name in teachers:
                    if f"teacher_{name}" not in pack:
                        raise FaceVerifyError(f"{dataset}: packed without the {name} teacher's "
                                              f"embeddings (training/pack.py --teacher {name})")
                    taught[name].append(pack[f"teacher_{name}"])
            keys += [f"{dataset}#{i}" for i in range(len(offsets) - 1)]
            continue
        prefix = _prepared_folder(dataset).resolve().name
        samples = load_samples(dataset, split)
        dataset_keys = [str(sample.path) for sample in samples]
        sources += [sample.path for sample in samples]
        keys += dataset_keys
        names += [f"{prefix}/{sample.identity}" for sample in samples]
        for name in teachers:
            taught[name].append(_teacher_targets(dataset, name, dataset_keys))
    for name, parts in taught.items():
        if all(np.isnan(part).all() for part in parts):
            raise FaceVerifyError(f"no {name} teacher embeddings in {[str(d) for d in datasets]}: "
                                  "run training/teacher_embed.py first")
    names_arr = np.array(names)
    _, labels, counts = np.unique(names_arr, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts[labels] >= min_images)
    identities, labels = np.unique(names_arr[keep], return_inverse=True)
    crops = _cached_crops([sources[i] for i in keep], [keys[i] for i in keep], cache_dir, progress)
    targets = {name: np.concatenate(parts)[keep] for name, parts in taught.items()}
    return FaceArray(crops, labels.astype(np.int64), identities.tolist(), targets)


def _prepared_folder(dataset) -> Path:
    """The folder of a prepared dataset given as the folder or its manifest.csv."""
    return Path(dataset).parent if str(dataset).endswith(".csv") else Path(dataset)


def _teacher_targets(dataset, teacher: str, keys: list[str]) -> np.ndarray:
    """(len(keys), dim) float16 embeddings of `teacher` for a prepared folder's crops keyed by
    path; NaN where it has none."""
    folder = _prepared_folder(dataset)
    part_keys, vectors = load_teacher_parts(folder / TEACHERS_DIR / teacher)
    dim = vectors.shape[1] if part_keys else getattr(TEACHER_FACTORIES[teacher], "dim", None)
    if dim is None:  # a teacher whose width depends on its model file, and no parts to tell it
        raise FaceVerifyError(f"{folder}: no {teacher} embeddings; run training/teacher_embed.py "
                              f"SOURCE {folder} --teacher {teacher} first")
    found = {str(folder / key): vector for key, vector in zip(part_keys, vectors)}
    targets = np.full((len(keys), dim), np.nan, np.float16)
    for row, key in enumerate(keys):
        if key in found:
            targets[row] = found[key]
    return targets


def pack_face_array(faces: FaceArray, out_prefix: str | Path, max_bytes: int = 56 << 20,
                    webp_quality: int = 80) -> list[Path]:
    """Write `faces` as WebP-encoded `.npz` packs of at most `max_bytes` each (portable training
    sets: ~1.8 kB a face instead of 37 kB decoded), with its teachers' embeddings (float16, NaN
    rows kept) beside the crops. Returns the pack paths."""
    encoded = [cv2.imencode(".webp", crop[:, :, ::-1], [cv2.IMWRITE_WEBP_QUALITY, webp_quality])[1]
               for crop in tqdm(faces.crops, desc="encode", unit="img")]
    names = np.array(faces.identities)[faces.labels]
    teachers = {f"teacher_{name}": targets.astype(np.float16) for name, targets in faces.teachers.items()}
    taught_bytes = sum(targets.shape[1] * 2 for targets in teachers.values())  # per face
    paths, start = [], 0
    while start < len(encoded):
        end, size = start, 0
        while end < len(encoded) and (size + len(encoded[end]) + taught_bytes <= max_bytes or end == start):
            size += len(encoded[end]) + taught_bytes
            end += 1
        path = Path(f"{out_prefix}-{len(paths):03d}.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        identities, index = np.unique(names[start:end], return_inverse=True)
        np.savez(path, blob=np.concatenate(encoded[start:end]).ravel(),
                 offsets=np.r_[0, np.cumsum([len(e) for e in encoded[start:end]])],
                 identities=identities, identity_index=index.astype(np.int32),
                 **{key: targets[start:end] for key, targets in teachers.items()})
        paths.append(path)
        start = end
    return paths


def _cached_crops(sources: list, keys: list[str], cache_dir, progress: bool) -> np.ndarray:
    if cache_dir is None:
        return _decode_all(sources, progress)
    digest = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"crops-{digest}.npy"
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    cache.parent.mkdir(parents=True, exist_ok=True)
    crops = _decode_all(sources, progress)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")  # concurrent runs may fill the same cache
    np.save(tmp, crops)
    os.replace(tmp, cache)
    return crops


def _decode_all(sources: list, progress: bool) -> np.ndarray:
    """Decode crops given as file paths or encoded bytes, in threads (OpenCV releases the GIL);
    all of one size, the first crop's (a prepared set is aligned to one template)."""

    def read(source):
        image = (cv2.imdecode(source, cv2.IMREAD_COLOR) if isinstance(source, np.ndarray)
                 else cv2.imread(str(source), cv2.IMREAD_COLOR))
        return image, f"{source if isinstance(source, Path) else 'packed crop'}"

    first, _ = read(sources[0]) if sources else (np.zeros((112, 112, 3), np.uint8), "")
    size = first.shape[0] if first is not None else 0
    out = np.empty((len(sources), size, size, 3), dtype=np.uint8)

    def decode(i):
        image, name = read(sources[i])
        if image is None or image.shape[:2] != (size, size):
            raise ValueError(f"{name}: not a {size}x{size} prepared crop like the set's first")
        out[i] = image[:, :, ::-1]

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(tqdm(pool.map(decode, range(len(sources))), total=len(sources), desc="load crops",
                  unit="img", disable=not progress))
    return out

