"""RetinaFace's post-processing as ONNX nodes: the network's per-anchor deltas decoded on the
anchors of the input's size (`detect.retinaface.priors`, computed in the graph), faces below
the score threshold dropped, greedy non-maximum suppression (NonMaxSuppression, IoU as torchvision
and OpenCV count it), best first. It mirrors `RetinaFace._detections` (`decode` and `nms`); the
test compares them on the network's outputs for real photos.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..detect.retinaface import CENTRE_VARIANCE, LEVELS, NMS_IOU, SIZE_VARIANCE, RetinaFace, priors
from .warp import OPSET, Nodes

#: faces a photo may yield at most (the graph's NonMaxSuppression output bound)
MAX_FACES = 64


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
