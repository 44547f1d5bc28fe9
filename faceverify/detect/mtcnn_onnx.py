"""MTCNN on onnxruntime: the P/R/O-net stages exported from facenet-pytorch's weights, with the
pyramid, box regression and NMS re-implemented in numpy so that detection needs no torch.

It follows facenet-pytorch's `detect_face` step for step (same pyramid, area resampling, same
NMS variants), so boxes and landmarks agree with the torch detector to within a pixel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..bundled import weights_dir
from .base import (DETECTION_MAX_SIDE, Face, Shards, checked_max_side, faces_from_arrays, min_face_size,
                   shrink_for_detection)

MIN_FACE_SCORE = 0.9
_NORM_SHIFT, _NORM_SCALE = 127.5, 0.0078125


class OnnxMTCNN:
    """Torch-free MTCNN with the same interface and defaults as `TorchMTCNN`.

    `workers`: a call's images are split into this many shards detected concurrently (`Shards`).
    Default: 2 on the CPU, 1 on a GPU, where one large batch is best. `threads`: onnxruntime threads per network (0: one per core; a
    cluster worker that owns one core sets 1)."""

    name = "mtcnn"

    def __init__(self, model_dir: str | Path | None = None, providers: list[str] | None = None,
                 min_face_size: int = 20, min_face_fraction: float = 0.0, max_side: int = DETECTION_MAX_SIDE,
                 min_score: float = MIN_FACE_SCORE, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709,
                 workers: int | None = None, threads: int = 0):
        from ..runtime import create_session

        model_dir = Path(model_dir) if model_dir is not None else weights_dir() / "mtcnn"
        self.pnet, self.rnet, self.onet = (create_session(model_dir / f"{n}.onnx", providers, threads)
                                           for n in ("pnet", "rnet", "onet"))
        self.min_face_size, self.min_face_fraction = min_face_size, min_face_fraction
        self.max_side = checked_max_side(max_side)
        self.min_score, self.thresholds, self.factor = min_score, thresholds, factor
        if workers is None:
            workers = 2 if self.pnet.get_providers()[0] == "CPUExecutionProvider" else 1
        self.workers, self._shards = workers, Shards(workers, "mtcnn")

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of every image (see `detect_batch`), the call's images split over the workers."""
        return self._shards.map(self.detect_batch, images)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of every image, all images through each stage together: P-net over each pyramid
        level of all equal-size images at once, R- and O-net over every candidate of every image."""
        if not len(images):
            return []
        shrunk = [shrink_for_detection(_as_uint8(image), self.max_side) for image in images]
        groups = _summed_by_shape([image for image, _ in shrunk])
        tables = [None] * len(images)  # each image's summed-area table, a view into its group's
        for members, group_tables in groups:
            for i, table in zip(members, group_tables):
                tables[i] = table
        boxes = self._proposals(groups, len(images))
        boxes = self._refine(tables, boxes)
        found = self._output(tables, boxes)
        return [faces_from_arrays(b[:, :4], b[:, 4], points, scale, self.min_score)
                for (b, points), (_, scale) in zip(found, shrunk)]

    def detect_whole(self, images: Sequence[np.ndarray], min_score: float | None = None) -> list[list[Face]]:
        """Each whole image as O-Net's candidate box (see `whole_image_faces`)."""
        return whole_image_faces(images, self.onet, self.max_side, min_score)

    def _scales(self, h: int, w: int) -> list[float]:
        """The image pyramid: from 12 / smallest face size down by `factor` while ≥ 12 pixels."""
        m = 12.0 / min_face_size((h, w), self.min_face_size, self.min_face_fraction)
        scales, minl = [], min(h, w) * m
        while minl >= 12:
            scales.append(m * self.factor ** len(scales))
            minl *= self.factor
        return scales

    def _proposals(self, groups: list[tuple[list[int], np.ndarray]], count: int) -> list[np.ndarray]:
        """Stage 1, P-net over the pyramid: per image, squared candidate boxes (x1, y1, x2, y2, score)."""
        candidates: list[list[np.ndarray]] = [[] for _ in range(count)]
        for members, tables in groups:
            h, w = tables.shape[1] - 1, tables.shape[2] - 1
            for scale in self._scales(h, w):
                size = (int(h * scale + 1), int(w * scale + 1))
                step = max(1, PNET_BATCH_PIXELS // (size[0] * size[1]))
                for start in range(0, len(members), step):
                    resized = resize_tables(tables[start:start + step], *size)
                    reg, prob = self.pnet.run(None, {"image": _to_input(resized)})
                    for row, i in enumerate(members[start:start + step]):
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

    def _refine(self, tables: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Stage 2, R-net over every image's candidates in one batch: kept, regressed, squared."""
        kept, outputs = _run_on_crops(self.rnet, tables, boxes, 24, RNET_BATCH)
        out = []
        for b, (reg, prob) in zip(kept, outputs):
            keep = prob[:, 1] > self.thresholds[1]
            b = np.column_stack([b[keep, :4], prob[keep, 1]])
            pick = nms(b[:, :4], b[:, 4], 0.7)
            out.append(_square(_regress(b[pick], reg[keep][pick])))
        return out

    def _output(self, tables: list[np.ndarray], boxes: list[np.ndarray]):
        """Stage 3, O-net over every image's boxes in one batch: scores, boxes and landmarks."""
        kept, outputs = _run_on_crops(self.onet, tables, boxes, 48, ONET_BATCH)
        out = []
        for b, (reg, marks, prob) in zip(kept, outputs):
            keep = prob[:, 1] > self.thresholds[2]
            b = np.column_stack([b[keep, :4], prob[keep, 1]])
            reg, points = reg[keep], _landmarks(b, marks[keep])
            b = _regress(b, reg)
            pick = nms(b[:, :4], b[:, 4], 0.7, mode="min")
            out.append((b[pick].astype(np.float32), points[pick].astype(np.float32)))
        return out


#: O-Net's probability a whole photo must reach to be taken as one face (its stage-3 threshold)
WHOLE_IMAGE_MIN_SCORE = 0.7


def whole_image_faces(images: Sequence[np.ndarray], onet, max_side: int = DETECTION_MAX_SIDE,
                      min_score: float | None = None) -> list[list[Face]]:
    """O-Net alone, the whole image as the candidate box: the face of a photo cut tight around it
    (brows to chin), where P-net's proposals find nothing. Per image, that face (`whole_image`
    true) when O-Net's probability reaches `min_score` (default `WHOLE_IMAGE_MIN_SCORE`), else none. `onet`: the
    onnxruntime session, or a function mapping a (N, 3, 48, 48) float32 batch to (box regression,
    landmarks, probabilities), as torch's O-Net does."""
    if not len(images):
        return []
    min_score = WHOLE_IMAGE_MIN_SCORE if min_score is None else min_score
    shrunk = [shrink_for_detection(_as_uint8(image), max_side) for image in images]
    tables = [summed_area_tables(image[None])[0] for image, _ in shrunk]
    boxes = [np.array([[1, 1, image.shape[1], image.shape[0], 1]], np.float32) for image, _ in shrunk]
    kept, outputs = _run_on_crops(onet, tables, boxes, 48, ONET_BATCH)
    out = []
    for b, (reg, marks, prob), (_, scale) in zip(kept, outputs, shrunk):
        if not len(b) or prob[0, 1] < min_score:
            out.append([])
            continue
        box = _regress(b, reg)[0, :4]
        out.append([Face(box * scale, float(prob[0, 1]), _landmarks(b, marks)[0] * scale, whole_image=True)])
    return out


def _landmarks(boxes: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """O-Net's landmark outputs (fractions of each box) in image pixels, (N, 5, 2)."""
    bw = boxes[:, 2] - boxes[:, 0] + 1
    bh = boxes[:, 3] - boxes[:, 1] + 1
    return np.stack([bw[:, None] * marks[:, :5] + boxes[:, 0:1] - 1,
                     bh[:, None] * marks[:, 5:10] + boxes[:, 1:2] - 1], axis=2)


#: Network inputs per onnxruntime run. Batches beyond these run slower a face on a CPU (their
#: activations spill out of cache): P-net input pixels (equal-size images of one pyramid level go
#: through together), R-net crops, O-net crops.
PNET_BATCH_PIXELS, RNET_BATCH, ONET_BATCH = 1 << 18, 64, 16


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """Pixels as uint8 (floats on the 0..255 scale rounded, as torch's MTCNN reads them): the
    summed-area tables add integers."""
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _summed_by_shape(images: list[np.ndarray]) -> list[tuple[list[int], np.ndarray]]:
    """Images grouped by shape: (their indices, their stacked summed-area tables) per group."""
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    return [(members, summed_area_tables(np.stack([images[i] for i in members])))
            for members in by_shape.values()]


def _run_on_crops(session, tables: list[np.ndarray], boxes: list[np.ndarray], size: int, batch: int):
    """Run an R-/O-net (an onnxruntime session, or a function of the input batch) on the
    size×size crops of every image's boxes together; returns per image (the boxes that clipped to
    something, the network's outputs for them)."""
    run = session if callable(session) else (lambda x: session.run(None, {"image": x}))
    kept, crops = [], []
    for table, b in zip(tables, boxes):
        image_crops, b = _crop_boxes(table, b, size)
        kept.append(b)
        crops.append(image_crops)
    crops = np.concatenate(crops)
    if len(crops):
        runs = [run(crops[i:i + batch]) for i in range(0, len(crops), batch)]
        outputs = [np.concatenate(parts) for parts in zip(*runs)]
    else:  # nothing to run: empty outputs of the right widths
        outputs = [np.zeros((0, out.shape[1]), np.float32) for out in session.get_outputs()]
    bounds = np.cumsum([0] + [len(b) for b in kept])
    return kept, [[out[a:z] for out in outputs] for a, z in zip(bounds[:-1], bounds[1:])]


def summed_area_tables(images: np.ndarray) -> np.ndarray:
    """Summed-area tables of a BxHxWxC uint8 batch, (B, H+1, W+1, C) with a zero first row and
    column. Any window's pixel sum is then four lookups, in exact integers, so every pyramid level
    and every R-/O-net crop of an image is resampled from one table instead of from the pixels."""
    b, h, w, c = images.shape
    dtype = np.int32 if 255 * h * w < 2 ** 31 else np.int64
    tables = np.zeros((b, h + 1, w + 1, c), dtype)
    np.cumsum(images, axis=1, dtype=dtype, out=tables[:, 1:, 1:])
    np.cumsum(tables[:, 1:, 1:], axis=2, out=tables[:, 1:, 1:])
    return tables


def area_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area (adaptive average) resampling of an HxWxC uint8 image, or a BxHxWxC batch, exactly as
    torch's `interpolate(mode="area")`, which facenet-pytorch uses: output pixel i averages input
    pixels [floor(i·in/out), ceil((i+1)·in/out)). OpenCV's INTER_AREA weights fractional pixels
    instead, which shifts P-net's candidates enough to move some boxes by pixels."""
    if img.ndim == 3:
        return area_resize(img[None], out_h, out_w)[0]
    return resize_tables(summed_area_tables(img), out_h, out_w)


def resize_tables(tables: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """`area_resize` of whole images from their summed-area tables (one pyramid level)."""
    r0, r1 = _window_bounds(0, tables.shape[1] - 1, out_h)
    c0, c1 = _window_bounds(0, tables.shape[2] - 1, out_w)
    rows = tables.take(r1, axis=1) - tables.take(r0, axis=1)  # (B, out_h, W+1, C): row-band sums
    sums = rows.take(c1, axis=2) - rows.take(c0, axis=2)
    # divided by the window's height, then its width, in float32: torch's order, bit for bit
    return sums.astype(np.float32) / (r1 - r0).astype(np.float32)[:, None, None] / (c1 - c0).astype(np.float32)[None, :, None]


def crop_tables(table: np.ndarray, top: np.ndarray, left: np.ndarray, height: np.ndarray,
                width: np.ndarray, size: int) -> np.ndarray:
    """`area_resize` to size×size of many windows of one image at once, from its summed-area table:
    window k is rows [top, top + height) and columns [left, left + width); returns (K, size, size, C)."""
    r0, r1 = _window_bounds(top, height, size)
    c0, c1 = _window_bounds(left, width, size)
    heights, widths = (r1 - r0).astype(np.float32)[:, :, None, None], (c1 - c0).astype(np.float32)[:, None, :, None]
    stride = table.shape[1]  # gather from the flattened table: much faster than 3-d fancy indexing
    r0, r1, c0, c1 = (r0 * stride)[:, :, None], (r1 * stride)[:, :, None], c0[:, None, :], c1[:, None, :]
    flat = table.reshape(-1, table.shape[2])
    sums = (flat.take(r1 + c1, axis=0) - flat.take(r0 + c1, axis=0)
            - flat.take(r1 + c0, axis=0) + flat.take(r0 + c0, axis=0))
    return sums.astype(np.float32) / heights / widths


def _window_bounds(start, length, size: int):
    """The [lo, hi) input ranges that area resampling averages for each of `size` outputs, of one
    window (scalar start and length: two (size,) arrays) or of K (arrays: two (K, size) arrays)."""
    start, length, i = np.asarray(start)[..., None], np.asarray(length)[..., None], np.arange(size)
    return start + (i * length) // size, start - ((-(i + 1) * length) // size)


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
    """Greedy non-maximum suppression, indices kept, best first. "union": IoU as torchvision
    computes it (no +1), run by OpenCV's C++ NMS (same boxes, equal scores taken in index order;
    it drops boxes scoring 0, which MTCNN never passes: each stage keeps scores above a threshold);
    "min": overlap over the smaller box, with MTCNN's +1 pixel areas, boxes taken from the end of
    numpy's default argsort as facenet-pytorch's numpy NMS takes them: O-net's scores saturate, so
    equal scores are common and their order picks between boxes pixels apart. (facenet-pytorch sorts
    a whole batch's boxes at once and numpy's sort is unstable, so equal scores are ordered alike
    for sure only for one image's boxes, up to 16 of them; on 310 LFW photos detected 32 at a time
    the boxes still agree to 1e-4 px.)"""
    if not len(boxes):
        return np.zeros(0, np.int64)
    if mode == "union":
        import cv2

        xywh = np.column_stack([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2]]).astype(np.float64)
        return np.asarray(cv2.dnn.NMSBoxes(xywh, scores.astype(np.float32), 0.0, threshold), np.int64).reshape(-1)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        order = rest[iw * ih / np.minimum(area[i], area[rest]) <= threshold]
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


def _crop_boxes(table: np.ndarray, boxes: np.ndarray, size: int):
    """Crops of the (clipped) boxes resized to size×size from the image's summed-area table, as a
    network batch; boxes that clip to nothing are dropped."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    ints = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(ints[:, 0], 1)
    y = np.maximum(ints[:, 1], 1)
    ex = np.minimum(ints[:, 2], w)
    ey = np.minimum(ints[:, 3], h)
    valid = (ey > y - 1) & (ex > x - 1)
    x, y, ex, ey = x[valid], y[valid], ex[valid], ey[valid]
    crops = crop_tables(table, y - 1, x - 1, ey - y + 1, ex - x + 1, size)
    return _to_input(crops), boxes[valid]
