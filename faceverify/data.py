"""Identity datasets (folders or manifests) and verification-pair protocols (LFW pairs.txt, CSV)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .errors import FaceVerifyError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".gif"}


@dataclass(frozen=True)
class Sample:
    """One labelled image: `path` on disk, `key` = path relative to the dataset root."""

    path: Path
    key: str
    identity: str
    split: str = "train"


@dataclass(frozen=True)
class Pair:
    """One verification pair; `fold` numbers the protocol's cross-validation folds from 0."""

    left: Path
    right: Path
    same: bool
    fold: int


def load_samples(source: str | Path, split: str | None = None) -> list[Sample]:
    """Samples of a dataset given as a `manifest.csv` (path, identity, split) or an image folder.

    A folder that contains `manifest.csv` is read through it; otherwise every image below it is a
    sample whose identity is the name of the folder it sits in (`source/<identity>/<image>`; an
    unlabelled folder of images is one "identity", which self-supervised pretraining ignores).
    `split` keeps only rows of that split.
    """
    source = Path(source)
    manifest = source if source.suffix == ".csv" else source / "manifest.csv"
    if manifest.is_file():
        samples = _read_manifest(manifest)
    elif source.is_dir():
        samples = [Sample(p, p.relative_to(source).as_posix(), p.parent.name) for p in image_paths([source])]
    else:
        raise FaceVerifyError(f"{source}: neither a manifest.csv nor a folder of images")
    if split is not None:
        samples = [s for s in samples if s.split == split]
    if not samples:
        raise FaceVerifyError(f"{source}: no images found" + (f" in split {split!r}" if split else ""))
    return samples


def image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders replaced by every image below them, sorted."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            out += [p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            out.append(path)
    return out


def _read_manifest(manifest: Path) -> list[Sample]:
    root = manifest.parent
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "identity"} - set(reader.fieldnames or ())
        if missing:
            raise FaceVerifyError(f"{manifest}: missing column(s) {sorted(missing)}")
        return [Sample(root / row["path"], row["path"], row["identity"], row.get("split") or "train")
                for row in reader]


def read_pairs(path: str | Path, root: str | Path) -> list[Pair]:
    """Read a pairs protocol: LFW `pairs.txt` format, or CSV `left,right,same[,fold]` (by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FaceVerifyError(f"{path}: no such pairs file")
    reader = _read_csv_pairs if path.suffix.lower() == ".csv" else _read_lfw_pairs
    pairs = reader(path, Path(root))
    if not pairs:
        raise FaceVerifyError(f"{path}: no pairs")
    return pairs


def lfw_image_path(root: Path, name: str, number: str) -> Path:
    """Path of image `number` of `name` in the LFW folder layout."""
    return root / name / f"{name}_{int(number):04d}.jpg"


def _read_lfw_pairs(path: Path, root: Path) -> list[Pair]:
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        n_folds, n_per_side = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError):
        raise FaceVerifyError(f"{path}: first line must be '<folds> <pairs per side>'") from None
    body = lines[1:]
    if len(body) != 2 * n_folds * n_per_side:
        raise FaceVerifyError(f"{path}: header promises {2 * n_folds * n_per_side} pairs, "
                              f"found {len(body)}")
    pairs = []
    for index, fields in enumerate(body):
        fold = index // (2 * n_per_side)
        if len(fields) == 3:
            name, i, j = fields
            pairs.append(Pair(lfw_image_path(root, name, i), lfw_image_path(root, name, j), True, fold))
        elif len(fields) == 4:
            a, i, b, j = fields
            pairs.append(Pair(lfw_image_path(root, a, i), lfw_image_path(root, b, j), False, fold))
        else:
            raise FaceVerifyError(f"{path}:{index + 2}: expected 3 or 4 fields, got {len(fields)}")
    return pairs


def _read_csv_pairs(path: Path, root: Path) -> list[Pair]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"left", "right", "same"} - set(reader.fieldnames or ())
        if missing:
            raise FaceVerifyError(f"{path}: missing column(s) {sorted(missing)}")
        rows = list(reader)
    pairs = []
    for line, row in enumerate(rows, start=2):
        same = row["same"].strip().lower()
        if same not in ("0", "1", "true", "false"):
            raise FaceVerifyError(f"{path}:{line}: 'same' must be 0/1/true/false, got {row['same']!r}")
        fold = int(row["fold"]) if row.get("fold") not in (None, "") else (line - 2) % 10
        pairs.append(Pair(root / row["left"], root / row["right"], same in ("1", "true"), fold))
    return pairs
