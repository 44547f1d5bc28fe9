"""facenet-pytorch MTCNN behind the `Detector` interface (weights ship inside its wheel)."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from .base import (DETECTION_MAX_SIDE, Face, checked_max_side, faces_from_arrays, min_face_size,
                   shrink_for_detection)

#: Minimum final-stage confidence for a detection to count as a face.
MIN_FACE_SCORE = 0.9


class TorchMTCNN:
    """Batched MTCNN on CPU or CUDA; images of equal size share one forward pass."""

    name = "mtcnn"

    def __init__(self, device: str | None = None, min_face_size: int = 20,
                 min_face_fraction: float = 0.0, max_side: int = DETECTION_MAX_SIDE,
                 min_score: float = MIN_FACE_SCORE, thresholds=(0.6, 0.7, 0.7)):
        import torch
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.min_score = min_score
        self.min_face_size = min_face_size
        self.min_face_fraction = min_face_fraction  # of the short side: skips tiny pyramid levels
        self.max_side = checked_max_side(max_side)  # longer photos are detected on a shrunk copy
        self._mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds),
                            keep_all=True, device=self.device)

    def detect_whole(self, images: Sequence[np.ndarray], min_score: float | None = None) -> list[list[Face]]:
        """Each whole image as O-Net's candidate box (`mtcnn_onnx.whole_image_faces`)."""
        import torch

        from .mtcnn_onnx import whole_image_faces

        def onet(batch: np.ndarray):
            with torch.no_grad():
                return [t.cpu().numpy() for t in self._mtcnn.onet(torch.from_numpy(batch).to(self.device))]

        return whole_image_faces(images, onet, self.max_side, min_score)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        prepared = [shrink_for_detection(img, self.max_side) for img in images]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, (small, _) in enumerate(prepared):
            groups[small.shape].append(index)
        results: list[list[Face]] = [[] for _ in images]
        for indices in groups.values():
            batch = np.stack([prepared[i][0] for i in indices])
            self._mtcnn.min_face_size = min_face_size(batch.shape[1:3], self.min_face_size,
                                                      self.min_face_fraction)
            boxes, scores, points = self._mtcnn.detect(batch, landmarks=True)
            for j, i in enumerate(indices):
                results[i] = faces_from_arrays(boxes[j], scores[j], points[j], prepared[i][1],
                                               self.min_score)
        return results
