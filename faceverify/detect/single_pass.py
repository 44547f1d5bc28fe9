"""What the single-pass ONNX detectors (RetinaFace, YuNet) share: one onnxruntime session, the
size knobs (largest side, smallest face), the call's images split over worker threads, and the
whole-photo fallback for tight crops (MTCNN's O-Net on the whole photo, `whole_image_faces`).

A subclass says how to turn a batch of equal-size RGB images into raw detections
(`_run`: per image, boxes (K, 4), scores (K,), landmarks (K, 5, 2) in the pixels of the image it
was given, most confident first); everything else is here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..bundled import weights_dir
from .base import DETECTION_MAX_SIDE, Face, Shards, checked_max_side, min_face_size

#: nothing smaller than this many pixels (box short side) is looked for in the copy a detector
#: runs on: the smallest anchors of RetinaFace (16 px) and YuNet (stride 8) sit there; a larger
#: `min_face_size` / `min_face_fraction` lets the photo be shrunk until its smallest wanted face
#: reaches this size (fewer pixels to run the network over)
SMALLEST_FACE_PX = 20
#: faces with a box short side below this many pixels of the photo are dropped by default (the
#: networks' boxes are tight, brows to chin: a face MTCNN boxes at 20 pixels measures about 14)
MIN_FACE_PX = 10


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class SinglePassDetector:
    """Base of the one-network ONNX detectors (see the module docstring).

    `min_face_size`: faces with a box short side below this many pixels (of the original photo)
    are dropped (`MIN_FACE_PX`); `min_face_fraction`: likewise as a fraction of the photo's short side;
    `max_side`: photos are detected on a copy at most this many pixels a side; `min_score`: the
    detector's own confidence a face needs; `workers`: a call's images are split into this many
    shards run concurrently (default 2 on the CPU, 1 on a GPU); `threads`: onnxruntime threads
    (0: one per core)."""

    #: registry name (`detect.registry`), and the bundled weights' file under weights_dir()
    name: str = ""
    weights_file: str = ""
    default_min_score: float = 0.5
    #: photos whose short side is below this are enlarged to it (bilinear) before detection: a
    #: network trained on large scenes misplaces the landmarks of a face that fills a tiny photo
    min_input_side: int = 0

    def __init__(self, path: str | Path | None = None, providers: list[str] | None = None,
                 min_face_size: int = MIN_FACE_PX, min_face_fraction: float = 0.0,
                 max_side: int = DETECTION_MAX_SIDE, min_score: float | None = None,
                 workers: int | None = None, threads: int = 0):
        from ..runtime import create_session

        self.path = Path(path) if path is not None else weights_dir() / self.weights_file
        # quantised weights (YuNet's) expanded once at load, not at every run: 3x YuNet's speed
        self.session = create_session(self.path, providers, threads, fold_dequantize=True)
        self.providers, self.threads = self.session.get_providers(), threads
        self.min_face_size, self.min_face_fraction = min_face_size, min_face_fraction
        self.max_side = checked_max_side(max_side)
        self.min_score = self.default_min_score if min_score is None else float(min_score)
        if workers is None:
            workers = 2 if self.providers[0] == "CPUExecutionProvider" else 1
        self.workers, self._shards = workers, Shards(workers, self.name)
        self._onet = None

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights file this detector runs (what a model's metadata records)."""
        if not hasattr(self, "_sha256"):
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of every image, most confident first; the call's images split over the workers."""
        return self._shards.map(self.detect_batch, images)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of every image, equal-size (after scaling) images through the network together."""
        results: list[list[Face]] = [[] for _ in images]
        scaled = [self._scaled(np.asarray(image)) for image in images]
        groups: dict[tuple, list[int]] = {}
        for i, (small, _) in enumerate(scaled):
            groups.setdefault(small.shape, []).append(i)
        for members in groups.values():
            batch = np.stack([scaled[i][0] for i in members])
            for i, (boxes, scores, landmarks) in zip(members, self._run(batch)):
                results[i] = self._faces(boxes, scores, landmarks, scaled[i][1], images[i].shape)
        return results

    def detect_whole(self, images: Sequence[np.ndarray], min_score: float | None = None) -> list[list[Face]]:
        """Each whole image as MTCNN O-Net's candidate box (`mtcnn_onnx.whole_image_faces`): the
        tight-crop fallback every detector shares (`detect_faces`, `AssumeCropped`)."""
        from ..runtime import create_session
        from .mtcnn_onnx import whole_image_faces

        if self._onet is None:
            self._onet = create_session(weights_dir() / "mtcnn" / "onet.onnx", self.providers, self.threads)
        return whole_image_faces(images, self._onet, self.max_side, min_score)

    def _scaled(self, image: np.ndarray):
        """(the copy to detect on, factor from its pixels to the photo's): no larger than needed
        for the smallest wanted face to be `SMALLEST_FACE_PX`, but its short side at least
        `min_input_side` (a photo below it is enlarged), and at most `max_side` a side."""
        from .mtcnn_onnx import _as_uint8

        image = _as_uint8(image)
        smallest = min_face_size(image.shape, self.min_face_size, self.min_face_fraction)
        scale = min(1.0, SMALLEST_FACE_PX / max(smallest, 1))
        scale = max(scale, self.min_input_side / min(image.shape[:2]))
        return resized_by(image, min(scale, self.max_side / max(image.shape[:2])))

    def _faces(self, boxes, scores, landmarks, factor: float, shape) -> list[Face]:
        """`Face`s in the photo's pixels, above `min_score` and the smallest face size."""
        smallest = min_face_size(shape, self.min_face_size, self.min_face_fraction)
        faces = []
        for box, score, points in zip(np.asarray(boxes, np.float32).reshape(-1, 4) * factor,
                                      np.asarray(scores, np.float32).reshape(-1),
                                      np.asarray(landmarks, np.float32).reshape(-1, 5, 2) * factor):
            if score >= self.min_score and min(box[2] - box[0], box[3] - box[1]) >= smallest:
                faces.append(Face(box, float(score), points))
        return sorted(faces, key=lambda f: f.score, reverse=True)

    def _run(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """A (B, H, W, 3) uint8 RGB batch → per image (boxes, scores, landmarks) in its pixels."""
        raise NotImplementedError


def resized_by(image: np.ndarray, scale: float):
    """(`image` resized by `scale`, the factor from its pixels back to the image's: 1 / scale, the
    same on both axes, whatever the rounding of the new size)."""
    import cv2

    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR), 1.0 / scale
