"""The face warp as ONNX nodes: five landmarks → a similarity transform onto a template, chosen as
the library chooses it (least median of squares over the two-point similarities, then least
squares over the inliers, in closed form) → the crop, sampled bilinearly with replicated borders
(GridSample). It mirrors `align.align_face`: the same template, the same pixel-centre
convention as `cv2.warpAffine` (GridSample with `align_corners`), so a graph holding it aligns a
face as the library does (`tests/test_e2e_graphs.py` measures by how much).
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper, version_converter

from ..align import Template

#: the embedder's opset (GridSample's bilinear mode is called "linear" from opset 20)
OPSET = 21


class Nodes:
    """Nodes and constants of one graph under construction, each name prefixed with `scope` (and
    numbered when a builder reuses a name: stages are written independently)."""

    def __init__(self, scope: str):
        self.scope, self.nodes, self.initializers, self._used = scope, [], [], set()

    def _name(self, name: str) -> str:
        out, number = f"{self.scope}/{name}", 1
        while out in self._used:
            number += 1
            out = f"{self.scope}/{name}_{number}"
        self._used.add(out)
        return out

    def const(self, name: str, value) -> str:
        name = self._name(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], name: str, outputs: int = 1, **attributes) -> str:
        """The node's (first) output; a node of several outputs names the others `name:1`, ..."""
        out = self._name(name)
        names = [out] + [f"{out}:{i}" for i in range(1, outputs)]
        self.nodes.append(helper.make_node(kind, inputs, names, name=out, **attributes))
        return out


def inlined(model: onnx.ModelProto, prefix: str) -> onnx.GraphProto:
    """`model`'s graph at `OPSET`, every name prefixed: to be copied into another graph."""
    if model.opset_import[0].version != OPSET:
        model = version_converter.convert_version(model, OPSET)
    return compose.add_prefix(model, prefix).graph


#: every pair of the five landmarks: the two-point similarities LMedS chooses among
PAIRS = np.array(list(itertools.combinations(range(5), 2)), np.int64)
#: OpenCV's LMedS inlier bound: 2.5 · 1.4826 · (1 + 5 / (points − 2)) · √(least median)
INLIER_FACTOR = 2.5 * 1.4826 * (1 + 5 / (5 - 2))


def _xy(g: Nodes, points: str, name: str) -> tuple[str, str]:
    """The x and y columns of a (..., 2) tensor, as (...) tensors."""
    return tuple(g.op("Gather", [points, g.const(f"{name}_{axis}_index", np.int64(i))], f"{name}_{axis}", axis=-1)
                 for i, axis in enumerate("xy"))


def _weighted_fit(g: Nodes, sx: str, sy: str, dx, dy, weights: str) -> tuple[str, str, str, str]:
    """(a, b, tx, ty) of the similarity [[a, −b], [b, a]]·s + t closest to d in weighted least
    squares over the (5,) points (weights 0 or 1): the closed form, in complex numbers
    z = Σ w·conj(s − s̄)·(d − d̄) / Σ w·|s − s̄|², t = d̄ − z·s̄."""
    total = g.op("ReduceSum", [weights], "w_total", keepdims=0)

    def mean(v, name):
        return g.op("Div", [g.op("ReduceSum", [g.op("Mul", [weights, v], f"{name}_w")], f"{name}_sum", keepdims=0),
                            total], f"{name}_mean")

    means = {n: mean(v, n) for n, v in (("sx", sx), ("sy", sy), ("dx", dx), ("dy", dy))}
    cx, cy = g.op("Sub", [sx, means["sx"]], "csx"), g.op("Sub", [sy, means["sy"]], "csy")
    ex, ey = g.op("Sub", [dx, means["dx"]], "cdx"), g.op("Sub", [dy, means["dy"]], "cdy")

    def weighted_sum(terms, name):
        return g.op("ReduceSum", [g.op("Mul", [weights, terms], f"{name}_w")], name, keepdims=0)

    real = weighted_sum(g.op("Add", [g.op("Mul", [cx, ex], "cxex"), g.op("Mul", [cy, ey], "cyey")], "re_terms"), "re")
    imag = weighted_sum(g.op("Sub", [g.op("Mul", [cx, ey], "cxey"), g.op("Mul", [cy, ex], "cyex")], "im_terms"), "im")
    norm = weighted_sum(g.op("Add", [g.op("Mul", [cx, cx], "cx2"), g.op("Mul", [cy, cy], "cy2")], "n_terms"), "norm")
    norm = g.op("Max", [norm, g.const("tiny", np.float32(1e-12))], "norm_safe")
    a, b = g.op("Div", [real, norm], "a"), g.op("Div", [imag, norm], "b")
    tx = g.op("Sub", [means["dx"], g.op("Sub", [g.op("Mul", [a, means["sx"]], "a_sx"), g.op("Mul", [b, means["sy"]], "b_sy")],
                                        "moved_x")], "tx")
    ty = g.op("Sub", [means["dy"], g.op("Add", [g.op("Mul", [b, means["sx"]], "b_sx"), g.op("Mul", [a, means["sy"]], "a_sy")],
                                        "moved_y")], "ty")
    return a, b, tx, ty


