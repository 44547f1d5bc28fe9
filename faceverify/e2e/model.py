"""The end-to-end model: one ONNX graph from a photo to its face's embedding.

Input `image`: (H, W, 3) uint8 RGB, any size; `face_policy`: (1,) int64, 0 the largest face, 1
the one nearest the centre. Inside: the photo resized for RetinaFace as the library resizes it
(`_preprocess`), RetinaFace, its decoding and its second pass for large faces (`detection`), the
face chosen (`_choose`), the similarity onto each member's template and the warp from the
full-resolution photo (`warp`), then the model's own ONNX embedder (members and fusion as
`export.ensemble_graph` built them). Outputs: `embedding` (D,), `box` (4,) x1 y1 x2 y2, `score`
(), `landmarks` (5, 2) in the photo's pixels, `faces_found` (1,) (with no face, 0 and a zero
embedding), `aligned` (S, S, 3) uint8, the face as the first member sees it (zeros without a
face), and `threshold` (), the model's calibrated threshold (best accuracy on the dev pairs), for
bindings that cannot read `metadata_props`, where the embedder's metadata (thresholds, templates,
members, licences) is copied.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..align import ARCFACE_112, Template
from ..detect.retinaface import MEAN_BGR, RetinaFace
from ..detect.single_pass import MIN_FACE_PX
from ..errors import ModelError
from ..onnx_graph import dequantize_as_arithmetic, half_storage, shared_initializers
from ..policies import DETECTION_MAX_SIDE
from ..runtime import METADATA_KEY
from .detection import detected_faces, resized, short_sides
from .warp import OPSET, Nodes, aligned_crop, inlined, photo_nodes

LARGEST, CENTRAL = 0, 1
#: how the weights are stored: as the embedder stores them (its fp16-trained member in fp16, its
#: int8 member in int8) and the detector in float32, or every float32 weight in float16 (computed
#: in float32 all the same: smaller, for the browser)
PRECISIONS = ("fp32", "fp16")


def _preprocess(g: Nodes, rgb: str, height: str, width: str) -> tuple[str, str, str]:
    """(RetinaFace's input for the (1, 3, H, W) float RGB photo, its (2,) int64 size, the factor
    from its pixels back to the photo's). The photo is resized as `SinglePassDetector._scaled`
    does: enlarged until its short side is RetinaFace's `min_input_side`, shrunk until its long side
    is at most `DETECTION_MAX_SIDE` (with antialiasing, as cv2's INTER_AREA averages)."""
    enlarge = g.op("Max", [g.op("Div", [g.const("min_side", np.float32(RetinaFace.min_input_side)),
                                        g.op("Min", [height, width], "shortest")], "to_min_side"),
                           g.const("one", np.float32(1.0))], "enlarge")
    scale = g.op("Min", [enlarge, g.op("Div", [g.const("max_side", np.float32(DETECTION_MAX_SIDE)),
                                               g.op("Max", [height, width], "longest")], "to_max_side")], "scale")
    sides = g.op("Concat", [g.op("Unsqueeze", [v, g.const(f"ax_{n}", np.array([0], np.int64))], f"{n}1")
                            for n, v in (("h", height), ("w", width))], "hw", axis=0)
    bgr = g.op("Gather", [rgb, g.const("bgr_order", np.array([2, 1, 0], np.int64))], "bgr", axis=1)
    resized_photo, sizes = resized(g, bgr, sides, scale)
    centred = g.op("Sub", [resized_photo, g.const("mean", MEAN_BGR.reshape(1, 3, 1, 1))], "centred")
    # the factor back is 1 / scale whatever the rounding of the size, as `resized_by` returns it
    return centred, sizes, g.op("Reciprocal", [scale], "to_photo")


def _choose(g: Nodes, boxes: str, scores: str, points: str, height: str, width: str) -> tuple[str, str, str, str]:
    """(box, score, landmarks of the face `face_policy` picks, the number of faces (1,) int64):
    faces whose box short side is below `MIN_FACE_PX` of the photo are dropped, as the library
    drops them; a zero face stands in when none is left (its embedding is discarded)."""
    kept = g.op("GreaterOrEqual", [short_sides(g, boxes, "face"), g.const("min_face", np.float32(MIN_FACE_PX))],
                "large_enough")
    boxes, scores, points = (g.op("Compress", [v, kept], f"kept_{n}", axis=0)
                             for v, n in ((boxes, "boxes"), (scores, "scores"), (points, "points")))
    count = g.op("Shape", [scores], "count")
    x1, y1, x2, y2 = (g.op("Gather", [boxes, g.const(f"col{i}", np.int64(i))], f"b{i}", axis=1) for i in range(4))
    area = g.op("Mul", [g.op("Sub", [x2, x1], "bw"), g.op("Sub", [y2, y1], "bh")], "area")
    half = g.const("half", np.float32(0.5))
    dx = g.op("Sub", [g.op("Mul", [g.op("Add", [x1, x2], "sx"), half], "cx"), g.op("Mul", [width, half], "mid_x")], "dx")
    dy = g.op("Sub", [g.op("Mul", [g.op("Add", [y1, y2], "sy"), half], "cy"), g.op("Mul", [height, half], "mid_y")], "dy")
    distance = g.op("Add", [g.op("Mul", [dx, dx], "dx2"), g.op("Mul", [dy, dy], "dy2")], "d2")
    # the stand-in, last, is the smallest and farthest of all: chosen only when it is alone
    largest = g.op("ArgMax", [g.op("Concat", [area, g.const("no_area", np.array([-1], np.float32))], "areas", axis=0)],
                   "largest", axis=0, keepdims=1)
    central = g.op("ArgMin", [g.op("Concat", [distance, g.const("far", np.array([3e38], np.float32))], "distances",
                                   axis=0)], "central", axis=0, keepdims=1)
    boxes = g.op("Concat", [boxes, g.const("no_box", np.zeros((1, 4), np.float32))], "boxes_or_none", axis=0)
    scores = g.op("Concat", [scores, g.const("no_score", np.zeros(1, np.float32))], "scores_or_none", axis=0)
    # the stand-in's landmarks are a template's: its warp stays finite
    points = g.op("Concat", [points, g.const("no_points", ARCFACE_112.points[None])], "points_or_none", axis=0)
    chosen = g.op("Where", [g.op("Equal", ["face_policy", g.const("central_flag", np.array([CENTRAL], np.int64))],
                                 "wants_central"), central, largest], "chosen")
    squeeze = g.const("squeeze0", np.array([0], np.int64))
    pick = lambda v, n: g.op("Squeeze", [g.op("Gather", [v, chosen], f"{n}_1", axis=0), squeeze], n)  # noqa: E731
    return pick(boxes, "box"), pick(scores, "score"), pick(points, "landmarks"), count


def _stored(path: str | Path, precision: str) -> onnx.ModelProto:
    """The ONNX file at `path`, each distinct weight once, stored in `precision`, quantised weights
    expanded when a session loads it (`dequantize_as_arithmetic`)."""
    model = dequantize_as_arithmetic(onnx.load(str(path)))
    shared_initializers(model.graph)
    return half_storage(model, lossless_only=False) if precision == "fp16" else model


def end_to_end_model(embedder: str | Path, detector: str | Path, precision: str = "fp32") -> onnx.ModelProto:
    """One graph: `detector` (RetinaFace's ONNX file) and `embedder` (a faceverify ONNX model)
    behind the pre-processing, decoding, choice and warps (see the module docstring), the weights
    stored in `precision` (`PRECISIONS`)."""
    from ..runtime import OnnxEmbedder

    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    metadata = OnnxEmbedder(embedder).metadata
    if metadata.detector_name != RetinaFace.name:
        raise ModelError(f"the end-to-end graph holds RetinaFace; {embedder} was calibrated on {metadata.detector_name}")
    if metadata.flip:
        raise ModelError(f"{embedder} averages each face with its mirror image (flip): the end-to-end graph does not")
    detector_graph = inlined(_stored(detector, precision), "retinaface/")
    embedder_graph = inlined(_stored(embedder, precision), "embedder/")
    g = Nodes("e2e")
    rgb, height, width = photo_nodes(g)
    detector_input, sizes, to_photo = _preprocess(g, rgb, height, width)
    boxes, scores, points = detected_faces(g, detector_graph, detector_input, sizes)
    boxes = g.op("Mul", [boxes, to_photo], "photo_boxes")
    points = g.op("Mul", [points, to_photo], "photo_points")
    box, score, landmarks, count = _choose(g, boxes, scores, points, height, width)
    crops = [_crop(g, rgb, height, width, landmarks, template) for template in metadata.templates]
    g.nodes += [helper.make_node("Identity", [crop], [f"embedder/faces_{template.name.replace('-', '_')}"])
                for crop, template in zip(crops, metadata.templates)]
    g.nodes += embedder_graph.node
    found = g.op("Greater", [count, g.const("none", np.array([0], np.int64))], "found")
    squeeze = g.const("squeeze_batch", np.array([0], np.int64))
    embedding = g.op("Where", [found, g.op("Squeeze", ["embedder/embeddings", squeeze], "embedding_row"),
                               g.const("zeros", np.zeros(metadata.embedding_dim, np.float32))], "embedding_or_zero")
    aligned = g.op("Where", [found, g.op("Squeeze", [crops[0], squeeze], "first_crop"),
                             g.const("blank", np.zeros((1, 1, 1), np.uint8))], "aligned_or_blank")
    threshold = g.const("threshold", np.float32(metadata.threshold()))
    names = {embedding: "embedding", box: "box", score: "score", landmarks: "landmarks", count: "faces_found",
             aligned: "aligned", threshold: "threshold"}
    g.nodes += [helper.make_node("Identity", [value], [name]) for value, name in names.items()]
    size = metadata.templates[0].size
    inputs = [helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3]),
              helper.make_tensor_value_info("face_policy", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [metadata.embedding_dim]),
               helper.make_tensor_value_info("box", TensorProto.FLOAT, [4]),
               helper.make_tensor_value_info("score", TensorProto.FLOAT, []),
               helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [5, 2]),
               helper.make_tensor_value_info("faces_found", TensorProto.INT64, [1]),
               helper.make_tensor_value_info("aligned", TensorProto.UINT8, [size, size, 3]),
               helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [])]
    graph = helper.make_graph(g.nodes, "faceverify_end_to_end", inputs, outputs,
                              list(detector_graph.initializer) + g.initializers + list(embedder_graph.initializer))
    shared_initializers(graph)
    opsets = [helper.make_opsetid("", OPSET)]
    # the least IR version the opset needs, not onnx's newest (14 for onnx 1.23): onnxruntime 1.31
    # (onnxruntime-node, onnxruntime-web) reads up to 13
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="faceverify")
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**metadata.to_dict(), "end_to_end": {
        "min_input_side": RetinaFace.min_input_side, "max_side": DETECTION_MAX_SIDE, "precision": precision,
        "face_policy": {"largest": LARGEST, "central": CENTRAL}}})
    return model


