"""The end-to-end model: one ONNX graph from a photo to its face's embedding.

Input `image`: (H, W, 3) uint8 RGB, any size; `face_policy`: (1,) int64, 0 the largest face, 1
the one nearest the centre. Inside: the photo resized for RetinaFace as the library resizes it
(`_preprocess`), RetinaFace and its decoding on anchors of that size (`detection`), faces above
`LARGEST_RELIABLE_FACE_PX` detected again on a shrunk copy (`_large_faces_redetected`), the face
chosen, the similarity onto each member's template and the warp from the full-resolution photo
(`warp`), then the model's own ONNX embedder (members and fusion as `export.ensemble_graph` built
them). Outputs: `embedding` (D,), `box` (4,) x1 y1 x2 y2, `score` (), `landmarks` (5, 2) in the
photo's pixels, `faces_found` (1,) (with no face, 0 and a zero embedding), `aligned` (S, S, 3)
uint8, the face as the first member sees it (zeros without a face), and `threshold` (), the
model's calibrated threshold (best accuracy on the dev pairs), for bindings that cannot read
`metadata_props`, where the embedder's metadata (thresholds, templates, members, licences) is
copied.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, version_converter

from ..align import ARCFACE_112, Template
from ..detect.retinaface import LARGEST_RELIABLE_FACE_PX, MEAN_BGR, REDETECT_FACE_PX, RetinaFace
from ..detect.single_pass import MIN_FACE_PX, SMALLEST_FACE_PX
from ..errors import ModelError
from ..onnx_graph import dequantize_as_arithmetic, half_storage, shared_initializers
from ..policies import DETECTION_MAX_SIDE
from ..runtime import METADATA_KEY
from .detection import anchor_nodes, best_first, decoded_faces
from .warp import OPSET, Nodes, aligned_crop, photo_nodes

LARGEST, CENTRAL = 0, 1
#: how the weights are stored: as the embedder stores them (its fp16-trained member in fp16, its
#: int8 member in int8) and the detector in float32, or every float32 weight in float16 (computed
#: in float32 all the same: smaller, for the browser)
PRECISIONS = ("fp32", "fp16")


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
    resized, sizes = _resized(g, g.op("Gather", [rgb, g.const("bgr_order", np.array([2, 1, 0], np.int64))], "bgr", axis=1),
                              sides, scale)
    centred = g.op("Sub", [resized, g.const("mean", MEAN_BGR.reshape(1, 3, 1, 1))], "centred")
    # the factor back is 1 / scale whatever the rounding of the size, as `resized_by` returns it
    return centred, sizes, g.op("Reciprocal", [scale], "to_photo")


def _resized(g: Nodes, nchw: str, sides: str, scale: str) -> tuple[str, str]:
    """(`nchw` (1, 3, h, w) resized by `scale` (its (2,) float `sides` times it, rounded, at least
    1 pixel) as `resized_by` resizes, its new (2,) int64 size)."""
    sizes = g.op("Max", [g.op("Cast", [g.op("Round", [g.op("Mul", [sides, scale], "scaled_hw")], "rounded_hw")],
                              "hw_int", to=TensorProto.INT64), g.const("one_px", np.array([1], np.int64))], "hw_sizes")
    to = g.op("Concat", [g.const("nc", np.array([1, 3], np.int64)), sizes], "resize_to", axis=0)
    return g.op("Resize", [nchw, "", "", to], "resized", mode="linear", antialias=1), sizes


def _slice(g: Nodes, vector: str, index: int, name: str) -> str:
    """vector[index:index + 1]."""
    return g.op("Slice", [vector, g.const(f"{name}_from", np.array([index], np.int64)),
                          g.const(f"{name}_to", np.array([index + 1], np.int64))], name)


def _short_sides(g: Nodes, boxes: str, name: str) -> str:
    """Each (K, 4) box's short side, (K,)."""
    corners = [g.op("Gather", [boxes, g.const(f"{name}_col{i}", np.int64(i))], f"{name}_b{i}", axis=1) for i in range(4)]
    return g.op("Min", [g.op("Sub", [corners[2], corners[0]], f"{name}_w"), g.op("Sub", [corners[3], corners[1]], f"{name}_h")],
                f"{name}_sides")


