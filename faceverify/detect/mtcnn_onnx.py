"""MTCNN on onnxruntime: the P/R/O-net stages exported from facenet-pytorch's weights, with the
pyramid, box regression and NMS re-implemented in numpy so that detection needs no torch.

It follows facenet-pytorch's `detect_face` step for step (same pyramid, area resampling, same
NMS variants), so boxes and landmarks agree with the torch detector to within a pixel.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ..bundled import weights_dir
from .base import Face, faces_from_arrays, min_face_size, shrink_for_detection

MIN_FACE_SCORE = 0.9
_NORM_SHIFT, _NORM_SCALE = 127.5, 0.0078125


class OnnxMTCNN:
    """Torch-free MTCNN with the same interface and defaults as `TorchMTCNN`."""

    def __init__(self, model_dir: str | Path | None = None, providers: list[str] | None = None,
                 min_face_size: int = 20, min_face_fraction: float = 0.0,
                 min_score: float = MIN_FACE_SCORE, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709):
        from ..runtime import create_session

        model_dir = Path(model_dir) if model_dir is not None else weights_dir() / "mtcnn"
        self.pnet, self.rnet, self.onet = (create_session(model_dir / f"{n}.onnx", providers)
                                           for n in ("pnet", "rnet", "onet"))
        self.min_face_size, self.min_face_fraction = min_face_size, min_face_fraction
        self.min_score, self.thresholds, self.factor = min_score, thresholds, factor

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of every image, all images through each stage together: P-net over each pyramid
        level of all equal-size images at once, R- and O-net over every candidate of every image."""
        # the resampling matrices are small: multithreaded BLAS only spins (and starves onnxruntime)
        with threadpool_limits(1, user_api="blas"):
            shrunk = [shrink_for_detection(image) for image in images]
            small = [image for image, _ in shrunk]
            boxes = self._proposals(small)
            boxes = self._refine(small, boxes)
            found = self._output(small, boxes)
        return [faces_from_arrays(b[:, :4], b[:, 4], points, scale, self.min_score)
                for (b, points), (_, scale) in zip(found, shrunk)]

    def _scales(self, h: int, w: int) -> list[float]:
        """The image pyramid: from 12 / smallest face size down by `factor` while ≥ 12 pixels."""
        m = 12.0 / min_face_size((h, w), self.min_face_size, self.min_face_fraction)
        scales, minl = [], min(h, w) * m
        while minl >= 12:
            scales.append(m * self.factor ** len(scales))
            minl *= self.factor
        return scales

    def _proposals(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Stage 1, P-net over the pyramid: per image, squared candidate boxes (x1, y1, x2, y2, score)."""
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        candidates: list[list[np.ndarray]] = [[] for _ in images]
        for (h, w, _), members in by_shape.items():
            for scale in self._scales(h, w):
                size = (int(h * scale + 1), int(w * scale + 1))
                for chunk in _chunks(members, max(1, PNET_BATCH_PIXELS // (size[0] * size[1]))):
                    resized = area_resize(np.stack([images[i] for i in chunk]), *size)
                    reg, prob = self.pnet.run(None, {"image": _to_input(resized)})
                    for row, i in enumerate(chunk):
                        boxes = _generate_boxes(reg[row], prob[row, 1], scale, self.thresholds[0])
                        candidates[i].append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        out = []
        for found in candidates:
            boxes = np.concatenate(found) if found else np.zeros((0, 9), np.float32)
            boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
            size = boxes[:, 2:4] - boxes[:, 0:2]
            out.append(_square(np.column_stack([boxes[:, 0:2] + boxes[:, 5:7] * size,
                                                boxes[:, 2:4] + boxes[:, 7:9] * size, boxes[:, 4]])))
        return out

    def _refine(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Stage 2, R-net over every image's candidates in one batch: kept, regressed, squared."""
        kept, outputs = _run_on_crops(self.rnet, images, boxes, 24)
        out = []
        for b, (reg, prob) in zip(kept, outputs):
            keep = prob[:, 1] > self.thresholds[1]
            b = np.column_stack([b[keep, :4], prob[keep, 1]])
            pick = nms(b[:, :4], b[:, 4], 0.7)
            out.append(_square(_regress(b[pick], reg[keep][pick])))
        return out

    def _output(self, images: list[np.ndarray], boxes: list[np.ndarray]):
        """Stage 3, O-net over every image's boxes in one batch: scores, boxes and landmarks."""
        kept, outputs = _run_on_crops(self.onet, images, boxes, 48)
        out = []
        for b, (reg, marks, prob) in zip(kept, outputs):
            keep = prob[:, 1] > self.thresholds[2]
            b = np.column_stack([b[keep, :4], prob[keep, 1]])
            reg, marks = reg[keep], marks[keep]
            bw = b[:, 2] - b[:, 0] + 1
            bh = b[:, 3] - b[:, 1] + 1
            points = np.stack([bw[:, None] * marks[:, :5] + b[:, 0:1] - 1,
                               bh[:, None] * marks[:, 5:10] + b[:, 1:2] - 1], axis=2)
            b = _regress(b, reg)
            pick = nms(b[:, :4], b[:, 4], 0.7, mode="min")
            out.append((b[pick].astype(np.float32), points[pick].astype(np.float32)))
        return out


#: P-net input pixels per run (equal-size images of one pyramid level go through together)
PNET_BATCH_PIXELS = 1 << 21
#: R-/O-net crops per run
CROP_BATCH = 512


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _run_on_crops(session, images: list[np.ndarray], boxes: list[np.ndarray], size: int):
    """Run an R-/O-net on the size×size crops of every image's boxes together; returns per image
    (the boxes that clipped to something, the network's outputs for them)."""
    kept, crops = [], []
    for image, b in zip(images, boxes):
        image_crops, b = _crop_boxes(image, b, size)
        kept.append(b)
        crops.append(image_crops)
    crops = np.concatenate(crops)
    if len(crops):
        runs = [session.run(None, {"image": crops[i:i + CROP_BATCH]}) for i in range(0, len(crops), CROP_BATCH)]
        outputs = [np.concatenate(parts) for parts in zip(*runs)]
    else:  # nothing to run: empty outputs of the right widths
        outputs = [np.zeros((0, out.shape[1]), np.float32) for out in session.get_outputs()]
    bounds = np.cumsum([0] + [len(b) for b in kept])
    return kept, [[out[a:z] for out in outputs] for a, z in zip(bounds[:-1], bounds[1:])]


def area_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area (adaptive average) resampling of an HxWxC image, or a BxHxWxC batch, exactly as torch's
    `interpolate(mode="area")`, which facenet-pytorch uses: output pixel i averages input pixels
    [floor(i·in/out), ceil((i+1)·in/out)). OpenCV's INTER_AREA weights fractional pixels instead,
    which shifts P-net's candidates enough to move some boxes by pixels."""
    if img.ndim == 3:
        return area_resize(img[None], out_h, out_w)[0]
    b, h, w, c = img.shape
    rows = _area_matrix(h, out_h) @ img.reshape(b, h, w * c).astype(np.float32)  # (b, out_h, w·c)
    cols = _area_matrix(w, out_w) @ rows.reshape(b, out_h, w, c).transpose(0, 2, 1, 3).reshape(b, w, out_h * c)
    return cols.reshape(b, out_w, out_h, c).transpose(0, 2, 1, 3)


@lru_cache(maxsize=4096)
def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
    i = np.arange(size_out)
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)
    j = np.arange(size_in)
    mask = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return (mask / (end - start)[:, None]).astype(np.float32)


