"""Face detection: a `Detector` protocol, the MTCNN backends and the face-selection policy."""
from .base import (DETECTION_MAX_SIDE, POLICIES, Detector, Face, pad_for_detection, select_face,
                   shift_face)

__all__ = ["DETECTION_MAX_SIDE", "POLICIES", "Detector", "Face", "pad_for_detection", "select_face",
           "shift_face", "TorchMTCNN"]


def __getattr__(name):  # torch is imported only when the torch backend is asked for
    if name == "TorchMTCNN":
        from .mtcnn_torch import TorchMTCNN
        return TorchMTCNN
    raise AttributeError(name)
