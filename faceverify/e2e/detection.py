"""RetinaFace in ONNX nodes: the network, its per-anchor deltas decoded on the anchors of the
input's size (`detect.retinaface.priors`, computed in the graph), faces below the score threshold
dropped, greedy non-maximum suppression (NonMaxSuppression, IoU as torchvision and OpenCV count
it), best first (`decoded_faces`, mirroring `RetinaFace._detections`), and faces too large for
the anchors detected again on a shrunk copy (`large_faces_redetected`, mirroring
`RetinaFace._large_faces_redetected`). The tests compare each with the library's on real photos.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..detect.retinaface import (CENTRE_VARIANCE, LARGEST_RELIABLE_FACE_PX, LEVELS, NMS_IOU, REDETECT_FACE_PX,
                                 SIZE_VARIANCE, RetinaFace, priors)
from ..detect.single_pass import SMALLEST_FACE_PX
from .warp import OPSET, Nodes, inlined

#: faces a photo may yield at most (the graph's NonMaxSuppression output bound)
MAX_FACES = 64


def _slice(g: Nodes, vector: str, index: int, name: str) -> str:
    """vector[index:index + 1]."""
    return g.op("Slice", [vector, g.const(f"{name}_from", np.array([index], np.int64)),
                          g.const(f"{name}_to", np.array([index + 1], np.int64))], name)


def _columns(g: Nodes, tensor: str, start: int, stop: int, name: str) -> str:
    """tensor[..., start:stop] of a (N, K) tensor."""
    return g.op("Slice", [tensor, g.const(f"{name}_from", np.array([start], np.int64)),
                          g.const(f"{name}_to", np.array([stop], np.int64)),
                          g.const(f"{name}_axis", np.array([1], np.int64))], name)


def anchor_nodes(g: Nodes, height: str, width: str) -> str:
    """`priors(height, width)` computed in the graph for an input size known only at run time
    ((1,) int64 tensors): per level, row, column and anchor size, (centre x, centre y, w, h)."""
    levels = []
    one = g.const("one_i", np.array([1], np.int64))
    for stride, sizes in LEVELS:
        s = g.const(f"stride{stride}", np.array([stride], np.int64))
        cells = [g.op("Div", [g.op("Add", [side, g.const(f"round_up{stride}", np.array([stride - 1], np.int64))],
                                     f"{n}_up{stride}"), s], f"{n}_cells{stride}") for n, side in (("h", height), ("w", width))]
        rows, cols = cells
        centres = []
        for n, count, shape in (("y", rows, (-1, 1, 1)), ("x", cols, (1, -1, 1))):
            index = g.op("Cast", [g.op("Range", [g.const(f"zero_{n}{stride}", np.int64(0)),
                                                 g.op("Squeeze", [count, g.const(f"sq_{n}{stride}", np.array([0], np.int64))],
                                                      f"{n}_count{stride}"), g.const(f"step_{n}{stride}", np.int64(1))],
                                         f"{n}_range{stride}")], f"{n}_index{stride}", to=TensorProto.FLOAT)
            centre = g.op("Mul", [g.op("Add", [index, g.const(f"half_{n}{stride}", np.float32(0.5))], f"{n}_mid{stride}"),
                                  g.const(f"stride_f_{n}{stride}", np.float32(stride))], f"{n}_centre{stride}")
            centres.append(g.op("Reshape", [centre, g.const(f"shape_{n}{stride}", np.array(shape, np.int64))], f"c{n}{stride}"))
        grid = g.op("Concat", [rows, cols, g.const(f"sizes_n{stride}", np.array([len(sizes)], np.int64)), one],
                    f"grid{stride}", axis=0)
        size = g.const(f"anchor_sizes{stride}", np.asarray(sizes, np.float32).reshape(1, 1, -1, 1))
        columns = [g.op("Expand", [g.op("Unsqueeze", [centres[1], g.const(f"u_x{stride}", np.array([3], np.int64))],
                                        f"cx4_{stride}"), grid], f"cx_grid{stride}"),
                   g.op("Expand", [g.op("Unsqueeze", [centres[0], g.const(f"u_y{stride}", np.array([3], np.int64))],
                                        f"cy4_{stride}"), grid], f"cy_grid{stride}"),
                   g.op("Expand", [size, grid], f"size_grid{stride}")]
        columns.append(columns[2])
        levels.append(g.op("Reshape", [g.op("Concat", columns, f"anchors4d{stride}", axis=3),
                                       g.const(f"rows4_{stride}", np.array([-1, 4], np.int64))], f"anchors{stride}"))
    return g.op("Concat", levels, "anchors", axis=0)


def decoded_faces(g: Nodes, loc: str, conf: str, landmarks: str, anchors: str,
                  min_score: float = RetinaFace.default_min_score, iou: float = NMS_IOU,
                  max_faces: int = MAX_FACES) -> tuple[str, str, str, str]:
    """(boxes (K, 4) x1 y1 x2 y2, scores (K,), landmarks (K, 5, 2), K as a (1,) int64) of the faces
    the network found, best first; `loc`, `conf`, `landmarks`: its outputs for one image, (1, N, 4),
    (1, N, 2), (1, N, 10); `anchors`: (N, 4), `priors` of the input's size (a constant, or
    `anchor_nodes`)."""
    centre, size = _columns(g, anchors, 0, 2, "anchor_centre"), _columns(g, anchors, 2, 4, "anchor_size")
    squeeze0 = g.const("axis0", np.array([0], np.int64))
    loc2 = g.op("Squeeze", [loc, squeeze0], "loc2")  # (N, 4)
    box_centre = g.op("Add", [centre, g.op("Mul", [g.op("Mul", [_columns(g, loc2, 0, 2, "loc_xy"), size], "loc_px"),
                                                    g.const("centre_var", np.float32(CENTRE_VARIANCE))], "shift")],
                      "box_centre")
    box_size = g.op("Mul", [size, g.op("Exp", [g.op("Mul", [_columns(g, loc2, 2, 4, "loc_wh"),
                                                            g.const("size_var", np.float32(SIZE_VARIANCE))], "log_wh")],
                                       "wh_ratio")], "box_size")
    half = g.op("Mul", [box_size, g.const("half", np.float32(0.5))], "half_size")
    boxes = g.op("Concat", [g.op("Sub", [box_centre, half], "top_left"), g.op("Add", [box_centre, half], "bottom_right")],
                 "boxes", axis=1)  # (N, 4)
    points = g.op("Reshape", [g.op("Squeeze", [landmarks, g.const("axis0b", np.array([0], np.int64))], "lm2"),
                              g.const("points_shape", np.array([-1, 5, 2], np.int64))], "lm_deltas")
    unsqueeze1 = g.const("axis1", np.array([1], np.int64))
    points = g.op("Add", [g.op("Unsqueeze", [centre, unsqueeze1], "centre_1"),
                          g.op("Mul", [g.op("Mul", [points, g.op("Unsqueeze", [size, g.const("axis1b", np.array([1], np.int64))],
                                                                  "size_1")], "lm_px"),
                                       g.const("lm_var", np.float32(CENTRE_VARIANCE))], "lm_shift")], "points")
    scores = g.op("Gather", [g.op("Squeeze", [conf, g.const("axis0c", np.array([0], np.int64))], "conf2"),
                             g.const("face_column", np.int64(1))], "scores", axis=1)  # (N,)
    return best_first(g, boxes, scores, points, iou, max_faces, min_score)


def best_first(g: Nodes, boxes: str, scores: str, points: str, iou: float = NMS_IOU, max_faces: int = MAX_FACES,
               min_score: float | None = None) -> tuple[str, str, str, str]:
    """Greedy non-maximum suppression as `mtcnn_onnx.nms(mode="union")` (IoU as torchvision and
    OpenCV count it) of (K, 4) boxes, (K,) scores and (K, 5, 2) points, above `min_score`
    (at or above, as the library keeps them): (boxes, scores, points, their count as a (1,) int64),
    best first."""
    inputs = [g.op("Unsqueeze", [boxes, g.const("axis0d", np.array([0], np.int64))], "boxes_b"),
              g.op("Reshape", [scores, g.const("scores_shape", np.array([1, 1, -1], np.int64))], "scores_bc"),
              g.const("max_faces", np.array([max_faces], np.int64)), g.const("iou", np.array([iou], np.float32))]
    if min_score is not None:  # NonMaxSuppression keeps scores above its threshold
        inputs.append(g.const("min_score", np.array([np.nextafter(np.float32(min_score), np.float32(-np.inf))],
                                                     np.float32)))
    selected = g.op("NonMaxSuppression", inputs, "selected", center_point_box=0)
    kept = g.op("Squeeze", [_columns(g, selected, 2, 3, "selected_index"), g.const("axis1s", np.array([1], np.int64))],
                "kept")
    return (g.op("Gather", [boxes, kept], "face_boxes", axis=0), g.op("Gather", [scores, kept], "face_scores", axis=0),
            g.op("Gather", [points, kept], "face_points", axis=0), g.op("Shape", [kept], "count"))


def resized(g: Nodes, nchw: str, sides: str, scale: str) -> tuple[str, str]:
    """(`nchw` (1, 3, h, w) resized by `scale` as `single_pass.resized_by` resizes (its (2,) float
    `sides` times it, rounded, at least a pixel; antialiased when shrunk, as cv2's INTER_AREA
    averages), its new (2,) int64 size)."""
    sizes = g.op("Max", [g.op("Cast", [g.op("Round", [g.op("Mul", [sides, scale], "scaled_hw")], "rounded_hw")],
                              "hw_int", to=TensorProto.INT64), g.const("one_px", np.array([1], np.int64))], "hw_sizes")
    to = g.op("Concat", [g.const("nc", np.array([1, 3], np.int64)), sizes], "resize_to", axis=0)
    return g.op("Resize", [nchw, "", "", to], "resized", mode="linear", antialias=1), sizes


def short_sides(g: Nodes, boxes: str, name: str) -> str:
    """Each (K, 4) box's short side, (K,)."""
    corners = [g.op("Gather", [boxes, g.const(f"{name}_col{i}", np.int64(i))], f"{name}_b{i}", axis=1) for i in range(4)]
    return g.op("Min", [g.op("Sub", [corners[2], corners[0]], f"{name}_w"), g.op("Sub", [corners[3], corners[1]], f"{name}_h")],
                f"{name}_sides")


