"""Dataset preparation: identity images → aligned crops (one template's) + manifest, resumable.

Every training face goes through the same `load_rgb` → `Detector` → `align_face` path as inference.
Files that cannot be used are listed with a reason in `failures.csv`; they never stop the run.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from tqdm import tqdm

from .align import ARCFACE_112, Template, align_face
from .data import Sample, load_samples
from .detect import Detector, Face
from .errors import FaceVerifyError
from .images import load_rgb
from .pipeline import aligned_batches

#: `box` (x1 y1 x2 y2) and `landmarks` (x y × 5) locate the chosen face in the source photo, so that
#: a distillation teacher with its own alignment embeds exactly the face the crop shows.
MANIFEST_FIELDS = ["path", "identity", "split", "source", "score", "box", "landmarks"]
FAILURE_FIELDS = ["source", "identity", "reason"]


@dataclass
class PrepareReport:
    aligned: int
    failed: int
    skipped: int  # already done by an earlier, interrupted run

    @property
    def success_rate(self) -> float:
        total = self.aligned + self.failed
        return self.aligned / total if total else 1.0


def prepare_dataset(source: str | Path, dest: str | Path, detector: Detector, *,
                    split: str | None = None, policy: str = "central", template: Template = ARCFACE_112,
                    jpeg_quality: int = 95, progress: bool = True) -> PrepareReport:
    """Align every face of `source` into `dest` (see module docstring); rerun to resume."""
    dest = Path(dest)
    if Path(source).is_dir() and dest.resolve().is_relative_to(Path(source).resolve()):
        raise FaceVerifyError(f"{dest}: inside the source folder {source}, whose images its crops "
                              "would replace or join; choose a destination outside it")
    dest.mkdir(parents=True, exist_ok=True)
    samples = load_samples(source, split)
    _refuse_to_overwrite_sources(samples, dest)
    done = _done_keys(dest / "manifest.csv") | _done_keys(dest / "failures.csv")
    todo = [s for s in samples if s.key not in done]
    report = PrepareReport(0, 0, len(samples) - len(todo))
    with _CsvAppender(dest / "manifest.csv", MANIFEST_FIELDS) as manifest, \
            _CsvAppender(dest / "failures.csv", FAILURE_FIELDS) as failures, \
            tqdm(total=len(todo), desc="prepare", unit="img", disable=not progress) as bar:
        offset = 0
        # decoding runs ahead in threads while the detector works on the current batch
        for found in aligned_batches([s.path for s in todo], [s.key for s in todo], detector, policy,
                                     templates=(template,)):
            for sample, result in zip(todo[offset:offset + len(found)], found):
                if isinstance(result, FaceVerifyError):
                    failures.write([sample.key, sample.identity, str(result)])
                    report.failed += 1
                    continue
                face, crop = result.face, result.crop
                out_key = output_key(sample)
                out_path = dest / out_key
                out_path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out_path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                manifest.write([out_key, sample.identity, sample.split, sample.key,
                                f"{face.score:.4f}", _numbers(face.box), _numbers(face.landmarks)])
                report.aligned += 1
            offset += len(found)
            bar.update(len(found))
            bar.set_postfix(failed=report.failed)
    return report


def face_from_manifest(row: dict) -> Face:
    """The face `prepare` chose, from its manifest row (box and landmarks columns)."""
    try:
        box = np.array(row["box"].split(), np.float32)
        landmarks = np.array(row["landmarks"].split(), np.float32).reshape(5, 2)
    except (KeyError, AttributeError, ValueError):
        raise FaceVerifyError("the prepared manifest has no face geometry (box, landmarks): "
                              "prepare the dataset again with this version") from None
    return Face(box, float(row.get("score") or 1.0), landmarks)


def realign_prepared(prepared: str | Path, source: str | Path, dest: str | Path, template: Template,
                     jpeg_quality: int = 95, progress: bool = True) -> int:
    """Crops of an already prepared set aligned to another `template`, from its source photos and
    the landmarks `prepare` recorded (no detection): `dest` gets the same manifest and crop names.
    Resumable: crops already written are kept. Returns how many were written."""
    prepared, dest = Path(prepared), Path(dest)
    with open(prepared / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    photos = {sample.key: sample.path for sample in load_samples(source)}
    todo = [row for row in rows if not (dest / row["path"]).is_file()]

    def write(row: dict) -> None:
        crop = align_face(load_rgb(photos[row["source"]]), face_from_manifest(row).landmarks, template)
        out = dest / row["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp.jpg")
        cv2.imwrite(str(tmp), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        os.replace(tmp, out)

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(tqdm(pool.map(write, todo), total=len(todo), desc=f"realign {template.name}", unit="img",
                  disable=not progress))
    shutil.copyfile(prepared / "manifest.csv", dest / "manifest.csv")
    return len(todo)


def output_key(sample: Sample) -> str:
    """Where a sample's crop goes, relative to the destination: its own relative path as .jpg, or,
    for a path that is absolute or climbs out with '..' (manifests may list such paths),
    identity/name-hash.jpg. Crops are never written outside the destination."""
    key = PurePosixPath(sample.key)
    if key.is_absolute() or ".." in key.parts:
        digest = hashlib.sha256(sample.key.encode()).hexdigest()[:10]
        key = PurePosixPath(sample.identity or "unlabelled", f"{key.stem}-{digest}")
    return str(key.with_suffix(".jpg"))


def _refuse_to_overwrite_sources(samples: list[Sample], dest: Path) -> None:
    """A manifest's own folder as destination (`prepare photos/manifest.csv photos`) would
    replace the photos with their crops."""
    sources = {sample.path.resolve() for sample in samples}
    for sample in samples:
        if (dest / output_key(sample)).resolve() in sources:
            raise FaceVerifyError(f"{dest}: preparing here would overwrite source images "
                                  f"(e.g. {sample.path}); choose another destination")


def _numbers(values: np.ndarray) -> str:
    return " ".join(f"{v:.2f}" for v in np.asarray(values).ravel())


def _done_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if "source" not in (reader.fieldnames or ()):
            raise FaceVerifyError(f"{path}: not written by prepare (no 'source' column); "
                                  "choose an empty or earlier prepare destination")
        return {row["source"] for row in reader}


class _CsvAppender:
    """Append rows to a CSV, writing the header once and flushing per row so a kill loses nothing."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields

    def __enter__(self):
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(self.fields)
        return self

    def write(self, row) -> None:
        self._writer.writerow(row)
        self._fh.flush()

    def __exit__(self, *exc):
        self._fh.close()
