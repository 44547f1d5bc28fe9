"""Detector interface and the face-selection policy shared by every detector backend."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import MultipleFacesError, NoFaceError
from ..policies import DETECTION_MAX_SIDE, POLICIES

#: Under the "single" policy, a second face smaller than this fraction of the largest face's area,
#: or found with less confidence than `PROMINENT_MIN_SCORE`, is treated as background (a bystander,
#: a face cut by the frame or blurred behind the subject) rather than a competing subject.
PROMINENT_AREA_RATIO = 0.25
#: MTCNN keeps no face below 0.9; RetinaFace keeps faces from 0.5, and on the LFW dev-pair photos
#: those between 0.5 and 0.9 raised the photos refused for several faces from 172 to 243 of 1,598
#: (188 with this rule)
PROMINENT_MIN_SCORE = 0.9


@dataclass(frozen=True)
class Face:
    """One detected face in image pixels: box (x1, y1, x2, y2), confidence and 5 landmarks (5×2).
    `whole_image`: found by taking the whole photo as the face (no detection found it; see
    `mtcnn_onnx.whole_image_faces`)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    whole_image: bool = False

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(self.score, 4),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
                "whole_image": self.whole_image}


class Detector(Protocol):
    """Anything that finds faces: torch MTCNN and ONNX MTCNN implement this (and `detect_whole`,
    which `detect_faces` falls back on when a photo may be a tight crop)."""

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per RGB uint8 image, most confident first."""


class AssumeCropped:
    """A detector for photos that are face crops already (ID photos, dataset crops, thumbnails):
    each whole photo is the face, its landmarks from the wrapped MTCNN's last stage
    (`detect_whole`) down to O-Net probability `min_score` (the user vouches for the crop; the
    face's score carries O-Net's doubt into its quality); `--assume-cropped`."""

    def __init__(self, detector, min_score: float = 0.0):
        self.detector, self.min_score = detector, min_score
        self.name = detector.name

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return self.detector.detect_whole(images, self.min_score)


def detector_name(detector) -> str:
    """A detector's registry name (`detect.registry`); "custom" for one from elsewhere."""
    return getattr(detector, "name", "custom")


def select_face(faces: Sequence[Face], image_shape, policy: str = "single", name: str = "image") -> Face:
    """Pick the face a single-face operation should use, or raise a typed error.

    - ``single``: the only prominent face (large and confident: `PROMINENT_AREA_RATIO`,
      `PROMINENT_MIN_SCORE`); several prominent faces raise `MultipleFacesError`.
    - ``largest``: the face with the largest box.
    - ``central``: the face closest to the image centre (the dataset convention of LFW).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown face policy {policy!r}; choose one of {POLICIES}")
    if not faces:
        raise NoFaceError(f"{name}: no face found")
    by_area = sorted(faces, key=lambda f: f.area, reverse=True)
    if policy == "largest":
        return by_area[0]
    if policy == "central":
        cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
        return min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2
                   + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)
    prominent = [f for f in by_area if f.area >= PROMINENT_AREA_RATIO * by_area[0].area
                 and (f is by_area[0] or f.score >= PROMINENT_MIN_SCORE)]
    if len(prominent) > 1:
        raise MultipleFacesError(
            f"{name}: {len(prominent)} faces found; crop the image or choose a face policy, "
            "'largest' or 'central' (command line: --face-policy)", prominent)
    return by_area[0]


def shrink_for_detection(image: np.ndarray, max_side: int = DETECTION_MAX_SIDE):
    """Return (image to detect on, factor to multiply its coordinates by to get original pixels)."""
    import cv2

    long_side = max(image.shape[:2])
    if long_side <= max_side:
        return image, 1.0
    scale = max_side / long_side
    small = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    return small, 1.0 / scale


def checked_max_side(max_side: int) -> int:
    """A detector's `max_side`, refused unless it is a positive number of pixels."""
    if int(max_side) != max_side or max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, not {max_side!r}")
    return int(max_side)


def faces_from_arrays(boxes, scores, landmarks, scale: float, min_score: float) -> list[Face]:
    """Build `Face` objects from one image's raw detector output, most confident first."""
    if boxes is None or len(boxes) == 0:
        return []
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2) * scale
    faces = [Face(b, float(s), p) for b, s, p in zip(boxes, scores, landmarks) if s >= min_score]
    return sorted(faces, key=lambda f: f.score, reverse=True)


def min_face_size(shape, floor: int, fraction: float) -> int:
    """Smallest face to look for: `floor` pixels, or `fraction` of the short side if larger."""
    return max(floor, int(fraction * min(shape[:2])))


#: Margin added around an image in which no face was found (fraction of its size, per side).
RETRY_PAD = 0.3


def pad_for_detection(image: np.ndarray, pad: float = RETRY_PAD):
    """(image with a black margin, pixel offset of the original inside it)."""
    import cv2

    py, px = int(pad * image.shape[0]), int(pad * image.shape[1])
    return cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0)), \
        np.array([px, py], np.float32)


def shift_face(face: Face, offset: np.ndarray) -> Face:
    """The same face with its coordinates translated by `offset` (x, y)."""
    return Face(face.box + np.tile(offset, 2), face.score, face.landmarks + offset, face.whole_image)


class Shards:
    """A call's images split into `workers` shards detected concurrently: onnxruntime and numpy
    release the GIL, so one shard's Python runs while another's networks do (1.5× the images/s of
    one shard on 2 cores for the ONNX MTCNN, bench/bench_pipeline.py). One worker: no threads."""

    def __init__(self, workers: int, name: str):
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 1 else None

    def map(self, detect_batch: Callable[[Sequence[np.ndarray]], list], images: Sequence[np.ndarray]) -> list:
        """`detect_batch` over the images, in shards, results in the images' order."""
        if self._pool is None or len(images) < 2:
            return detect_batch(images)
        size = -(-len(images) // self.workers)
        shards = [images[start:start + size] for start in range(0, len(images), size)]
        return [faces for shard in self._pool.map(detect_batch, shards) for faces in shard]