def _network_copy(detector: onnx.GraphProto, scope: str) -> list[onnx.NodeProto]:
    """RetinaFace's nodes again, their activations renamed from "retinaface/" to `scope` (input
    `scope`/input, outputs `scope`/loc, ...); the weights, and nodes computing only from weights
    (the casts of half-stored ones), are the first copy's, read from the outer graph, an Identity of
    a weight read as that weight (onnxruntime drops such Identities, and cannot rename what a
    branch reads from outside)."""
    constant = {i.name: i.name for i in detector.initializer}  # each to the name to read it by
    nodes = []
    for node in detector.node:
        if all(name in constant for name in node.input if name):
            for out in node.output:
                constant[out] = constant[node.input[0]] if node.op_type == "Identity" else out
            continue
        rename = lambda name: constant.get(name, name and f"{scope}/{name.removeprefix('retinaface/')}")  # noqa: E731
        nodes.append(helper.make_node(node.op_type, [rename(n) for n in node.input], [rename(n) for n in node.output],
                                      name=rename(node.name or node.output[0]), domain=node.domain))
        nodes[-1].attribute.extend(node.attribute)
    return nodes


def _large_faces_redetected(g: Nodes, detector: onnx.GraphProto, image: str, sizes: str,
                            found: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
    """`found` (boxes, scores, points, count in the pixels of RetinaFace's input `image`, of (2,)
    `sizes`) with faces above `LARGEST_RELIABLE_FACE_PX` taken from a copy shrunk until the largest
    measures `REDETECT_FACE_PX`, and of the first pass only the faces too small to be seen there:
    `RetinaFace._large_faces_redetected`, one level deep (an `If`: the second pass runs only for
    photos that need it)."""
    boxes, scores, points, _ = found
    sides = _short_sides(g, boxes, "found")
    largest = g.op("ReduceMax", [g.op("Concat", [sides, g.const("no_side", np.zeros(1, np.float32))], "sides_or_0",
                                      axis=0)], "largest_side", keepdims=0)
    sizes_f = g.op("Cast", [sizes], "input_sides", to=TensorProto.FLOAT)
    too_large = g.op("And", [
        g.op("Greater", [largest, g.const("reliable", np.float32(LARGEST_RELIABLE_FACE_PX))], "face_too_large"),
        g.op("Greater", [g.op("ReduceMin", [sizes_f], "input_short_side", keepdims=0),
                         g.const("redetect_px", np.float32(REDETECT_FACE_PX))], "input_large_enough")], "redetect")

    b = Nodes("e2e/large")
    scale = b.op("Div", [b.const("target", np.float32(REDETECT_FACE_PX)), largest], "scale")
    small, small_sizes = _resized(b, image, sizes_f, scale)
    b.nodes.append(helper.make_node("Identity", [small], ["retinaface_large/input"]))
    b.nodes += _network_copy(detector, "retinaface_large")
    anchors = anchor_nodes(b, *(_slice(b, small_sizes, i, f"small_{n}") for i, n in enumerate("hw")))
    large_boxes, large_scores, large_points, _ = decoded_faces(
        b, "retinaface_large/loc", "retinaface_large/conf", "retinaface_large/landmarks", anchors)
    back = b.op("Reciprocal", [scale], "back")
    unseen = b.op("Less", [sides, b.op("Mul", [b.const("smallest", np.float32(SMALLEST_FACE_PX)), back], "unseen_below")],
                  "unseen")
    merged = best_first(b, *(b.op("Concat", [b.op("Mul", [large, back], f"large_{n}_px") if n != "scores" else large,
                                             b.op("Compress", [first, unseen], f"small_{n}", axis=0)], f"merged_{n}", axis=0)
                             for n, large, first in (("boxes", large_boxes, boxes), ("scores", large_scores, scores),
                                                     ("points", large_points, points))))
    as_found = Nodes("e2e/as_found")
    branches = []
    for scope, values in ((b, merged), (as_found, found)):
        names = [f"{scope.scope}/branch_{n}" for n in ("boxes", "scores", "points", "count")]
        scope.nodes += [helper.make_node("Identity", [v], [n]) for v, n in zip(values, names)]
        outputs = [helper.make_tensor_value_info(n, t, None) for n, t in zip(names, [TensorProto.FLOAT] * 3 + [TensorProto.INT64])]
        branches.append(helper.make_graph(scope.nodes, scope.scope.replace("/", "_"), [], outputs, scope.initializers))
    faces = g.op("If", [too_large], "faces", outputs=4, then_branch=branches[0], else_branch=branches[1])
    return faces, f"{faces}:1", f"{faces}:2", f"{faces}:3"


def _choose(g: Nodes, boxes: str, scores: str, points: str, height: str, width: str) -> tuple[str, str, str, str]:
    """(box, score, landmarks of the face `face_policy` picks, the number of faces (1,) int64):
    faces whose box short side is below `MIN_FACE_PX` of the photo are not counted, as the
    library drops them; a zero face stands in when there is none (it loses to any real one)."""
    boxes = g.op("Concat", [boxes, g.const("no_box", np.zeros((1, 4), np.float32))], "boxes_or_none", axis=0)
    scores = g.op("Concat", [scores, g.const("no_score", np.zeros(1, np.float32))], "scores_or_none", axis=0)
    # the stand-in's landmarks are a template's: its warp stays finite (its embedding is discarded)
    points = g.op("Concat", [points, g.const("no_points", ARCFACE_112.points[None])], "points_or_none", axis=0)
    x1, y1, x2, y2 = (g.op("Gather", [boxes, g.const(f"col{i}", np.int64(i))], f"b{i}", axis=1) for i in range(4))
    area = g.op("Mul", [g.op("Sub", [x2, x1], "bw"), g.op("Sub", [y2, y1], "bh")], "area")
    half = g.const("half", np.float32(0.5))
    dx = g.op("Sub", [g.op("Mul", [g.op("Add", [x1, x2], "sx"), half], "cx"), g.op("Mul", [width, half], "mid_x")], "dx")
    dy = g.op("Sub", [g.op("Mul", [g.op("Add", [y1, y2], "sy"), half], "cy"), g.op("Mul", [height, half], "mid_y")], "dy")
    real = g.op("And", [g.op("Greater", [scores, g.const("zero", np.float32(0.0))], "scored"),
                        g.op("GreaterOrEqual", [_short_sides(g, boxes, "chosen"), g.const("min_face", np.float32(MIN_FACE_PX))],
                             "large_enough")], "real")
    count = g.op("ReduceSum", [g.op("Cast", [real], "real_int", to=TensorProto.INT64)], "real_count", keepdims=1)
    distance = g.op("Where", [real, g.op("Add", [g.op("Mul", [dx, dx], "dx2"), g.op("Mul", [dy, dy], "dy2")], "d2"),
                              g.const("far", np.float32(3e38))], "distance")
    largest = g.op("ArgMax", [g.op("Where", [real, area, g.const("none_area", np.float32(-1.0))], "areas")], "largest",
                   axis=0, keepdims=1)
    central = g.op("ArgMin", [distance], "central", axis=0, keepdims=1)
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
    detector_graph = _subgraph(_stored(detector, precision), "retinaface/")
    embedder_graph = _subgraph(_stored(embedder, precision), "embedder/")
    g = Nodes("e2e")
    rgb, height, width = photo_nodes(g)
    detector_input, sizes, to_photo = _preprocess(g, rgb, height, width)
    g.nodes.append(helper.make_node("Identity", [detector_input], ["retinaface/input"]))
    before_detector = len(g.nodes)
    anchors = anchor_nodes(g, *(_slice(g, sizes, i, f"detector_{n}") for i, n in enumerate("hw")))
    found = decoded_faces(g, "retinaface/loc", "retinaface/conf", "retinaface/landmarks", anchors)
    boxes, scores, points, _ = _large_faces_redetected(g, detector_graph, detector_input, sizes, found)
    boxes = g.op("Mul", [boxes, to_photo], "photo_boxes")
    points = g.op("Mul", [points, to_photo], "photo_points")
    box, score, landmarks, count = _choose(g, boxes, scores, points, height, width)
    crops = [_crop(g, rgb, height, width, landmarks, template) for template in metadata.templates]
    g.nodes += [helper.make_node("Identity", [crop], [f"embedder/faces_{template.name.replace('-', '_')}"])
                for crop, template in zip(crops, metadata.templates)]
    after_embedder = len(g.nodes)
    found = g.op("Greater", [count, g.const("none", np.array([0], np.int64))], "found")
    squeeze = g.const("squeeze_batch", np.array([0], np.int64))
    embedding = g.op("Where", [found, g.op("Squeeze", ["embedder/embeddings", squeeze], "embedding_row"),
                               g.const("zeros", np.zeros(metadata.embedding_dim, np.float32))], "embedding_or_zero")
    aligned = g.op("Where", [found, g.op("Squeeze", [crops[0], squeeze], "first_crop"),
                             g.const("blank", np.zeros((1, 1, 1), np.uint8))], "aligned_or_blank")
    threshold = g.const("threshold", np.float32(metadata.threshold()))
    names = {embedding: "embedding", box: "box", score: "score", landmarks: "landmarks", count: "faces_found",
             aligned: "aligned", threshold: "threshold"}
    outputs = [helper.make_node("Identity", [value], [name]) for value, name in names.items()]
    # in the order they run: pre-processing, RetinaFace, decoding to crops, the embedder, outputs
    nodes = (g.nodes[:before_detector] + list(detector_graph.node) + g.nodes[before_detector:after_embedder]
             + list(embedder_graph.node) + g.nodes[after_embedder:] + outputs)
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
    graph = helper.make_graph(nodes, "faceverify_end_to_end", inputs, outputs,
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
