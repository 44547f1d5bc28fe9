"""The face warp as ONNX nodes: five landmarks → a similarity transform onto a template, in closed
form (least squares over the five point pairs) → the crop, sampled bilinearly with replicated
borders (GridSample). It mirrors `align.align_face`: the same template, the same pixel-centre
convention as `cv2.warpAffine` (GridSample with `align_corners`), so a graph holding it aligns a
face as the library does (`tests/test_e2e_graphs.py` measures by how much).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..align import Template

#: GridSample with padding_mode "border" needs opset 16
OPSET = 18


class Nodes:
    """Nodes and constants of one graph under construction, each name prefixed with `scope`."""

    def __init__(self, scope: str):
        self.scope, self.nodes, self.initializers = scope, [], []

    def const(self, name: str, value) -> str:
        name = f"{self.scope}/{name}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], name: str, **attributes) -> str:
        out = f"{self.scope}/{name}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attributes))
        return out


def similarity_transform(g: Nodes, landmarks: str, template: Template) -> tuple[str, str]:
    """(A, t): the 2×2 matrix [[a, -b], [b, a]] and the translation (2,) mapping the (5, 2)
    landmarks onto the template's points by least squares (Umeyama's closed form without the
    reflection: a similarity keeps handedness)."""
    dst = template.points.astype(np.float32)
    dst_mean = dst.mean(axis=0)
    dst_centred = dst - dst_mean
    src_mean = g.op("ReduceMean", [landmarks, g.const("axis0", np.array([0], np.int64))], "src_mean", keepdims=1)
    src = g.op("Sub", [landmarks, src_mean], "src_centred")
    sx = g.op("Slice", [src, g.const("c0", np.array([0], np.int64)), g.const("c1", np.array([1], np.int64)),
                        g.const("axis1", np.array([1], np.int64))], "sx")
    sy = g.op("Slice", [src, g.const("c1b", np.array([1], np.int64)), g.const("c2", np.array([2], np.int64)),
                        g.const("axis1b", np.array([1], np.int64))], "sy")
    dx, dy = g.const("dx", dst_centred[:, :1]), g.const("dy", dst_centred[:, 1:])  # (5, 1) each
    norm = g.op("ReduceSum", [g.op("Mul", [src, src], "src_sq"), g.const("axes01", np.array([0, 1], np.int64))],
                "norm", keepdims=0)
    dot = g.op("ReduceSum", [g.op("Add", [g.op("Mul", [sx, dx], "sxdx"), g.op("Mul", [sy, dy], "sydy")], "dot_terms"),
                             g.const("axes01b", np.array([0, 1], np.int64))], "dot", keepdims=0)
    cross = g.op("ReduceSum", [g.op("Sub", [g.op("Mul", [sx, dy], "sxdy"), g.op("Mul", [sy, dx], "sydx")], "cross_terms"),
                               g.const("axes01c", np.array([0, 1], np.int64))], "cross", keepdims=0)
    norm = g.op("Max", [norm, g.const("tiny", np.float32(1e-12))], "norm_safe")
    a, b = g.op("Div", [dot, norm], "a"), g.op("Div", [cross, norm], "b")
    minus_b = g.op("Neg", [b], "minus_b")
    shape = g.const("shape22", np.array([2, 2], np.int64))
    matrix = g.op("Reshape", [g.op("Concat", [g.op("Unsqueeze", [v, g.const(f"u{i}", np.array([0], np.int64))], f"m{i}")
                                             for i, v in enumerate((a, minus_b, b, a))], "matrix_flat", axis=0),
                              shape], "matrix")
    # t = dst_mean - A @ src_mean
    moved = g.op("MatMul", [src_mean, g.op("Transpose", [matrix], "matrix_t", perm=[1, 0])], "moved_mean")
    shift = g.op("Sub", [g.const("dst_mean", dst_mean[None]), moved], "shift_row")
    return matrix, g.op("Reshape", [shift, g.const("shape2", np.array([2], np.int64))], "shift")


def warp(g: Nodes, image_nchw: str, height: str, width: str, matrix: str, shift: str, template: Template) -> str:
    """The (1, 3, size, size) crop of `image_nchw` (1, 3, H, W) float under x → matrix·x + shift:
    each crop pixel's centre taken back to the photo (the inverse similarity) and sampled there.
    `height` and `width`: the photo's size as float scalars."""
    size = template.size
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)), -1)
    crop_points = g.const("crop_points", grid.reshape(-1, 2))  # (size², 2): x, y of each output pixel
    # inverse of a similarity [[a, -b], [b, a]]: its transpose over a² + b²
    scale = g.op("ReduceSum", [g.op("Mul", [matrix, matrix], "m_sq"), g.const("axes_all", np.array([0, 1], np.int64))],
                 "scale2", keepdims=0)
    det = g.op("Mul", [scale, g.const("half", np.float32(0.5))], "det")  # a² + b²: the sum counts each twice
    source = g.op("Div", [g.op("MatMul", [g.op("Sub", [crop_points, shift], "unshifted"), matrix], "rotated_back"),
                          det], "source_points")  # (p - t) @ A  =  (Aᵀ (p - t))ᵀ
    # to GridSample's [-1, 1] with align_corners: -1 and 1 are the centres of the first and last pixels
    extent = g.op("Concat", [g.op("Unsqueeze", [width, g.const("ax0w", np.array([0], np.int64))], "w1"),
                             g.op("Unsqueeze", [height, g.const("ax0h", np.array([0], np.int64))], "h1")], "wh", axis=0)
    span = g.op("Max", [g.op("Sub", [extent, g.const("one_px", np.float32(1.0))], "wh_minus_1"),
                        g.const("min_span", np.float32(1.0))], "span")
    normalised = g.op("Sub", [g.op("Div", [g.op("Mul", [source, g.const("two", np.float32(2.0))], "twice"), span],
                                   "scaled"), g.const("one_b", np.float32(1.0))], "normalised")
    grid_4d = g.op("Reshape", [normalised, g.const("grid_shape", np.array([1, size, size, 2], np.int64))], "grid")
    return g.op("GridSample", [image_nchw, grid_4d], "crop", mode="bilinear", padding_mode="border", align_corners=1)


