"""`Verifier`: the public face-verification API over either backend (torch or ONNX runtime).

image → `load_rgb` → detector → `select_face` → `align_face` (to each template the model names)
→ embedder → cosine score → decision at the threshold calibrated for the model and stored in its
metadata.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .bundled import weights_dir
from .detect import DETECTION_MAX_SIDE, AlignedFace, AssumeCropped, Detector, align_all, detect_faces
from .detect.base import detector_name
from .errors import FaceVerifyError, ModelError
from .images import ImageInput
from .interfaces import FaceEmbedder
from .metadata import ModelMetadata, fingerprint
from .metrics import cosine_scores
from .pipeline import aligned_batches, run_ahead
from .quality import FaceQuality, QualityModel, measure

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
class FaceEmbedding(AlignedFace):
    """A face that carries its embedding and its quality, so nothing downstream detects, embeds or
    measures it again."""

    embedding: np.ndarray
    quality: FaceQuality

    @property
    def reliable(self) -> bool:
        return self.quality.reliable


@dataclass
class VerificationResult:
    """The decision, and whether both faces are good enough to trust it (`reliable`; if not,
    `problems` says what is wrong with which photo)."""

    score: float
    same: bool
    threshold: float
    faces: tuple  # (FaceEmbedding, FaceEmbedding)

    @property
    def reliable(self) -> bool:
        return all(f.reliable for f in self.faces)

    @property
    def problems(self) -> list[str]:
        return [f"{which} photo: {p}" for which, f in zip(("first", "second"), self.faces)
                for p in f.quality.problems]

    def to_dict(self) -> dict:
        return {"same": self.same, "score": round(self.score, 6), "threshold": self.threshold,
                "reliable": self.reliable, "problems": self.problems,
                "faces": [face_dict(f) for f in self.faces]}


def face_dict(face: FaceEmbedding) -> dict:
    """A face for JSON: box, score, landmarks, how many faces the photo held, its quality."""
    return {**face.face.to_dict(), "faces_found": face.faces_found,
            "quality": face.quality.to_dict()}


class Verifier:
    """Detect, align, embed and compare faces.

    `model`: a checkpoint (.pt) or ONNX file (.onnx); default: the bundled model. `detector`: a
    `Detector`, or a detector's name (`detect.registry`: "mtcnn", "retinaface", "yunet", or two
    joined by ">"); default: the one the model names (`ModelMetadata.detector_name`), whose
    landmarks its thresholds and quality model were calibrated on. `face_policy`
    says which face to use when a photo holds several: "single" (refuse to guess), "largest" or
    "central". `flip` averages the embeddings of the face and its mirror image (test-time
    augmentation: twice the embedding cost); None follows the model, whose thresholds were
    calibrated one way or the other (`ModelMetadata.flip`). The detector's speed knobs (their cost
    measured in bench/bench_pipeline.py and the README): `min_face_fraction` skips faces smaller
    than that fraction of the image's short side (fewer pyramid levels); `max_detection_side`
    detects on a copy shrunk to at most that many pixels a side (alignment still uses the original).
    `quality_floor`: the quality score below which a face is flagged unreliable (default: the one
    stored with the model's quality model; `quality.py`). `assume_cropped`: every photo is a
    face crop already (ID photos, thumbnails): no detection, the whole photo is the face, its
    landmarks from MTCNN's last stage (`detect.AssumeCropped`).
    """

    def __init__(self, model: str | Path | None = None, *, detector: Detector | str | None = None,
                 embedder: FaceEmbedder | None = None,
                 device: str | None = None, face_policy: str = "single", flip: bool | None = None,
                 min_face_fraction: float = 0.0, max_detection_side: int = DETECTION_MAX_SIDE,
                 quality_floor: float | None = None, assume_cropped: bool = False):
        if embedder is None:
            embedder = load_embedder(model if model is not None else default_model_path(), device)
        self.embedder = embedder
        self.metadata: ModelMetadata = embedder.metadata
        if detector is None or isinstance(detector, str):
            from .detect.registry import create_detector

            detector = create_detector(detector or self.metadata.detector_name, torch_free=embedder.torch_free,
                                       device=device, providers=_onnx_providers(embedder),
                                       min_face_fraction=min_face_fraction, max_side=max_detection_side)
        self.detector = AssumeCropped(detector) if assume_cropped else detector
        if self.detector_name != self.metadata.detector_name:
            log.warning("faceverify: %s was calibrated on %s landmarks, faces here come from %s: its "
                        "thresholds and quality scores are not calibrated for them (faceverify calibrate "
                        "--detector)", self.metadata.arch, self.metadata.detector_name, self.detector_name)
        self.face_policy = face_policy
        self.flip = self.metadata.flip if flip is None else flip
        #: the alignments the model takes, in its input order (`ModelMetadata.templates`)
        self.templates = self.metadata.templates
        #: the model's own quality calibration (None: measures only, every face reliable)
        self.quality_model = QualityModel.from_dict(self.metadata.quality) if self.metadata.quality else None
        if quality_floor is not None:
            if self.quality_model is None:
                log.warning("%s has no quality model: quality_floor %s is ignored", self.metadata.arch, quality_floor)
            else:
                self.quality_model.floor = float(quality_floor)
        log.info("faceverify: embedder on %s, detector %s", self.providers, self.detector_name)

    @classmethod
    def from_onnx(cls, path: str | Path, **kwargs) -> "Verifier":
        from .runtime import OnnxEmbedder

        return cls(embedder=OnnxEmbedder(path, kwargs.pop("providers", None)), **kwargs)

    @property
    def detector_name(self) -> str:
        """The detector's registry name ("custom" for a detector from elsewhere)."""
        return detector_name(self.detector)

    @property
    def fingerprint(self) -> str:
        """What galleries, embedding files and cluster parts record of this pipeline: the model's
        weights and the detector whose landmarks align the faces (`metadata.fingerprint`)."""
        if not hasattr(self, "_fingerprint"):
            from .detect.registry import detector_weights_sha256

            self._fingerprint = fingerprint(self.metadata.weights_sha256, self.detector_name,
                                            detector_weights_sha256(self.detector))
        return self._fingerprint

    @property
    def providers(self) -> list[str]:
        """Where embedding runs, e.g. ['CUDAExecutionProvider', ...] or ['torch:cpu']."""
        return list(self.embedder.providers)

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """Decision threshold calibrated on the model's dev pairs ("best_accuracy" or "far_1e-2")."""
        return self.metadata.threshold(operating_point)

    def analyze(self, images: Sequence[ImageInput], names: Sequence[str] | None = None,
                face_policy: str | None = None) -> list[FaceEmbedding | FaceVerifyError]:
        """Per image, its chosen face and embedding, or the `FaceVerifyError` explaining why not."""
        return list(self.analyze_stream(images, names, face_policy))

    def analyze_stream(self, images: Iterable[ImageInput], names: Iterable[str] | None = None,
                       face_policy: str | None = None, workers: int = 2
                       ) -> Iterator[FaceEmbedding | FaceVerifyError]:
        """`analyze` for inputs of any length, one result per image in input order: decoding runs
        ahead in `workers` threads, the next batch is detected while this one is embedded
        (`pipeline`), so memory stays bounded on folders of any size."""
        images = list(images)  # paths or images already in memory: references only
        names = list(names) if names is not None else [_describe(img, i) for i, img in enumerate(images)]
        batches = aligned_batches(images, names, self.detector, face_policy or self.face_policy, workers,
                                  self.templates)
        for results in run_ahead(batches):
            aligned = [i for i, r in enumerate(results) if isinstance(r, AlignedFace)]
            for i, face in zip(aligned, self.embed_faces([results[i] for i in aligned])):
                results[i] = face
            yield from results

    def all_faces(self, image: ImageInput) -> list[FaceEmbedding]:
        """Every face in one photo, largest first, each aligned and embedded (to let a user pick)."""
        (found,) = detect_faces([image], self.detector)
        if isinstance(found, FaceVerifyError):
            raise found
        return self.embed_faces(align_all(found, self.templates))

    def embed_faces(self, faces: Sequence[AlignedFace]) -> list[FaceEmbedding]:
        """The aligned faces, each now carrying its embedding."""
        if not faces:
            return []
        embeddings, norms = self.features(*(np.stack(crops) for crops in zip(*(f.crops for f in faces))))
        norms = norms if norms is not None else [()] * len(faces)
        return [FaceEmbedding(f.face, f.crops, f.faces_found, e, self.quality_of(f, n))
                for f, e, n in zip(faces, embeddings, norms)]

    def quality_of(self, face: AlignedFace, feature_norms=()) -> FaceQuality:
        """The face's quality measures, scored by the model's quality model when it has one."""
        quality = measure(face.face, face.crop, feature_norms)
        return self.quality_model.apply(quality) if self.quality_model else quality

    def embed_aligned(self, *crops: np.ndarray) -> np.ndarray:
        """Embeddings of aligned uint8 crops, one (N, size, size, 3) array per template of the
        model, with flip averaging if enabled."""
        return self.features(*crops)[0]

    def features(self, *crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(`embed_aligned`'s embeddings, the members' feature norms of the unflipped crops or
        None): what `quality_of` reads besides the face."""
        features = getattr(self.embedder, "features", None)
        embeddings, norms = features(*crops) if features else (self.embedder(*crops), None)
        if self.flip:
            embeddings = embeddings + self.embedder(*(np.ascontiguousarray(c[:, :, ::-1]) for c in crops))
            embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        return embeddings, norms

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(N, dim) embeddings; raises the first image's error if any image has no usable face."""
        results = self.analyze(images)
        for result in results:
            if isinstance(result, FaceVerifyError):
                raise result
        return np.stack([r.embedding for r in results])

    def verify(self, a: ImageInput, b: ImageInput, threshold: float | None = None,
               face_policy: str | None = None) -> VerificationResult:
        """Are the faces in `a` and `b` the same person? (`face_policy`: this call's, if not the verifier's)"""
        first, second = self.analyze([a, b], face_policy=face_policy)
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


def load_embedder(model: str | Path, device: str | None = None) -> FaceEmbedder:
    """Torch embedder for a checkpoint, ONNX runtime embedder for an .onnx file."""
    model = Path(model)
    if model.suffix == ".onnx":
        from .runtime import OnnxEmbedder

        return OnnxEmbedder(model, providers=None)
    from .embed import TorchEmbedder

    return TorchEmbedder.from_checkpoint(model, device)


def _onnx_providers(embedder) -> list[str] | None:
    """The onnxruntime providers the embedder runs on, for the ONNX detectors (None: the default)."""
    return list(embedder.providers) if embedder.torch_free else None


def _describe(image, index: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image {index + 1}"
