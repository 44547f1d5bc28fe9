"""Enrollment and 1:N identification over a `GalleryStore`, using a `Verifier` for faces."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..data import load_samples
from ..errors import FaceVerifyError, GalleryError, ModelMismatchError, NotInGalleryError
from ..images import ImageInput
from ..metadata import describe_fingerprint
from ..operating import OperatingPoint, describe, far_for_fpir, threshold_for_far
from ..pipeline import BATCH_IMAGES, decode_ahead
from ..verifier import FaceEmbedding
from .audit import AuditEntry
from .backends import open_store
from .kept_photos import KeptPhotos, default_folder
from .names import identity_name
from .photos import default_threshold, enrolment_photo, groups, image_digest

#: the default gallery of the servers and the UI
DEFAULT_GALLERY = "gallery.db"


@dataclass
class QualityGate:
    """Minimum quality for an enrolled image: a bad template poisons every later search. Fixed
    limits on the detector's confidence, the face's size and its sharpness, and, with a quality
    model in the embedding model (`quality.py`), its score (`min_quality`, default: the model's
    floor), the refusal naming what is wrong ("face turned ~70° to the side")."""

    min_det_score: float = 0.95
    min_face_px: float = 40.0  # shorter side of the detected box, in image pixels
    min_sharpness: float = 15.0  # variance of the Laplacian of the aligned grey crop
    min_quality: float | None = None

    def problems(self, photo: dict) -> list[str]:
        issues = []
        if photo["det_score"] < self.min_det_score:
            issues.append(f"uncertain face (detector score {photo['det_score']:.2f} < {self.min_det_score})")
        if photo["face_size"] < self.min_face_px:
            issues.append(f"face too small ({photo['face_size']:.0f}px < {self.min_face_px:.0f}px)")
        if photo["sharpness"] < self.min_sharpness:
            issues.append(f"too blurry (sharpness {photo['sharpness']:.1f} < {self.min_sharpness})")
        score = photo.get("quality")
        if score is not None and self.min_quality is not None and score < self.min_quality:
            named = [] if issues else photo.get("quality_problems") or []  # the limits said it already
            issues.append(f"quality {score:.2f} < {self.min_quality:.2f}" + (f": {'; '.join(named)}" if named else ""))
        return issues


#: Strangers a gallery may accept as someone, by default (its threshold follows from this).
DEFAULT_FPIR = 0.01


@dataclass
class EnrollReport:
    name: str
    added: list = field(default_factory=list)  # sources
    rejected: list = field(default_factory=list)  # (source, reason)

    def to_dict(self) -> dict:
        return {"name": self.name, "added": self.added,
                "rejected": [{"source": s, "reason": r} for s, r in self.rejected]}


@dataclass
class Identification:
    """Open-set answer: `name` is None ("unknown") unless the best score passes the threshold."""

    name: str | None
    score: float
    threshold: float
    matches: list  # [(name, score)], best first
    face: object = None  # FaceEmbedding of the query
    operating_point: OperatingPoint | None = None

    @property
    def reliable(self) -> bool:
        """False when the query face is below the model's quality floor: trust no answer."""
        return self.face is None or self.face.reliable

    @property
    def problems(self) -> list[str]:
        return list(self.face.quality.problems) if self.face is not None else []

    def to_dict(self) -> dict:
        return {"name": self.name or "unknown", "known": self.name is not None,
                "reliable": self.reliable, "problems": self.problems,
                "quality": self.face.quality.to_dict() if self.face is not None else None,
                "score": round(self.score, 6), "threshold": self.threshold,
                "matches": [{"name": n, "score": round(s, 6)} for n, s in self.matches],
                "operating_point": self.operating_point.to_dict() if self.operating_point else None}