def _to_input(batch_hwc: np.ndarray) -> np.ndarray:
    return ((batch_hwc - _NORM_SHIFT) * _NORM_SCALE).transpose(0, 3, 1, 2).astype(np.float32)


def _generate_boxes(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """P-net cells above threshold → rows (x1, y1, x2, y2, score, 4 regression offsets)."""
    ys, xs = np.nonzero(prob >= threshold)
    cells = np.column_stack([xs, ys]).astype(np.float32)
    q1 = np.floor((2 * cells + 1) / scale)
    q2 = np.floor((2 * cells + 12) / scale)
    return np.column_stack([q1, q2, prob[ys, xs], reg[:, ys, xs].T]).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. "union": IoU as torchvision computes it (no +1);
    "min": overlap over the smaller box, with MTCNN's +1 pixel areas."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    plus = 1.0 if mode == "min" else 0.0
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = iw * ih
        overlap = inter / (np.minimum(area[i], area[rest]) if mode == "min"
                           else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (MTCNN's `rerec`)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += reg[:, :4] * np.column_stack([w, h, w, h])
    return boxes


def _crop_boxes(img: np.ndarray, boxes: np.ndarray, size: int):
    """Crops of the (clipped) boxes resized to size×size, as a network batch; boxes that clip to
    nothing are dropped."""
    h, w = img.shape[:2]
    ints = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(ints[:, 0], 1)
    y = np.maximum(ints[:, 1], 1)
    ex = np.minimum(ints[:, 2], w)
    ey = np.minimum(ints[:, 3], h)
    valid = (ey > y - 1) & (ex > x - 1)
    crops = [area_resize(img[y[k] - 1:ey[k], x[k] - 1:ex[k]], size, size) for k in np.flatnonzero(valid)]
    if not crops:
        return np.zeros((0, 3, size, size), np.float32), boxes[:0]
    return _to_input(np.stack(crops)), boxes[valid]
