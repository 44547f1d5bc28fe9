"""Checkpoints that carry their own metadata, loaded with `torch.load(weights_only=True)`.

A file is `{"metadata": <JSON text>, "state_dict": {name: tensor}}`; the metadata
(`metadata.ModelMetadata`) is everything inference needs besides the weights: arch, embedding dim,
input format, alignment template(s), calibrated thresholds and a hash that identifies the weights.
Two layouts: this project's own ResNet (`Embedder`), and an ensemble of pretrained members
(`metadata.members` non-empty; `ensemble.stored_state` says how each member is stored).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..align import ARCFACE_112
from ..errors import ModelError
from ..metadata import ModelMetadata
from .embedder import INPUT_FORMAT, Embedder
from .ensemble import (ENSEMBLE_ARCH, Ensemble, MemberSpec, ensemble_from_state, float_tensors,
                       stored_state, stored_tensors)

def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def weights_sha256(state_dict: dict) -> str:
    """Hash of the tensors (names, dtypes, shapes, bytes), independent of the file it is saved in."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_metadata(model: Embedder | Ensemble, thresholds: dict | None = None,
                   training: dict | None = None, state_dict: dict | None = None,
                   hashed: bool = True) -> ModelMetadata:
    """Metadata for `model`; the hash is of `state_dict` (the stored weights) when given.
    `hashed=False` leaves the hash empty: what a network being trained says about itself (its
    arch, templates), without hashing every weight at each evaluation."""
    if isinstance(model, Ensemble):
        return ModelMetadata(
            arch=ENSEMBLE_ARCH, embedding_dim=model.embedding_dim,
            weights_sha256=weights_sha256(state_dict if state_dict is not None else stored_state(model))
            if hashed else "",
            input_format={"color": "RGB", "layout": "NHWC", "range": [0, 255], "per_template": True},
            members=[s.to_dict() for s in model.specs],
            thresholds=thresholds or {}, training=training or {})
    return ModelMetadata(
        arch=model.arch, embedding_dim=model.embedding_dim,
        weights_sha256=weights_sha256(state_dict if state_dict is not None else model.state_dict())
        if hashed else "",
        input_format=INPUT_FORMAT, template=ARCFACE_112.to_dict(),
        thresholds=thresholds or {}, training=training or {})


def save_checkpoint(path: str | Path, model: Embedder | Ensemble, thresholds: dict | None = None,
                    training: dict | None = None, half: bool = False, flip: bool = False) -> ModelMetadata:
    """Write model + metadata atomically (temp file + rename); `half` stores fp16 weights."""
    state = stored_state(model, half) if isinstance(model, Ensemble) else stored_tensors(model.state_dict(), half)
    metadata = build_metadata(model, thresholds, training, state)
    metadata.weights_dtype = "float16" if half else "float32"
    metadata.flip = flip
    atomic_save({"metadata": metadata.to_json(), "state_dict": state}, path)
    return metadata


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[Embedder | Ensemble, ModelMetadata]:
    """(model in eval mode, metadata); raises `ModelError` on a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        text, state = blob["metadata"], blob["state_dict"]
    except Exception as exc:  # unpickling errors come in many classes
        raise ModelError(f"{path}: not a faceverify checkpoint ({exc.__class__.__name__})") from None
    metadata = ModelMetadata.from_json(text, str(path))
    try:
        if metadata.members:
            model = ensemble_from_state([MemberSpec.from_dict(m) for m in metadata.members], state)
        else:
            model = Embedder(metadata.arch, metadata.embedding_dim)
            model.load_state_dict(float_tensors(state))
    except (KeyError, RuntimeError, ValueError) as exc:  # metadata and tensors that do not fit
        raise ModelError(f"{path}: damaged or inconsistent checkpoint ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval(), metadata


def set_thresholds(path: str | Path, thresholds: dict, flip: bool | None = None,
                   detector: dict | None = None) -> ModelMetadata:
    """Store calibrated decision thresholds in a checkpoint's metadata (rewritten atomically),
    whether they were calibrated on flip-averaged embeddings and with which detector's landmarks
    (`detect.registry.describe`; None for either: as the model says now)."""
    return update_metadata(path, lambda metadata: metadata.replace(
        thresholds=thresholds, flip=metadata.flip if flip is None else flip,
        detector=metadata.detector if detector is None else detector))


def update_metadata(path: str | Path, change) -> ModelMetadata:
    """Rewrite a checkpoint's metadata as `change(metadata)` returns it, atomically; the weights
    (and so their hash) stay as they are."""
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    metadata = change(ModelMetadata.from_json(blob["metadata"], str(path)))
    blob["metadata"] = metadata.to_json()
    atomic_save(blob, path)
    return metadata