def detected_faces(g: Nodes, detector: onnx.GraphProto, image: str, sizes: str) -> tuple[str, str, str]:
    """(boxes (K, 4), scores (K,), landmarks (K, 5, 2)) RetinaFace finds in `image`, its input
    ((1, 3, h, w) BGR minus the means) of (2,) int64 `sizes`, in its pixels, best first: the
    network (`detector`, inlined under "retinaface/"), `decoded_faces`, `large_faces_redetected`."""
    g.nodes.append(helper.make_node("Identity", [image], ["retinaface/input"]))
    g.nodes += detector.node
    anchors = anchor_nodes(g, *(_slice(g, sizes, i, f"detector_{n}") for i, n in enumerate("hw")))
    found = decoded_faces(g, "retinaface/loc", "retinaface/conf", "retinaface/landmarks", anchors)
    return large_faces_redetected(g, detector, image, sizes, found[:3])


def large_faces_redetected(g: Nodes, detector: onnx.GraphProto, image: str, sizes: str,
                           found: tuple[str, str, str]) -> tuple[str, str, str]:
    """`found` (boxes, scores, points in the pixels of RetinaFace's input `image`, of (2,) `sizes`)
    with faces above `LARGEST_RELIABLE_FACE_PX` taken from a copy shrunk until the largest measures
    `REDETECT_FACE_PX`, and of the first pass only the faces too small to be seen there:
    `RetinaFace._large_faces_redetected`, one level deep. An `If`: the second pass runs only for
    photos that need it, its network the first one's nodes again on the same weights."""
    boxes, scores, points = found
    sides = short_sides(g, boxes, "found")
    largest = g.op("ReduceMax", [g.op("Concat", [sides, g.const("no_side", np.zeros(1, np.float32))], "sides_or_0",
                                      axis=0)], "largest_side", keepdims=0)
    sizes_f = g.op("Cast", [sizes], "input_sides", to=TensorProto.FLOAT)
    too_large = g.op("And", [
        g.op("Greater", [largest, g.const("reliable", np.float32(LARGEST_RELIABLE_FACE_PX))], "face_too_large"),
        g.op("Greater", [g.op("ReduceMin", [sizes_f], "input_short_side", keepdims=0),
                         g.const("redetect_px", np.float32(REDETECT_FACE_PX))], "input_large_enough")], "redetect")

    b = Nodes(f"{g.scope}/large")
    scale = b.op("Div", [b.const("target", np.float32(REDETECT_FACE_PX)), largest], "scale")
    small, small_sizes = resized(b, image, sizes_f, scale)
    b.nodes.append(helper.make_node("Identity", [small], ["retinaface_large/input"]))
    b.nodes += _network_copy(detector, "retinaface_large")
    anchors = anchor_nodes(b, *(_slice(b, small_sizes, i, f"small_{n}") for i, n in enumerate("hw")))
    large = decoded_faces(b, "retinaface_large/loc", "retinaface_large/conf", "retinaface_large/landmarks", anchors)
    back = b.op("Reciprocal", [scale], "back")
    unseen = b.op("Less", [sides, b.op("Mul", [b.const("smallest", np.float32(SMALLEST_FACE_PX)), back], "unseen_below")],
                  "unseen")
    merged = best_first(b, *(b.op("Concat", [b.op("Mul", [again, back], f"large_{n}_px") if n != "scores" else again,
                                             b.op("Compress", [first, unseen], f"small_{n}", axis=0)], f"merged_{n}", axis=0)
                             for n, again, first in zip(("boxes", "scores", "points"), large, found)))
    as_found = Nodes(f"{g.scope}/as_found")
    branches = []
    for scope, values in ((b, merged[:3]), (as_found, found)):
        names = [f"{scope.scope}/branch_{n}" for n in ("boxes", "scores", "points")]
        scope.nodes += [helper.make_node("Identity", [v], [n]) for v, n in zip(values, names)]
        outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
        branches.append(helper.make_graph(scope.nodes, scope.scope.replace("/", "_"), [], outputs, scope.initializers))
    faces = g.op("If", [too_large], "faces", outputs=3, then_branch=branches[0], else_branch=branches[1])
    return faces, f"{faces}:1", f"{faces}:2"


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