def similarity_transform(g: Nodes, landmarks: str, template: Template) -> tuple[str, str]:
    """(A, t): the 2×2 matrix [[a, −b], [b, a]] and the translation (2,) mapping the (5, 2)
    landmarks onto the template's points as `align.estimate_transform` does (OpenCV's
    `estimateAffinePartial2D` with LMedS): of the similarities through each pair of landmarks, the
    one whose median squared error over the five is least; the points within OpenCV's bound of it
    are the inliers, and the answer is the least-squares similarity over those (OpenCV refines
    over them with Levenberg-Marquardt, which reaches the same closed form). OpenCV samples the
    pairs at random where this tries all ten: 598 of 600 LFW faces agree to 1e-3."""
    dst = template.points.astype(np.float32)
    sx, sy = _xy(g, landmarks, "src")
    first, second = (g.const(f"pair_{i}", PAIRS[:, i]) for i in (0, 1))
    s1x, s1y = (g.op("Gather", [v, first], f"{v.rsplit('/', 1)[1]}_first") for v in (sx, sy))
    s2x, s2y = (g.op("Gather", [v, second], f"{v.rsplit('/', 1)[1]}_second") for v in (sx, sy))
    p, q = g.op("Sub", [s2x, s1x], "pair_dx"), g.op("Sub", [s2y, s1y], "pair_dy")
    delta = dst[PAIRS[:, 1]] - dst[PAIRS[:, 0]]
    u, v = g.const("tdx", delta[:, 0]), g.const("tdy", delta[:, 1])
    span = g.op("Max", [g.op("Add", [g.op("Mul", [p, p], "p2"), g.op("Mul", [q, q], "q2")], "pair_norm"),
                        g.const("tiny_pair", np.float32(1e-12))], "pair_norm_safe")
    # z = (u + iv) / (p + iq) per pair: the similarity through both points of the pair
    za = g.op("Div", [g.op("Add", [g.op("Mul", [u, p], "up"), g.op("Mul", [v, q], "vq")], "za_num"), span], "pair_a")
    zb = g.op("Div", [g.op("Sub", [g.op("Mul", [v, p], "vp"), g.op("Mul", [u, q], "uq")], "zb_num"), span], "pair_b")
    first_dst = dst[PAIRS[:, 0]]
    tx = g.op("Sub", [g.const("t1x", first_dst[:, 0]), g.op("Sub", [g.op("Mul", [za, s1x], "za_s1x"),
                                                                     g.op("Mul", [zb, s1y], "zb_s1y")], "pair_mx")], "pair_tx")
    ty = g.op("Sub", [g.const("t1y", first_dst[:, 1]), g.op("Add", [g.op("Mul", [zb, s1x], "zb_s1x"),
                                                                     g.op("Mul", [za, s1y], "za_s1y")], "pair_my")], "pair_ty")
    column = g.const("column", np.array([1], np.int64))
    za, zb, tx, ty = (g.op("Unsqueeze", [x, column], f"{x.rsplit('/', 1)[1]}_col") for x in (za, zb, tx, ty))
    ex = g.op("Sub", [g.op("Add", [g.op("Sub", [g.op("Mul", [za, sx], "h_asx"), g.op("Mul", [zb, sy], "h_bsy")], "h_x"), tx],
                             "h_xt"), g.const("dst_x", dst[:, 0])], "err_x")
    ey = g.op("Sub", [g.op("Add", [g.op("Add", [g.op("Mul", [zb, sx], "h_bsx"), g.op("Mul", [za, sy], "h_asy")], "h_y"), ty],
                             "h_yt"), g.const("dst_y", dst[:, 1])], "err_y")
    errors = g.op("Add", [g.op("Mul", [ex, ex], "ex2"), g.op("Mul", [ey, ey], "ey2")], "errors")  # (10 pairs, 5 points)
    three = g.const("three", np.array([3], np.int64))
    smallest = g.op("TopK", [errors, three], "smallest3", outputs=2, axis=1, largest=0, sorted=1)
    medians = g.op("Gather", [smallest, g.const("median_index", np.int64(2))], "medians", axis=1)  # 3rd of 5
    best = g.op("ArgMin", [medians], "best", axis=0, keepdims=1, select_last_index=0)
    best_errors = g.op("Squeeze", [g.op("Gather", [errors, best], "best_errors_row", axis=0),
                                   g.const("row_axis", np.array([0], np.int64))], "best_errors")
    least = g.op("Squeeze", [g.op("Gather", [medians, best], "least_median_1", axis=0),
                             g.const("median_axis", np.array([0], np.int64))], "least_median")
    bound = g.op("Max", [g.op("Mul", [least, g.const("factor2", np.float32(INLIER_FACTOR ** 2))], "bound_raw"),
                         g.const("min_bound", np.float32(1e-6))], "bound")  # (max(σ, 0.001))²
    inliers = g.op("Cast", [g.op("LessOrEqual", [best_errors, bound], "is_inlier")], "inliers", to=TensorProto.FLOAT)
    a, b, tx, ty = _weighted_fit(g, sx, sy, g.const("fit_dx", dst[:, 0]), g.const("fit_dy", dst[:, 1]), inliers)
    axis0 = g.const("stack_axis", np.array([0], np.int64))
    flat = g.op("Concat", [g.op("Unsqueeze", [x, axis0], f"m{i}") for i, x in
                           enumerate((a, g.op("Neg", [b], "minus_b"), b, a))], "matrix_flat", axis=0)
    matrix = g.op("Reshape", [flat, g.const("shape22", np.array([2, 2], np.int64))], "matrix")
    shift = g.op("Concat", [g.op("Unsqueeze", [tx, axis0], "tx1"), g.op("Unsqueeze", [ty, axis0], "ty1")], "shift", axis=0)
    return matrix, shift


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
    return g.op("GridSample", [image_nchw, grid_4d], "crop", mode="linear", padding_mode="border", align_corners=1)


