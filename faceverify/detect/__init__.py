"""Face detection: a `Detector` protocol, the MTCNN backends and the face-selection policy."""
from .base import (DETECTION_MAX_SIDE, POLICIES, Detector, Face, pad_for_detection, select_face,
                   shift_face)

__all__ = ["DETECTION_MAX_SIDE", "POLICIES", "Detector", "Face", "pad_for_detection", "select_face",
           "shift_face", "TorchMTCNN", "OnnxMTCNN"]


def __getattr__(name):  # backends are imported on demand: the ONNX one must not pull in torch
    if name == "TorchMTCNN":
        from .mtcnn_torch import TorchMTCNN
        return TorchMTCNN
    if name == "OnnxMTCNN":
        from .mtcnn_onnx import OnnxMTCNN
        return OnnxMTCNN
    raise AttributeError(name)