def decoding_model(height: int, width: int, min_score: float = RetinaFace.default_min_score):
    """The post-processing alone, for tests: RetinaFace's three outputs for one `height` × `width`
    image in, `boxes`, `scores`, `landmarks`, `count` out."""
    g = Nodes("faces")
    anchors = len(priors(height, width))
    inputs = [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [1, anchors, 4]),
              helper.make_tensor_value_info("conf", TensorProto.FLOAT, [1, anchors, 2]),
              helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [1, anchors, 10])]
    found = decoded_faces(g, "loc", "conf", "landmarks", g.const("anchors", priors(height, width).astype(np.float32)),
                          min_score)
    names = ("boxes", "scores", "points", "count")
    g.nodes += [helper.make_node("Identity", [value], [name]) for value, name in zip(found, names)]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["faces", 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["faces"]),
               helper.make_tensor_value_info("points", TensorProto.FLOAT, ["faces", 5, 2]),
               helper.make_tensor_value_info("count", TensorProto.INT64, [1])]
    graph = helper.make_graph(g.nodes, "faceverify_retinaface_decoding", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceverify")


def detection_model(detector: onnx.ModelProto):
    """RetinaFace with its decoding and second pass alone, for tests: `input` (1, 3, H, W), BGR
    minus the means, in; `boxes`, `scores`, `points` out, in its pixels."""
    g = Nodes("faces")
    detector_graph = inlined(detector, "retinaface/")
    sizes = g.op("Slice", [g.op("Shape", ["input"], "input_shape"), g.const("hw_from", np.array([2], np.int64)),
                           g.const("hw_to", np.array([4], np.int64))], "input_hw")
    found = detected_faces(g, detector_graph, "input", sizes)
    names = ("boxes", "scores", "points")
    g.nodes += [helper.make_node("Identity", [value], [name]) for value, name in zip(found, names)]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names]
    graph = helper.make_graph(g.nodes, "faceverify_retinaface", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, "height", "width"])], outputs, list(detector_graph.initializer) + g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceverify")