def warp_model(template: Template):
    """A model of the warp alone, for tests and other languages: `image` (H, W, 3) uint8 RGB and
    `landmarks` (5, 2) float → `crop` (size, size, 3) uint8 and `matrix` (2, 3), as `align_face`."""
    g = Nodes("warp")
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3])
    landmarks = helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [5, 2])
    as_float = g.op("Cast", ["image"], "image_float", to=TensorProto.FLOAT)
    nchw = g.op("Unsqueeze", [g.op("Transpose", [as_float], "chw", perm=[2, 0, 1]),
                              g.const("batch_axis", np.array([0], np.int64))], "nchw")
    shape = g.op("Cast", [g.op("Shape", ["image"], "image_shape")], "shape_float", to=TensorProto.FLOAT)
    height = g.op("Gather", [shape, g.const("i0", np.int64(0))], "height", axis=0)
    width = g.op("Gather", [shape, g.const("i1", np.int64(1))], "width", axis=0)
    matrix, shift = similarity_transform(g, "landmarks", template)
    crop = warp(g, nchw, height, width, matrix, shift, template)
    rounded = g.op("Clip", [g.op("Round", [crop], "rounded"), g.const("lo", np.float32(0)), g.const("hi", np.float32(255))],
                   "clipped")
    hwc = g.op("Transpose", [g.op("Squeeze", [rounded, g.const("squeeze_axis", np.array([0], np.int64))], "chw_crop")],
               "hwc", perm=[1, 2, 0])
    g.nodes.append(helper.make_node("Cast", [hwc], ["crop"], to=TensorProto.UINT8))
    g.nodes.append(helper.make_node("Concat", [matrix, g.op("Unsqueeze", [shift, g.const("ax1", np.array([1], np.int64))],
                                                              "shift_col")], ["matrix"], axis=1))
    outputs = [helper.make_tensor_value_info("crop", TensorProto.UINT8, [template.size, template.size, 3]),
               helper.make_tensor_value_info("matrix", TensorProto.FLOAT, [2, 3])]
    graph = helper.make_graph(g.nodes, "faceverify_warp", [image, landmarks], outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceverify")
