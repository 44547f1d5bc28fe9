"""The end-to-end model: one ONNX graph from a photo to its face's embedding.

Input `image`: (H, W, 3) uint8 RGB, any size; `face_policy`: (1,) int64, 0 the largest face, 1
the one nearest the centre. Inside: the photo resized for RetinaFace as the library resizes it
(`_preprocess`), RetinaFace and its decoding on anchors of that size (`detection`), the face
chosen, the similarity onto
each member's template and the warp from the full-resolution photo (`warp`), then the model's own
ONNX embedder (members and fusion as `export.ensemble_graph` built them). Outputs: `embedding`
(D,), `box` (4,) x1 y1 x2 y2, `score` (), `landmarks` (5, 2) in the photo's pixels, and
`faces_found` (1,): with no face, 0 and a zero embedding. The embedder's metadata (thresholds,
templates, members, licences) is copied into `metadata_props`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, version_converter

from ..align import ARCFACE_112, Template
from ..detect.retinaface import MEAN_BGR, RetinaFace
from ..errors import ModelError
from ..policies import DETECTION_MAX_SIDE
from ..runtime import METADATA_KEY
from .detection import anchor_nodes, decoded_faces
from .warp import OPSET, Nodes, aligned_crop, photo_nodes

LARGEST, CENTRAL = 0, 1


def _subgraph(model: onnx.ModelProto, prefix: str) -> onnx.GraphProto:
    model = version_converter.convert_version(model, OPSET) if model.opset_import[0].version != OPSET else model
    return compose.add_prefix(model, prefix).graph


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
    sizes = g.op("Cast", [g.op("Round", [g.op("Mul", [sides, scale], "scaled_hw")], "rounded_hw")], "hw_int", to=TensorProto.INT64)
    resized = g.op("Resize", [rgb, "", "", g.op("Concat", [g.const("nc", np.array([1, 3], np.int64)), sizes], "resize_to", axis=0)],
                   "resized", mode="linear", antialias=1)
    bgr = g.op("Sub", [g.op("Gather", [resized, g.const("bgr_order", np.array([2, 1, 0], np.int64))], "bgr", axis=1),
                       g.const("mean", MEAN_BGR.reshape(1, 3, 1, 1))], "centred")
    # the factor back: the photo's side over the resized side, as `resized_by` returns it
    to_photo = g.op("Div", [sides, g.op("Cast", [sizes], "sizes_f", to=TensorProto.FLOAT)], "to_photo_hw")
    return bgr, sizes, g.op("Gather", [to_photo, g.const("w_index", np.int64(1))], "to_photo", axis=0)


def _slice(g: Nodes, vector: str, index: int, name: str) -> str:
    """vector[index:index + 1]."""
    return g.op("Slice", [vector, g.const(f"{name}_from", np.array([index], np.int64)),
                          g.const(f"{name}_to", np.array([index + 1], np.int64))], name)


def _choose(g: Nodes, boxes: str, scores: str, points: str, height: str, width: str) -> tuple[str, str, str]:
    """The face `face_policy` picks (a zero face when there is none: it loses to any real one)."""
    boxes = g.op("Concat", [boxes, g.const("no_box", np.zeros((1, 4), np.float32))], "boxes_or_none", axis=0)
    scores = g.op("Concat", [scores, g.const("no_score", np.zeros(1, np.float32))], "scores_or_none", axis=0)
    # the stand-in's landmarks are a template's: its warp stays finite (its embedding is discarded)
    points = g.op("Concat", [points, g.const("no_points", ARCFACE_112.points[None])], "points_or_none", axis=0)
    x1, y1, x2, y2 = (g.op("Gather", [boxes, g.const(f"col{i}", np.int64(i))], f"b{i}", axis=1) for i in range(4))
    area = g.op("Mul", [g.op("Sub", [x2, x1], "bw"), g.op("Sub", [y2, y1], "bh")], "area")
    half = g.const("half", np.float32(0.5))
    dx = g.op("Sub", [g.op("Mul", [g.op("Add", [x1, x2], "sx"), half], "cx"), g.op("Mul", [width, half], "mid_x")], "dx")
    dy = g.op("Sub", [g.op("Mul", [g.op("Add", [y1, y2], "sy"), half], "cy"), g.op("Mul", [height, half], "mid_y")], "dy")
    real = g.op("Greater", [scores, g.const("zero", np.float32(0.0))], "real")
    distance = g.op("Where", [real, g.op("Add", [g.op("Mul", [dx, dx], "dx2"), g.op("Mul", [dy, dy], "dy2")], "d2"),
                              g.const("far", np.float32(3e38))], "distance")
    largest = g.op("ArgMax", [g.op("Where", [real, area, g.const("none_area", np.float32(-1.0))], "areas")], "largest",
                   axis=0, keepdims=1)
    central = g.op("ArgMin", [distance], "central", axis=0, keepdims=1)
    chosen = g.op("Where", [g.op("Equal", ["face_policy", g.const("central_flag", np.array([CENTRAL], np.int64))],
                                 "wants_central"), central, largest], "chosen")
    squeeze = g.const("squeeze0", np.array([0], np.int64))
    pick = lambda v, n: g.op("Squeeze", [g.op("Gather", [v, chosen], f"{n}_1", axis=0), squeeze], n)  # noqa: E731
    return pick(boxes, "box"), pick(scores, "score"), pick(points, "landmarks")


def end_to_end_model(embedder: str | Path, detector: str | Path) -> onnx.ModelProto:
    """One graph: `detector` (RetinaFace's ONNX file) and `embedder` (a faceverify ONNX model)
    behind the pre-processing, decoding, choice and warps (see the module docstring)."""
    from ..runtime import OnnxEmbedder

    metadata = OnnxEmbedder(embedder).metadata
    if metadata.detector_name != RetinaFace.name:
        raise ModelError(f"the end-to-end graph holds RetinaFace; {embedder} was calibrated on {metadata.detector_name}")
    g = Nodes("e2e")
    rgb, height, width = photo_nodes(g)
    detector_input, sizes, to_photo = _preprocess(g, rgb, height, width)
    g.nodes.append(helper.make_node("Identity", [detector_input], ["retinaface/input"]))
    before_detector = len(g.nodes)
    anchors = anchor_nodes(g, *(_slice(g, sizes, i, f"detector_{n}") for i, n in enumerate("hw")))
    boxes, scores, points, count = decoded_faces(g, "retinaface/loc", "retinaface/conf", "retinaface/landmarks", anchors)
    boxes = g.op("Mul", [boxes, to_photo], "photo_boxes")
    points = g.op("Mul", [points, to_photo], "photo_points")
    box, score, landmarks = _choose(g, boxes, scores, points, height, width)
    for template in metadata.templates:
        g.nodes.append(helper.make_node("Identity", [_crop(g, rgb, height, width, landmarks, template)],
                                        [f"embedder/faces_{template.name.replace('-', '_')}"]))
    after_embedder = len(g.nodes)
    found = g.op("Greater", [count, g.const("none", np.array([0], np.int64))], "found")
    embedding = g.op("Where", [found, g.op("Squeeze", ["embedder/embeddings", g.const("squeeze_e", np.array([0], np.int64))],
                                          "embedding_row"), g.const("zeros", np.zeros(metadata.embedding_dim, np.float32))],
                     "embedding_or_zero")
    names = {embedding: "embedding", box: "box", score: "score", landmarks: "landmarks", count: "faces_found"}
    outputs = [helper.make_node("Identity", [value], [name]) for value, name in names.items()]
    detector_graph = _subgraph(onnx.load(str(detector)), "retinaface/")
    embedder_graph = _subgraph(onnx.load(str(embedder)), "embedder/")
    # in the order they run: pre-processing, RetinaFace, decoding to crops, the embedder, outputs
    nodes = (g.nodes[:before_detector] + list(detector_graph.node) + g.nodes[before_detector:after_embedder]
             + list(embedder_graph.node) + g.nodes[after_embedder:] + outputs)
    inputs = [helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3]),
              helper.make_tensor_value_info("face_policy", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [metadata.embedding_dim]),
               helper.make_tensor_value_info("box", TensorProto.FLOAT, [4]),
               helper.make_tensor_value_info("score", TensorProto.FLOAT, []),
               helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [5, 2]),
               helper.make_tensor_value_info("faces_found", TensorProto.INT64, [1])]
    graph = helper.make_graph(nodes, "faceverify_end_to_end", inputs, outputs,
                              list(detector_graph.initializer) + g.initializers + list(embedder_graph.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceverify")
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**metadata.to_dict(), "end_to_end": {
        "min_input_side": RetinaFace.min_input_side, "max_side": DETECTION_MAX_SIDE,
        "face_policy": {"largest": LARGEST, "central": CENTRAL}}})
    return model


def _crop(g: Nodes, rgb: str, height: str, width: str, landmarks: str, template: Template) -> str:
    """The (1, size, size, 3) uint8 crop the embedder takes for `template` (its nodes named after it)."""
    scoped = Nodes(f"e2e/{template.name}")
    crop, _, _ = aligned_crop(scoped, rgb, height, width, landmarks, template)
    g.nodes += scoped.nodes
    g.initializers += scoped.initializers
    return crop


def export_end_to_end(out: str | Path, embedder: str | Path | None = None) -> dict:
    """Write the end-to-end graph of `embedder` (default: the bundled ONNX model) with the bundled
    RetinaFace to `out`; returns its metadata."""
    from ..bundled import weights_dir
    from ..verifier import DEFAULT_MODEL_STEM

    folder = weights_dir()
    embedder = Path(embedder) if embedder else folder / f"{DEFAULT_MODEL_STEM}.onnx"
    if embedder.suffix != ".onnx":
        raise ModelError(f"{embedder}: the end-to-end graph is built from an ONNX model (faceverify export first)")
    model = end_to_end_model(embedder, folder / RetinaFace.weights_file)
    onnx.checker.check_model(model)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return json.loads(model.metadata_props[0].value)
