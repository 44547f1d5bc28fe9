"""Torch embedding backend: aligned uint8 crops in, L2-normalised float32 embeddings out.

`runtime.OnnxEmbedder` meets the same `interfaces.FaceEmbedder` contract without torch; `Verifier`
takes either.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .metadata import ModelMetadata
from .models import build_metadata, load_checkpoint
from .runtime import check_crops


class TorchEmbedder:
    """A `models.Embedder` or `models.Ensemble` on CPU or CUDA, called on uint8 RGB crops, one
    (N, size, size, 3) array per template (`interfaces.FaceEmbedder`). `metadata` is the
    checkpoint's; a network being trained has none."""

    torch_free = False

    def __init__(self, model: torch.nn.Module, metadata: ModelMetadata | None = None, device: str = "cpu",
                 batch_size: int = 64):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.metadata = metadata or build_metadata(model, hashed=False)
        self.providers = [f"torch:{device}"]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, batch_size: int = 64):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, metadata = load_checkpoint(path, device)
        return cls(model, metadata, device, batch_size)

    def __call__(self, *crops: np.ndarray) -> np.ndarray:
        return self.features(*crops)[0]

    @torch.inference_mode()
    def features(self, *crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(embeddings, each member's raw feature norm (N, members), or None for a network that
        has no such output)."""
        check_crops(crops, self.metadata.templates)
        count = len(crops[0])
        out = np.empty((count, self.metadata.embedding_dim), dtype=np.float32)
        norms = []
        for start in range(0, count, self.batch_size):
            batches = [torch.from_numpy(np.ascontiguousarray(c[start:start + self.batch_size]))
                       .to(self.device).permute(0, 3, 1, 2) for c in crops]
            if hasattr(self.model, "features"):
                embeddings, batch_norms = self.model.features(*batches)
                norms.append(batch_norms.float().cpu().numpy())
            else:
                embeddings = self.model(*batches)
            out[start:start + len(batches[0])] = embeddings.float().cpu().numpy()
        return out, (np.concatenate(norms) if norms else None)
