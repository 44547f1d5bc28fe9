"""The contracts the pipeline's parts meet, beside `detect.Detector`: what `Verifier`, the gallery,
evaluation and training-time validation may rely on in an embedding backend."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .metadata import ModelMetadata


class FaceEmbedder(Protocol):
    """Aligned faces → embeddings: `embed.TorchEmbedder` and `runtime.OnnxEmbedder` implement it."""

    #: the model file's metadata (arch, embedding_dim, thresholds, weights_sha256, ...)
    metadata: ModelMetadata
    #: where it runs, e.g. ["CUDAExecutionProvider", ...] or ["torch:cpu"]
    providers: list[str]
    #: True when no torch is needed (the detector then runs on onnxruntime too)
    torch_free: bool

    def __call__(self, *crops: np.ndarray) -> np.ndarray:
        """Aligned uint8 RGB crops, one (N, size, size, 3) array per template of
        `metadata.templates` (in that order) → (N, dim) float32 L2-normalised embeddings."""
