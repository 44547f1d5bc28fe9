"""Face detection: a `Detector` protocol, the MTCNN backends, the face-selection policy, and
detect → select → align as one step (`detect_and_align`)."""
from .aligned import AlignedFace, DetectedImage, align_all, detect_and_align, detect_faces
from .base import (DETECTION_MAX_SIDE, POLICIES, Detector, Face, pad_for_detection, select_face,
                   shift_face)

__all__ = ["DETECTION_MAX_SIDE", "POLICIES", "AlignedFace", "DetectedImage", "Detector", "Face",
           "align_all", "detect_and_align", "detect_faces", "pad_for_detection", "select_face",
           "shift_face", "TorchMTCNN", "OnnxMTCNN"]


def __getattr__(name):  # backends are imported on demand: the ONNX one must not pull in torch
    if name == "TorchMTCNN":
        from .mtcnn_torch import TorchMTCNN
        return TorchMTCNN
    if name == "OnnxMTCNN":
        from .mtcnn_onnx import OnnxMTCNN
        return OnnxMTCNN
    raise AttributeError(name)