def _crop(g: Nodes, rgb: str, height: str, width: str, landmarks: str, template: Template) -> str:
    """The (1, size, size, 3) uint8 crop the embedder takes for `template` (its nodes named after it)."""
    scoped = Nodes(f"e2e/{template.name}")
    crop, _, _ = aligned_crop(scoped, rgb, height, width, landmarks, template)
    g.nodes += scoped.nodes
    g.initializers += scoped.initializers
    return crop


def export_end_to_end(out: str | Path, embedder: str | Path | None = None, precision: str = "fp32") -> dict:
    """Write the end-to-end graph of `embedder` (default: the bundled ONNX model) with the bundled
    RetinaFace to `out`, its weights in `precision`; returns its metadata."""
    from ..bundled import weights_dir
    from ..verifier import DEFAULT_MODEL_STEM

    folder = weights_dir()
    embedder = Path(embedder) if embedder else folder / f"{DEFAULT_MODEL_STEM}.onnx"
    if embedder.suffix != ".onnx":
        raise ModelError(f"{embedder}: the end-to-end graph is built from an ONNX model (faceverify export first)")
    model = end_to_end_model(embedder, folder / RetinaFace.weights_file, precision)
    onnx.checker.check_model(model)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return json.loads(model.metadata_props[0].value)
