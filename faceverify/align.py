"""The one face warp: five landmarks → similarity transform → the template a model was trained on.

Training-data preparation, inference, the ONNX runtime and the gallery all call `align_face` with
the template the model's metadata names, so a model never sees a face aligned differently from the
faces it was trained on. Templates are named values with their size: a model file stores the name,
size and points, and `Template.from_dict` refuses a name whose points differ from ours.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InvalidImageError, ModelError


@dataclass(frozen=True, eq=False)
class Template:
    """Where MTCNN's five landmarks (left eye, right eye, nose tip, left / right mouth corner) land
    in a `size`×`size` crop."""

    name: str
    size: int
    points: np.ndarray  # (5, 2) float32, pixels of the crop

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "points": self.points.tolist()}

    @classmethod
    def from_dict(cls, raw: dict) -> "Template":
        """The named template, checked against what a model file says about it."""
        try:
            template = TEMPLATES[raw["name"]]
        except (KeyError, TypeError):
            raise ModelError(f"unknown alignment template {raw!r}; known: {sorted(TEMPLATES)}") from None
        if "points" in raw and not np.allclose(raw["points"], template.points, atol=1e-3):
            raise ModelError(f"template {template.name!r}: the model's points differ from this version's")
        return template


#: The ArcFace / InsightFace layout (SFace, MobileFaceNet and this project's own ResNets).
ARCFACE_112 = Template("arcface-112", 112, np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float32))
#: dlib's face chip (150 px, padding 0.25) as dlib's ResNet was trained on, expressed in MTCNN's
#: five points: their mean position in dlib's own chips of 500 LFW train faces
#: (`training/fit_dlib_template.py` refits it).
DLIB_150 = Template("dlib-150", 150, np.array(
    [[48.03, 46.08], [102.08, 45.92], [74.58, 78.15], [51.04, 105.30], [98.91, 105.33]],
    dtype=np.float32))
TEMPLATES = {t.name: t for t in (ARCFACE_112, DLIB_150)}


def estimate_transform(landmarks: np.ndarray, points: np.ndarray) -> np.ndarray:
    """2×3 similarity (rotation, uniform scale, translation) mapping `landmarks` onto `points`."""
    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    if not np.isfinite(src).all():
        raise InvalidImageError("landmarks contain NaN or infinity")
    matrix, _ = cv2.estimateAffinePartial2D(src, np.asarray(points, np.float32), method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks (e.g. all identical)
        raise InvalidImageError("cannot align a face from degenerate landmarks")
    return matrix.astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, template: Template = ARCFACE_112) -> np.ndarray:
    """Warp an RGB uint8 image so that its five `landmarks` land on `template`; returns
    size×size×3."""
    matrix = estimate_transform(landmarks, template.points)
    return cv2.warpAffine(image, matrix, (template.size, template.size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