class Gallery:
    """A gallery bound to the verifier whose model produced (or will produce) its embeddings.
    `path`: a SQLite file, or a postgresql:// URL (PostgreSQL + pgvector, see `store`).

    The acceptance threshold follows a target false positive identification rate (FPIR: the share
    of strangers accepted as someone) for the gallery's current size, read off the model's
    all-pairs ROC and recomputed as people are enrolled (`operating`); a new gallery targets
    `DEFAULT_FPIR` unless given `target_fpir`. `threshold` pins a fixed threshold instead. Both are
    stored in a new gallery; given for an existing one, they apply to this session only. A model
    without an all-pairs ROC falls back to its FAR = 1e-2 pairs threshold. Every enrolment, rename,
    removal and identification reaches the audit trail (`audit`) credited to `actor` (default:
    `local:<user>`; the API names its key, the UI its user). Photos received as bytes are kept in
    `photos` (default: beside the gallery, `kept_photos`) and leave with their person.
    """

    def __init__(self, path: str | Path, verifier, threshold: float | None = None,
                 index: str = "auto", quality: QualityGate | None = None,
                 busy_timeout_s: float = 10.0, create: bool = True, target_fpir: float | None = None,
                 actor: str | None = None, photos: str | Path | None = None):
        self.verifier = verifier
        meta = verifier.metadata
        self.roc = meta.gallery_roc
        fixed = default_threshold(meta) if threshold is None else threshold
        stored_fpir = target_fpir or (DEFAULT_FPIR if threshold is None and self.roc else None)
        self.store = open_store(path, verifier.fingerprint, meta.embedding_dim, fixed,
                                busy_timeout_s, create, stored_fpir, actor=actor)
        self.kept = KeptPhotos(photos or default_folder(path))
        self.pinned, self.target_fpir = threshold, target_fpir
        self.index_kind, self.quality = index, quality or QualityGate()
        if self.quality.min_quality is None and verifier.quality_model is not None:
            self.quality = replace(self.quality, min_quality=verifier.quality_model.floor)

    def operating_point(self) -> OperatingPoint:
        """The threshold in force now and its expected FPIR / FNIR at the current gallery size."""
        identities = max(1, self.store.identity_count())
        fpir = self.target_fpir or self.store.target_fpir
        if self.pinned is not None:
            threshold, rule = self.pinned, "pinned"
        elif fpir and self.roc:
            threshold = threshold_for_far(self.roc["points"], far_for_fpir(fpir, identities))
            rule = f"target FPIR {fpir:g} at {identities} identities"
        else:
            threshold, rule = self.store.threshold, "fixed at creation"
        if not self.roc:
            nan = float("nan")
            return OperatingPoint(threshold, nan, nan, nan, identities, rule + " (model has no all-pairs ROC)")
        return describe(self.roc["points"], threshold, identities, rule)

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def threshold(self) -> float:
        return self.operating_point().threshold

    # ------------------------------------------------------------ enrollment
    def enroll(self, name: str, images: Sequence[ImageInput], sources: Sequence[str] | None = None,
               new_person: bool | None = None) -> EnrollReport:
        """Add the usable images of one person, all or nothing (one transaction). `new_person`
        True: refuse a name already enrolled (`AlreadyInGalleryError`); False: refuse one that is
        not (`NotInGalleryError`); checked before any photo is analysed, and again in the
        transaction."""
        name = identity_name(name)
        if new_person is not None:
            self.store.check_person(name, new_person)
        images = list(images)
        sources = list(sources) if sources is not None else [
            # absolute: a gallery is re-embedded from its sources when its model changes (`upgrade`)
            str(Path(img).absolute()) if isinstance(img, (str, Path)) else f"image {i + 1}"
            for i, img in enumerate(images)]
        if len(sources) != len(images):
            raise ValueError(f"{len(images)} images but {len(sources)} sources")
        (report,) = self._enroll_people([(name, images, sources)], new_person)
        return report

    def enroll_uploads(self, name: str, uploads: Sequence[tuple[str, bytes]],
                       new_person: bool | None = None) -> EnrollReport:
        """`enroll` photos received as (file name, bytes), e.g. by a server: each kept beside the
        gallery as its source (an upgrade re-embeds from it), the copies the gallery did not take
        deleted; the report names the photos by their file names."""
        kept = [str(self.kept.keep(data, filename)) for filename, data in uploads]
        try:
            report = self.enroll(name, kept, kept, new_person)
        finally:
            self.kept.discard(kept, self.store.has_source)
        shown = {path: filename for path, (filename, _) in zip(kept, uploads)}
        return EnrollReport(report.name, [shown[s] for s in report.added],
                            [(shown[s], why.replace(s, shown[s])) for s, why in report.rejected])

    def enroll_dataset(self, source: str | Path, progress: bool = True) -> list[EnrollReport]:
        """Enroll every identity of a folder tree (`root/<name>/*.jpg`) or a manifest.csv: people
        go through together, ~32 photos at a time (decoded ahead, detected and embedded in batches),
        each person's photos committed in a transaction of their own."""
        by_identity: dict[str, list] = {}
        for sample in load_samples(source):
            by_identity.setdefault(sample.identity, []).append(sample.path.absolute())
        reports = []
        with tqdm(total=sum(map(len, by_identity.values())), desc="enroll", unit="image",
                  disable=not progress) as bar:
            for group in groups(list(by_identity.items()), BATCH_IMAGES):
                reports += self._enroll_people([(name, paths, list(map(str, paths))) for name, paths in group])
                bar.update(sum(len(paths) for _, paths in group))
        return reports

    def _enroll_people(self, people: list[tuple[str, list, list[str]]],
                       new_person: bool | None = None) -> list[EnrollReport]:
        """Enroll several people, (name, images, sources) each: their images decoded ahead, then
        detected and embedded together; each person's usable images added in one transaction."""
        reports = [EnrollReport(identity_name(name)) for name, _, _ in people]
        decoded = decode_ahead([image for _, images, _ in people for image in images])
        candidates, copies, first = [], [], {}  # first: image digest → its first candidate here
        for person, (_, _, sources) in enumerate(people):
            for source, rgb in zip(sources, decoded):
                if isinstance(rgb, FaceVerifyError):
                    reports[person].rejected.append((source, str(rgb)))
                    continue
                digest = image_digest(rgb)
                stored = self.store.find_image(digest)
                if stored:
                    reports[person].rejected.append((source, f"duplicate of an image already enrolled for {stored[1]!r}"))
                elif digest in first:  # a second copy here: its verdict is the first copy's
                    copies.append((person, source, first[digest]))
                else:
                    first[digest] = len(candidates)
                    candidates.append((person, source, digest, rgb))
        results = self.verifier.analyze([rgb for *_, rgb in candidates], [source for _, source, _, _ in candidates])
        rows, refusals = [[] for _ in people], []  # refusals: per candidate, why it was not added
        for (person, source, digest, _), result in zip(candidates, results):
            photo = enrolment_photo(source, digest, result)
            refusals.append(self._refusal(photo))
            self._take(reports[person], rows[person], photo, refusals[-1])
        for person, source, original in copies:
            owner = reports[candidates[original][0]].name
            reports[person].rejected.append(
                (source, refusals[original] or f"duplicate of an image already enrolled for {owner!r}"))
        for report, person_rows in zip(reports, rows):
            self._commit(report, person_rows, new_person)
        return reports

    def _commit(self, report: EnrollReport, rows: list[dict], new_person: bool | None = None) -> None:
        """One person's usable photos in one transaction with its audit line; a request whose
        every photo was refused gets its line too."""
        if rows:
            self.store.add_images(report.name, rows, rejected=len(report.rejected), new_person=new_person)
        else:
            self.store.record(AuditEntry("enrol", report.name, f"refused: all {len(report.rejected)} photo(s) rejected",
                                         {"rejected": len(report.rejected)}))

    def add_photos(self, name: str, photos: Sequence[dict]) -> EnrollReport:
        """Enroll one person from photos analysed elsewhere (`enrolment_photo`, e.g. by a cluster's
        workers): the same duplicate checks and quality gate as `enroll`, then one transaction."""
        report, rows = EnrollReport(identity_name(name)), []
        verdicts: dict[str, str] = {}  # digest → the refusal a later copy of the photo gets
        for photo in photos:
            digest = photo["sha256"]
            stored = self.store.find_image(digest) if digest and digest not in verdicts else None
            refusal = (verdicts[digest] if digest in verdicts else
                       f"duplicate of an image already enrolled for {stored[1]!r}" if stored else
                       self._refusal(photo))
            if digest and digest not in verdicts:
                verdicts[digest] = refusal or f"duplicate of an image already enrolled for {report.name!r}"
            self._take(report, rows, photo, refusal)
        self._commit(report, rows)
        return report

    def _refusal(self, photo: dict) -> str | None:
        """Why an analysed photo cannot be enrolled (its error, or the quality gate's problems)."""
        return photo["error"] or "; ".join(self.quality.problems(photo)) or None

    @staticmethod
    def _take(report: EnrollReport, rows: list, photo: dict, refusal: str | None) -> None:
        if refusal:
            report.rejected.append((photo["source"], refusal))
        else:
            rows.append({k: v for k, v in photo.items() if k != "error"})
            report.added.append(photo["source"])

    # -------------------------------------------------------- identification
    def identify(self, images: Sequence[ImageInput], top_k: int = 5) -> list:
        """Per image: an `Identification`, or the `FaceVerifyError` that prevented one."""
        results = list(self.verifier.analyze(images))
        found = [i for i, r in enumerate(results) if not isinstance(r, FaceVerifyError)]
        for i, answer in zip(found, self.identify_faces([results[i] for i in found], top_k)):
            results[i] = answer
        return results

    def identify_faces(self, faces: Sequence[FaceEmbedding], top_k: int = 5) -> list[Identification]:
        """Identify faces already detected and embedded (e.g. one a user picked among several)."""
        if not faces:
            return []
        found = self.store.search(np.stack([face.embedding for face in faces]), top_k, self.index_kind)
        if found is None:
            raise GalleryError(f"{self.store.path}: the gallery is empty; enroll someone first")
        point = self.operating_point()
        out = []
        for names, scores, face in zip(*found, faces):
            matches = list(zip(names, scores))
            best_name, best = matches[0]
            out.append(Identification(best_name if best >= point.threshold else None, best,
                                      point.threshold, matches, face, point))
        self.store.record(*(AuditEntry("identify", answer.name, "match" if answer.name else "unknown",
                                       {"score": round(answer.score, 4), "threshold": round(answer.threshold, 4)})
                            for answer in out))
        return out

    # ------------------------------------------------------------ management
    def identities(self):
        return self.store.identities()

    def show(self, name: str) -> list[dict]:
        images = self.store.images_of(name)
        if not images:
            raise NotInGalleryError(f"no identity named {name!r}")
        return images

    def thumbnail(self, name: str) -> np.ndarray | None:
        """Aligned RGB crop of the identity's first enrolled image, or None."""
        data = self.store.thumbnail(name)
        if data is None:
            return None
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def rename(self, old: str, new: str) -> None:
        self.store.rename(old, new)

    def remove(self, name: str) -> None:
        """Remove a person: their embeddings, thumbnails, template and the copies of their photos
        kept beside the gallery (never a file enrolled from elsewhere); the audit line stays."""
        self.kept.discard(self.store.remove_identity(name), self.store.has_source)

    def remove_image(self, image_id: int, name: str | None = None) -> None:
        """Remove one photo (of `name`, when given), and its kept copy."""
        self.kept.discard([self.store.remove_image(image_id, name)], self.store.has_source)

    def export(self, path: str | Path) -> int:
        """Write every image's embedding and quality data to a portable .npz (no pickle)."""
        rows, embeddings = self.store.all_images()
        meta = {k: self.store.meta[k] for k in ("weights_sha256", "embedding_dim", "threshold")}
        np.savez(path, meta=np.array(json.dumps(meta)), embeddings=embeddings,
                 names=np.array([r[0] for r in rows], dtype=str),
                 sources=np.array([r[1] for r in rows], dtype=str),
                 sha256=np.array([r[2] for r in rows], dtype=str),
                 quality=np.array([r[4:7] for r in rows], np.float64).reshape(-1, 3))
        return len(rows)

    def import_(self, path: str | Path, reembed: bool = False, progress: bool = True) -> int:
        """Add the images of an export. From another model, `reembed=True` recomputes every
        embedding from its source image (which must still exist); otherwise that is refused."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            names, sources, digests = z["names"].tolist(), z["sources"].tolist(), z["sha256"].tolist()
            embeddings, quality = z["embeddings"], z["quality"]
        foreign = meta["weights_sha256"] != self.store.meta["weights_sha256"]
        if foreign and not reembed:
            raise ModelMismatchError(f"{path} holds embeddings of model {describe_fingerprint(meta['weights_sha256'])}; "
                                     "import it with re-embedding to use this model")
        added = 0
        for name in tqdm(sorted(set(names)), desc="import", unit="identity", disable=not progress):
            picks = [i for i, n in enumerate(names) if n == name and not self.store.find_image(digests[i])]
            if foreign:
                added += len(self.enroll(name, [sources[i] for i in picks]).added)
                continue
            rows = [{"source": sources[i], "sha256": digests[i], "embedding": embeddings[i],
                     "det_score": quality[i, 0], "face_size": quality[i, 1], "sharpness": quality[i, 2]}
                    for i in picks]
            if rows:
                self.store.add_images(name, rows)
                added += len(rows)
        return added
