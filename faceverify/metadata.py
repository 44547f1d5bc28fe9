"""What a model file says about itself, read and written in one place.

A checkpoint (.pt) and its ONNX export carry the same metadata (JSON): everything inference needs
besides the weights — architecture, embedding size, input format, alignment template — plus the
calibrated decision thresholds, a hash that identifies the weights, and how they were trained.
Torch-free, so the ONNX runtime reads it too.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .align import ARCFACE_112, Template
from .errors import ModelError
from .policies import LEGACY_DETECTOR

FORMAT_VERSION = 1
#: threshold-table keys (the `thresholds` dict's layout)
BEST_ACCURACY, FAR_1E2, PAIRS_ROC, ALL_PAIRS_ROC = "best_accuracy", "far_1e-2", "roc", "roc_all_pairs"
TEMPLATE_ROC = "roc_templates"


@dataclass
class ModelMetadata:
    arch: str
    embedding_dim: int
    weights_sha256: str = ""  # of the stored tensors, independent of the file (empty: unsaved)
    input_format: dict = field(default_factory=dict)  # colour order, layout, range, mean, std
    template: dict = field(default_factory=dict)  # alignment template: name, size, five points
    #: best_accuracy / far_1e-2 ({"value", "pairs", ...}), roc (dev pairs: [threshold, FAR, TAR]),
    #: roc_all_pairs (all cross-identity pairs, down to FAR 1e-6; see `operating.py`)
    thresholds: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # data, objective, optimiser, steps, dev figures
    #: test-time flip: an embedding averages the face's and its mirror image's, as when the
    #: thresholds were calibrated (`Verifier` follows it unless told otherwise)
    flip: bool = False
    weights_dtype: str = "float32"
    onnx: dict | None = None  # opset and input dtype, in an exported file
    #: an ensemble's networks, each {name, arch, embedding_dim, template, weight, licence, source,
    #: source_sha256}: the embedding concatenates their unit embeddings scaled by √weight (`models.ensemble`)
    members: list = field(default_factory=list)
    #: the per-face quality model fitted for these embeddings (`quality.QualityModel.to_dict`), or None
    quality: dict | None = None
    #: the detector whose landmarks the thresholds and quality model were calibrated on
    #: ({name, weights_sha256, licences}, `detect.registry.describe`); None: MTCNN (older models)
    detector: dict | None = None
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, raw: dict, source: str = "model") -> "ModelMetadata":
        """Parse a model file's metadata; `ModelError` names `source` when it is not ours."""
        if not isinstance(raw, dict) or "embedding_dim" not in raw or "arch" not in raw:
            raise ModelError(f"{source}: not a faceverify embedding model (export one with `faceverify export`)")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{source}: checkpoint format {raw.get('format_version')} is not "
                             f"supported (expected {FORMAT_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in known})

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelMetadata":
        try:
            raw = json.loads(text)
        except (TypeError, ValueError):
            raise ModelError(f"{source}: unreadable model metadata") from None
        return cls.from_dict(raw, source)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for optional in ("onnx", "quality", "detector"):
            if out[optional] is None:
                del out[optional]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def replace(self, **changes) -> "ModelMetadata":
        return dataclasses.replace(self, **changes)

    @property
    def templates(self) -> tuple[Template, ...]:
        """The crops the model takes, in input order: one per distinct template of its members
        (a single network: its own template)."""
        raw = [m["template"] for m in self.members] if self.members else [self.template or ARCFACE_112.to_dict()]
        return tuple(dict.fromkeys(Template.from_dict(t) for t in raw))  # one instance per name

    @property
    def description(self) -> str:
        """One line for people: the network(s), their licences, weights and templates."""
        if not self.members:
            return f"{self.arch}, {self.embedding_dim}-d embeddings"
        parts = [f"{m['name']} ({m['licence'] or 'licence unknown'}; weight {m['weight']:.2f}; "
                 f"{m['template']['name']} alignment)" for m in self.members]
        return f"ensemble of {' + '.join(parts)}, {self.embedding_dim}-d embeddings"

    @property
    def detector_name(self) -> str:
        """The detector the model was calibrated with (`detect.registry` name)."""
        return self.detector["name"] if self.detector else LEGACY_DETECTOR

    @property
    def short_hash(self) -> str:
        return self.weights_sha256[:12]

    def threshold(self, operating_point: str = BEST_ACCURACY) -> float:
        """A calibrated pairs threshold ("best_accuracy" or "far_1e-2")."""
        try:
            return float(self.thresholds[operating_point]["value"])
        except (KeyError, TypeError):
            raise ModelError(f"the model has no calibrated {operating_point!r} threshold; "
                             "pass threshold=... explicitly") from None

    @property
    def pairs_roc(self) -> list | None:
        """[threshold, FAR, TAR] rows from the dev pairs, or None."""
        return self.thresholds.get(PAIRS_ROC)

    @property
    def all_pairs_roc(self) -> dict | None:
        """The all-pairs ROC table (`operating.roc_table`) with its source and pair counts, or None."""
        return self.thresholds.get(ALL_PAIRS_ROC)

    @property
    def gallery_roc(self) -> dict | None:
        """The ROC a gallery's threshold rule reads: of 2-photo templates against photos when
        calibrated (`TEMPLATE_ROC`), else of photo pairs (`ALL_PAIRS_ROC`), else None."""
        return self.thresholds.get(TEMPLATE_ROC) or self.all_pairs_roc

    @property
    def dev(self) -> dict:
        """Dev-pair figures recorded at training time ({accuracy, auc, eer}), or {}."""
        return self.training.get("dev", {})


def fingerprint(weights_sha256: str, detector_name: str = LEGACY_DETECTOR, detector_sha256: str = "") -> str:
    """What makes two embeddings comparable (galleries, embedding files, cluster parts): the
    model's weights and the detector whose landmarks aligned the faces, as
    `<weights sha256>+<detector>:<its weights' sha256, 16 digits>`; MTCNN's is the weights' sha256
    alone, as every gallery made before detectors were named records it."""
    if detector_name == LEGACY_DETECTOR:
        return weights_sha256
    return f"{weights_sha256}+{detector_name}:{detector_sha256[:16]}"


def describe_fingerprint(value: str) -> str:
    """A fingerprint for people: `9e1313730bcd (retinaface landmarks)`."""
    weights, _, detector = value.partition("+")
    return f"{weights[:12]} ({detector.split(':')[0] if detector else LEGACY_DETECTOR} landmarks)"