def photo_nodes(g: Nodes, image: str = "image") -> tuple[str, str, str]:
    """The graph input `image` ((H, W, 3) uint8 RGB) as (1, 3, H, W) float, and H and W as float
    scalars."""
    nchw = g.op("Unsqueeze", [g.op("Transpose", [g.op("Cast", [image], "image_float", to=TensorProto.FLOAT)], "chw",
                                   perm=[2, 0, 1]), g.const("batch_axis", np.array([0], np.int64))], "nchw")
    shape = g.op("Cast", [g.op("Shape", [image], "image_shape")], "shape_float", to=TensorProto.FLOAT)
    height = g.op("Gather", [shape, g.const("i0", np.int64(0))], "height", axis=0)
    width = g.op("Gather", [shape, g.const("i1", np.int64(1))], "width", axis=0)
    return nchw, height, width


def aligned_crop(g: Nodes, nchw: str, height: str, width: str, landmarks: str,
                 template: Template) -> tuple[str, str, str]:
    """(the (1, size, size, 3) uint8 crop `align_face` makes of the photo for `landmarks`, the
    similarity's matrix and shift)."""
    matrix, shift = similarity_transform(g, landmarks, template)
    crop = warp(g, nchw, height, width, matrix, shift, template)
    clipped = g.op("Clip", [g.op("Round", [crop], "rounded"), g.const("lo", np.float32(0)), g.const("hi", np.float32(255))],
                   "clipped")
    nhwc = g.op("Cast", [g.op("Transpose", [clipped], "nhwc_float", perm=[0, 2, 3, 1])], "crop_u8", to=TensorProto.UINT8)
    return nhwc, matrix, shift


def warp_model(template: Template):
    """A model of the warp alone, for tests and other languages: `image` (H, W, 3) uint8 RGB and
    `landmarks` (5, 2) float → `crop` (size, size, 3) uint8 and `matrix` (2, 3), as `align_face`."""
    g = Nodes("warp")
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3])
    landmarks = helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [5, 2])
    crop, matrix, shift = aligned_crop(g, *photo_nodes(g), "landmarks", template)
    g.nodes.append(helper.make_node("Squeeze", [crop, g.const("squeeze_axis", np.array([0], np.int64))], ["crop"]))
    g.nodes.append(helper.make_node("Concat", [matrix, g.op("Unsqueeze", [shift, g.const("ax1", np.array([1], np.int64))],
                                                              "shift_col")], ["matrix"], axis=1))
    outputs = [helper.make_tensor_value_info("crop", TensorProto.UINT8, [template.size, template.size, 3]),
               helper.make_tensor_value_info("matrix", TensorProto.FLOAT, [2, 3])]
    graph = helper.make_graph(g.nodes, "faceverify_warp", [image, landmarks], outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceverify")
