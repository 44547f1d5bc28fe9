"""What a gallery keeps of a photo, computed the same way by enrolment, the cluster's workers and
an upgrade: its embedding, gate measures and thumbnail, and the digest that spots a duplicate."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

from ..errors import FaceVerifyError
from ..metadata import BEST_ACCURACY, FAR_1E2
from ..quality import problems
from ..verifier import FaceEmbedding


def face_quality(face: FaceEmbedding) -> dict:
    """The measures a gallery stores of a photo (and its gate reads), as the verifier took them."""
    x1, y1, x2, y2 = face.face.box
    quality = face.quality
    return {"det_score": quality.det_score, "face_size": float(min(x2 - x1, y2 - y1)),
            "sharpness": quality.sharpness, "quality": quality.score}


def enrolment_photo(source: str, digest: str, result) -> dict:
    """What a gallery stores of one photo (embedding, gate measures, thumbnail), or the error that
    stopped it: computed wherever the photo was embedded, committed by `Gallery.add_photos`."""
    if isinstance(result, FaceVerifyError):
        return {"source": source, "sha256": digest, "error": str(result)}
    return {"source": source, "sha256": digest, "error": None, "embedding": result.embedding,
            "thumbnail": encode_thumbnail(result.crop), **face_quality(result),
            # every hint, not only the verifier's reasons: the gate may be stricter than the floor
            "quality_problems": problems(result.quality)}


def image_digest(rgb: np.ndarray) -> str:
    """sha256 of decoded pixels (and shape): how a gallery recognises a photo it already holds."""
    return hashlib.sha256(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()


def encode_thumbnail(crop: np.ndarray) -> bytes:
    """An aligned RGB crop as the JPEG a gallery keeps for UIs."""
    return cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes()


def default_threshold(metadata) -> float:
    """The fixed threshold a new gallery stores for this model: its FAR = 1e-2 pairs threshold,
    else its best-accuracy one."""
    return metadata.threshold(FAR_1E2 if FAR_1E2 in metadata.thresholds else BEST_ACCURACY)


def groups(people: list[tuple[str, list]], images: int):
    """Consecutive runs of (name, photos) holding at least `images` photos (the last: the rest)."""
    group, size = [], 0
    for person in people:
        group.append(person)
        size += len(person[1])
        if size >= images:
            yield group
            group, size = [], 0
    if group:
        yield group
