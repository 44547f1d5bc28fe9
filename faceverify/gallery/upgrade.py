"""Upgrading a gallery to a new model (`faceverify gallery upgrade`): every person re-embedded from
the photos the gallery kept, on either store, resumable, never half-switched.

1. Staging: per person, the images not yet staged are read from their `source`, checked against
   the stored `sha256` of their decoded pixels, detected and embedded by the new model; their new
   embedding, thumbnail and quality (or the problem: missing, unreadable, changed, no usable face)
   go into `upgrade_images` in one transaction per person. Meanwhile the gallery keeps working with
   its old model (nothing it reads is touched), and a run killed here resumes where it stopped.
2. The switch: one transaction swaps every staged embedding in, rebuilds the templates, points the
   meta at the new model (fingerprint, embedding size, threshold) and drops the staging. Images the
   new model could not re-embed stop it (nothing switched, staging kept) unless `drop_missing`
   removes them (and people left without any image).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import FaceVerifyError, GalleryBusyError, GalleryError
from ..metadata import describe_fingerprint
from ..pipeline import BATCH_IMAGES, decode_ahead
from .backends import open_store
from .photos import default_threshold, encode_thumbnail, face_quality, groups, image_digest

#: staging passes before giving up on a gallery that keeps receiving new images meanwhile
SWITCH_ATTEMPTS = 3


@dataclass
class UpgradeReport:
    gallery: str
    from_model: str  # fingerprint (`metadata.fingerprint`: weights and detector) the gallery was built with
    to_model: str
    embedding_dim: int  # the new model's
    upgraded: bool = False  # switched by this call
    already: bool = False  # the gallery already used the new model: nothing done
    people: int = 0  # in the gallery now
    images: int = 0
    reused: int = 0  # images staged by an earlier, interrupted run
    embedded: int = 0  # images re-embedded by this run
    problems: list = field(default_factory=list)  # (person, source, reason) not re-embedded
    dropped: list = field(default_factory=list)  # those removed (drop_missing)
    removed_people: list = field(default_factory=list)  # left without images, removed

    @property
    def ok(self) -> bool:
        return self.upgraded or self.already

    def summary(self) -> str:
        model = describe_fingerprint(self.to_model)
        if self.already:
            return f"{self.gallery} already uses model {model}: nothing to do"
        if not self.upgraded:
            return (f"{len(self.problems)} images could not be re-embedded: nothing switched, the gallery "
                    f"still uses model {describe_fingerprint(self.from_model)}")
        line = (f"upgraded {self.people} people ({self.images} images) to model {model}; "
                f"{len(self.dropped)} images dropped")
        if self.removed_people:
            line += f", {len(self.removed_people)} people left without images removed"
        return line

    def to_dict(self) -> dict:
        rows = lambda items: [{"person": p, "source": s, "reason": r} for p, s, r in items]  # noqa: E731
        return {"gallery": self.gallery, "from_model": self.from_model, "to_model": self.to_model,
                "embedding_dim": self.embedding_dim, "upgraded": self.upgraded, "already": self.already,
                "people": self.people, "images": self.images, "reused": self.reused,
                "embedded": self.embedded, "problems": rows(self.problems), "dropped": rows(self.dropped),
                "removed_people": self.removed_people}


def upgrade_gallery(location, verifier, drop_missing: bool = False, progress: bool = True,
                    busy_timeout_s: float = 10.0, batch_images: int = BATCH_IMAGES) -> UpgradeReport:
    """Re-embed the gallery at `location` (SQLite file or postgresql:// URL) with `verifier`'s model
    and switch it to that model. Returns the report; `report.upgraded` is False (and the gallery
    still on its old model, the staged work kept for the next call) when some images could not be
    re-embedded and `drop_missing` is not set: `report.problems` lists them. Photos go through the
    model ~`batch_images` at a time; each person is committed to the staging on their own."""
    target, to_model = verifier.metadata, verifier.fingerprint
    store = open_store(location, to_model, target.embedding_dim, default_threshold(target),
                       busy_timeout_s, create=False, any_model=True)
    try:
        report = UpgradeReport(store.path, store.meta["weights_sha256"], to_model, target.embedding_dim)
        if report.from_model == report.to_model:
            report.already = True
        else:
            report.reused = store.start_upgrade(to_model, target.embedding_dim)
            for _ in range(SWITCH_ATTEMPTS):
                _stage_all(store, verifier, report, progress, batch_images)
                report.problems = store.staged_problems()
                if report.problems and not drop_missing:
                    return report
                if report.problems and len(report.problems) >= store.image_count():
                    # e.g. sources recorded relative to another working directory: dropping them
                    # all would leave an empty gallery on the new model
                    raise GalleryError(f"{store.path}: none of the gallery's {store.image_count()} photos "
                                       "could be re-embedded (first: "
                                       f"{' / '.join(report.problems[0])}); nothing dropped, nothing switched")
                switched = store.finish_upgrade(to_model, target.embedding_dim,
                                                default_threshold(target), drop_missing)
                if switched is not None:
                    break
            else:
                raise GalleryBusyError(f"{store.path}: images kept being enrolled during the upgrade; "
                                       "run it again (what was re-embedded is kept)")
            report.upgraded = True
            report.dropped, report.removed_people = switched["dropped"], switched["removed"]
        report.people, report.images = store.identity_count(), store.image_count()
        return report
    finally:
        store.close()


def _stage_all(store, verifier, report: UpgradeReport, progress: bool, batch_images: int) -> None:
    """Stage every person with images not staged yet, one transaction per person."""
    people = store.unstaged_images()
    with tqdm(total=len(people), desc="upgrade", unit="person", disable=not progress) as bar:
        for group in groups(people, batch_images):
            for rows in _reembed(verifier, group):
                store.stage(verifier.fingerprint, rows)
                report.embedded += sum(row.get("embedding") is not None for row in rows)
                bar.update(1)


def _reembed(verifier, people: list[tuple[str, list[dict]]]):
    """Per person of `people` ((name, images: id, source, sha256)), the staging rows of their
    images: the new embedding, thumbnail and quality, or the problem."""
    images = [image for _, person in people for image in person]
    present = [Path(image["source"]).is_file() for image in images]
    decoded = decode_ahead([image["source"] for image, here in zip(images, present) if here])
    rows, candidates = {}, []
    for image, here in zip(images, present):
        if not here:
            rows[image["id"]] = {"id": image["id"], "problem": "source photo not found"}
            continue
        rgb = next(decoded)
        if isinstance(rgb, FaceVerifyError):
            rows[image["id"]] = {"id": image["id"], "problem": "unreadable: " + _reason(rgb, image["source"])}
        elif image_digest(rgb) != image["sha256"]:
            rows[image["id"]] = {"id": image["id"], "problem": "changed since it was enrolled "
                                 "(its pixels differ from the enrolled photo's)"}
        else:
            candidates.append((image, rgb))
    results = verifier.analyze([rgb for _, rgb in candidates],
                               [image["source"] for image, _ in candidates]) if candidates else []
    for (image, _), result in zip(candidates, results):
        if isinstance(result, FaceVerifyError):
            rows[image["id"]] = {"id": image["id"], "problem": "no usable face for the new model: "
                                 + _reason(result, image["source"])}
        else:
            rows[image["id"]] = {"id": image["id"], "embedding": result.embedding,
                                 "thumbnail": encode_thumbnail(result.crop), **face_quality(result)}
    for _, person in people:
        yield [rows[image["id"]] for image in person]


def _reason(error: Exception, source: str) -> str:
    """The error's message without the leading "source: " (the report names the source)."""
    text = str(error)
    return text[len(source) + 2:] if text.startswith(source + ": ") else text
