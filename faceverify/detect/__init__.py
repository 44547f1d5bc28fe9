"""Face detection: a `Detector` protocol, the detector family by name (`registry`: MTCNN,
RetinaFace, YuNet), the face-selection policy, and detect → select → align as one step
(`detect_and_align`)."""
from .base import (DETECTION_MAX_SIDE, POLICIES, AssumeCropped, Detector, Face, pad_for_detection,
                   select_face, shift_face)

__all__ = ["DETECTION_MAX_SIDE", "POLICIES", "AssumeCropped", "AlignedFace", "DetectedImage", "Detector", "Face",
           "align_all", "detect_and_align", "detect_faces", "pad_for_detection", "select_face",
           "shift_face", "TorchMTCNN", "OnnxMTCNN", "RetinaFace", "YuNet", "create_detector"]


_ALIGNED = ("AlignedFace", "DetectedImage", "align_all", "detect_and_align", "detect_faces")


def __getattr__(name):  # imported on demand: the ONNX backend must not pull in torch, the CLI's
    if name in _ALIGNED:  # start-up needs neither OpenCV nor a backend
        from . import aligned
        return getattr(aligned, name)
    if name == "TorchMTCNN":
        from .mtcnn_torch import TorchMTCNN
        return TorchMTCNN
    if name == "OnnxMTCNN":
        from .mtcnn_onnx import OnnxMTCNN
        return OnnxMTCNN
    if name == "RetinaFace":
        from .retinaface import RetinaFace
        return RetinaFace
    if name == "YuNet":
        from .yunet import YuNet
        return YuNet
    if name == "create_detector":
        from .registry import create_detector
        return create_detector
    raise AttributeError(name)
