"""`Verifier`: the public face-verification API over either backend (torch or ONNX runtime).

image → `load_rgb` → detector → `select_face` → `align_face` → embedder → cosine score → decision
at the threshold calibrated for the model and stored in its metadata.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .align import align_face
from .bundled import weights_dir
from .detect import Detector, Face, pad_for_detection, select_face, shift_face
from .errors import FaceVerifyError, ModelError
from .images import ImageInput, load_rgb
from .metrics import cosine_scores

log = logging.getLogger(__name__)

DEFAULT_MODEL_STEM = "faceverify-default"
#: The metadata threshold `verify` decides with unless told otherwise.
DEFAULT_OPERATING_POINT = "best_accuracy"


def default_model_path() -> Path:
    """`$FACEVERIFY_MODEL`, else the bundled model (ONNX preferred over torch) in the installed
    package or the checkout's weights/ (see `bundled`)."""
    if os.environ.get("FACEVERIFY_MODEL"):
        return Path(os.environ["FACEVERIFY_MODEL"])
    folder = weights_dir()
    for suffix in (".onnx", ".pt"):
        candidate = folder / (DEFAULT_MODEL_STEM + suffix)
        if candidate.is_file():
            return candidate
    raise ModelError(f"no bundled model in {folder}; pass a model path or set FACEVERIFY_MODEL")


@dataclass
class FaceEmbedding:
    """One image's chosen face: detection, aligned crop (112×112×3 RGB) and embedding."""

    face: Face
    crop: np.ndarray
    embedding: np.ndarray
    faces_found: int


@dataclass
class VerificationResult:
    score: float
    same: bool
    threshold: float
    faces: tuple  # (FaceEmbedding, FaceEmbedding)

    def to_dict(self) -> dict:
        return {"same": self.same, "score": round(self.score, 6), "threshold": self.threshold,
                "faces": [{**f.face.to_dict(), "faces_found": f.faces_found} for f in self.faces]}


