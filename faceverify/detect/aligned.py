"""Detect → select → align, the step every caller shares (verifier, prepare, evaluation, bench).

`detect_faces` loads each image and finds every face (padding the frame once where none was found:
tightly cropped faces need a margin; then, still none, taking the whole photo as the face if
MTCNN's last stage agrees, `whole_image`); `detect_and_align` then picks one face per image by policy
and warps it with the one alignment function; `align_all` warps every face of one image. Results
are `AlignedFace` objects (or the `FaceVerifyError` explaining why not), never bare tuples. A model
names the templates it takes (`ModelMetadata.templates`: an ensemble may take several); each face
is aligned once per template, from the same detection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..align import ARCFACE_112, Template, align_face
from ..errors import FaceVerifyError
from ..images import ImageInput, load_rgb
from .base import Detector, Face, pad_for_detection, select_face, shift_face


@dataclass
class AlignedFace:
    """One face of a photo: its detection, its aligned RGB crops (one per template the model takes,
    in the model's order), and how many faces the photo held."""

    face: Face
    crops: tuple[np.ndarray, ...]
    faces_found: int

    @property
    def crop(self) -> np.ndarray:
        """The first template's crop: the one shown to people."""
        return self.crops[0]


def align_templates(image: np.ndarray, face: Face, templates: Sequence[Template]) -> tuple[np.ndarray, ...]:
    return tuple(align_face(image, face.landmarks, t) for t in templates)


@dataclass
class DetectedImage:
    """A decoded RGB photo and every face found in it, most confident first."""

    image: np.ndarray
    faces: list[Face]


def detect_faces(images: Sequence[ImageInput], detector: Detector) -> list[DetectedImage | FaceVerifyError]:
    """Per image: its pixels and faces, or the error that stopped decoding it."""
    results: list = [None] * len(images)
    loaded = {}
    for i, img in enumerate(images):
        try:
            loaded[i] = load_rgb(img)
        except FaceVerifyError as exc:
            results[i] = exc
    order = list(loaded)
    detections = dict(zip(order, detector.detect([loaded[i] for i in order]) if order else []))
    retry = [i for i in order if not detections[i]]
    if retry:  # tightly cropped faces (no margin) are found once the frame is padded
        padded = [pad_for_detection(loaded[i]) for i in retry]
        for i, (_, offset), faces in zip(retry, padded, detector.detect([p for p, _ in padded])):
            detections[i] = [shift_face(f, -offset) for f in faces]
    # cut brows to chin, the photo is the face: MTCNN then finds nothing, or a face mostly
    # outside the frame whose landmarks are wrong; O-Net on the whole photo places them
    whole = [i for i in order if all(cut_by_frame(f, loaded[i].shape) for f in detections[i])] \
        if hasattr(detector, "detect_whole") else []
    if whole:
        for i, faces in zip(whole, detector.detect_whole([loaded[i] for i in whole])):
            detections[i] = faces or detections[i]
    for i in order:
        results[i] = DetectedImage(loaded[i], detections[i])
    return results


#: a face box less than this fraction inside the photo is cut by the frame
INSIDE_FRAME = 0.6


def cut_by_frame(face: Face, shape) -> bool:
    """Does most of the face's box lie outside the photo (a crop tighter than the face)?"""
    x1, y1, x2, y2 = face.box
    inside = max(0.0, min(x2, shape[1]) - max(x1, 0)) * max(0.0, min(y2, shape[0]) - max(y1, 0))
    return inside < INSIDE_FRAME * face.area


def detect_and_align(images: Sequence[ImageInput], detector: Detector, face_policy: str,
                     names: Sequence[str], templates: Sequence[Template] = (ARCFACE_112,)
                     ) -> list[AlignedFace | FaceVerifyError]:
    """Per image: the face `face_policy` picks (see `select_face`), aligned to each of
    `templates`, or the error."""
    results: list = []
    for found, name in zip(detect_faces(images, detector), names):
        if isinstance(found, FaceVerifyError):
            results.append(found)
            continue
        try:
            face = select_face(found.faces, found.image.shape, face_policy, name)
            results.append(AlignedFace(face, align_templates(found.image, face, templates), len(found.faces)))
        except FaceVerifyError as exc:
            results.append(exc)
    return results


def align_all(found: DetectedImage, templates: Sequence[Template] = (ARCFACE_112,)) -> list[AlignedFace]:
    """Every face of one photo, largest first, aligned to each of `templates` (to let a user
    pick one)."""
    faces = sorted(found.faces, key=lambda f: f.area, reverse=True)
    return [AlignedFace(f, align_templates(found.image, f, templates), len(faces)) for f in faces]
