"""The one face warp: five landmarks → similarity transform → fixed 112×112 template.

Training-data preparation, inference, the ONNX runtime and the gallery all call `align_face`, so a
model never sees a face aligned differently from the faces it was trained on.
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import InvalidImageError

#: Output size of every aligned crop (width = height).
ALIGNED_SIZE = 112
#: Name stored in model metadata so that a model and a template cannot be silently mixed.
TEMPLATE_NAME = "arcface-112"
#: Five-point template (left eye, right eye, nose tip, left / right mouth corner) in pixels of the
#: 112×112 crop; the layout used by ArcFace / InsightFace models.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float32)


def estimate_transform(landmarks: np.ndarray, template: np.ndarray = TEMPLATE) -> np.ndarray:
    """2×3 similarity (rotation, uniform scale, translation) mapping `landmarks` onto `template`."""
    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    if not np.isfinite(src).all():
        raise InvalidImageError("landmarks contain NaN or infinity")
    matrix, _ = cv2.estimateAffinePartial2D(src, template, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks (e.g. all identical)
        raise InvalidImageError("cannot align a face from degenerate landmarks")
    return matrix.astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp an RGB uint8 image so that its five `landmarks` land on the template; returns size×size×3."""
    template = TEMPLATE * (size / ALIGNED_SIZE)
    matrix = estimate_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
