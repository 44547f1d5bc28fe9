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

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 RGB aligned crops → (N, dim) float32 L2-normalised embeddings."""