class Verifier:
    """Detect, align, embed and compare faces.

    `model`: a checkpoint (.pt) or ONNX file (.onnx); default: the bundled model. `face_policy`
    says which face to use when a photo holds several: "single" (refuse to guess), "largest" or
    "central". `flip` averages the embeddings of the face and its mirror image (test-time
    augmentation: slower, usually slightly more accurate).
    """

    def __init__(self, model: str | Path | None = None, *, detector: Detector | None = None,
                 embedder: Callable[[np.ndarray], np.ndarray] | None = None,
                 device: str | None = None, face_policy: str = "single", flip: bool = False):
        if embedder is None:
            embedder = load_embedder(model if model is not None else default_model_path(), device)
        self.embedder = embedder
        self.metadata: dict = embedder.metadata
        if detector is None:
            detector = _default_detector(embedder, device)
        self.detector = detector
        self.face_policy, self.flip = face_policy, flip
        log.info("faceverify: embedder on %s, detector %s", self.providers, type(detector).__name__)

    @classmethod
    def from_onnx(cls, path: str | Path, **kwargs) -> "Verifier":
        from .runtime import OnnxEmbedder

        return cls(embedder=OnnxEmbedder(path, kwargs.pop("providers", None)), **kwargs)

    @property
    def providers(self) -> list[str]:
        """Where embedding runs, e.g. ['CUDAExecutionProvider', ...] or ['torch:cpu']."""
        return list(self.embedder.providers)

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """Decision threshold calibrated on the model's dev pairs ("best_accuracy" or "far_1e-2")."""
        try:
            return float(self.metadata["thresholds"][operating_point]["value"])
        except (KeyError, TypeError):
            raise ModelError(f"the model has no calibrated {operating_point!r} threshold; "
                             "pass threshold=... explicitly") from None

    def analyze(self, images: Sequence[ImageInput], names: Sequence[str] | None = None,
                face_policy: str | None = None) -> list[FaceEmbedding | FaceVerifyError]:
        """Per image, its chosen face and embedding, or the `FaceVerifyError` explaining why not."""
        names = list(names) if names is not None else [_describe(img, i) for i, img in enumerate(images)]
        found = find_and_align(images, self.detector, face_policy or self.face_policy, names)
        results: list = list(found)
        ok = [i for i, r in enumerate(found) if not isinstance(r, FaceVerifyError)]
        if ok:
            embeddings = self.embed_aligned(np.stack([found[i][1] for i in ok]))
            for i, embedding in zip(ok, embeddings):
                face, crop, count = found[i]
                results[i] = FaceEmbedding(face, crop, embedding, count)
        return results

    def all_faces(self, image: ImageInput) -> list[FaceEmbedding]:
        """Every face in one photo, largest first, each aligned and embedded (to let a user pick)."""
        rgb = load_rgb(image)
        faces = sorted(self.detector.detect([rgb])[0], key=lambda f: f.area, reverse=True)
        if not faces:
            return []
        crops = np.stack([align_face(rgb, f.landmarks) for f in faces])
        return [FaceEmbedding(f, c, e, len(faces)) for f, c, e in zip(faces, crops, self.embed_aligned(crops))]

    def embed_aligned(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings of aligned (N, 112, 112, 3) uint8 crops, with flip averaging if enabled."""
        embeddings = self.embedder(crops)
        if self.flip:
            embeddings = embeddings + self.embedder(np.ascontiguousarray(crops[:, :, ::-1]))
            embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        return embeddings

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(N, dim) embeddings; raises the first image's error if any image has no usable face."""
        results = self.analyze(images)
        for result in results:
            if isinstance(result, FaceVerifyError):
                raise result
        return np.stack([r.embedding for r in results])

    def verify(self, a: ImageInput, b: ImageInput, threshold: float | None = None) -> VerificationResult:
        """Are the faces in `a` and `b` the same person?"""
        first, second = self.analyze([a, b])
        for result in (first, second):
            if isinstance(result, FaceVerifyError):
                raise result
        return self.compare(first, second, threshold)

    def compare(self, first: FaceEmbedding, second: FaceEmbedding,
                threshold: float | None = None) -> VerificationResult:
        """The decision for two faces already found and embedded (e.g. picked among several)."""
        score = float(cosine_scores(first.embedding, second.embedding))
        threshold = self.threshold() if threshold is None else float(threshold)
        return VerificationResult(score, score >= threshold, threshold, (first, second))


def find_and_align(images: Sequence[ImageInput], detector: Detector, face_policy: str,
                   names: Sequence[str]) -> list:
    """Per image: (chosen face, aligned crop, number of faces found) or the `FaceVerifyError`."""
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
        for i, (image, offset), faces in zip(retry, padded, detector.detect([p for p, _ in padded])):
            detections[i] = [shift_face(f, -offset) for f in faces]
    for i in order:
        try:
            face = select_face(detections[i], loaded[i].shape, face_policy, names[i])
            results[i] = (face, align_face(loaded[i], face.landmarks), len(detections[i]))
        except FaceVerifyError as exc:
            results[i] = exc
    return results


def load_embedder(model: str | Path, device: str | None = None):
    """Torch embedder for a checkpoint, ONNX runtime embedder for an .onnx file."""
    model = Path(model)
    if model.suffix == ".onnx":
        from .runtime import OnnxEmbedder

        return OnnxEmbedder(model, providers=None)
    from .embed import TorchEmbedder

    return TorchEmbedder.from_checkpoint(model, device)


def _default_detector(embedder, device):
    if getattr(embedder, "torch_free", False):
        from .detect import OnnxMTCNN

        return OnnxMTCNN(providers=embedder.providers)
    from .detect import TorchMTCNN

    return TorchMTCNN(device=device)


def _describe(image, index: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image {index + 1}"
