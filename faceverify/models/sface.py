"""OpenCV Zoo's SFace face recogniser, repaired for onnxruntime and converted for torch.

The file is `face_recognition_sface_2021dec_int8bq.onnx` (10.7 MB) from OpenCV Zoo's
`models/face_recognition_sface`, licensed Apache-2.0: a MobileFaceNet-style network (SFace loss)
whose 29 Conv/Gemm weights are stored "int8 block quantised": int8 initializers with per-block
float scales and int8 zero points, expanded at run time by `DequantizeLinear(block_size=...)`
(opset 21). It takes an aligned face, (N, 3, 112, 112) float32 RGB 0..255 NCHW, aligned to the
ArcFace 112×112 five-point template (`faceverify.align.ARCFACE_112`, the same points as OpenCV's
`FaceRecognizerSF.alignCrop`), normalises it inside the graph ((x − 127.5) / 128), and returns a
128-d embedding that is not L2-normalised (OpenCV's `match` normalises before the cosine).
OpenCV feeds it `blobFromImage(bgr, 1, (112, 112), 0, swapRB=True)`, hence RGB.

What is wrong with the graph as shipped (`repair` fixes all of it):

* 29 stale graph inputs: the fp32 weights that quantisation replaced (`conv_1_conv2d_weight`, ...,
  `pre_fc1_weight`, `pre_fc1_bias`) are still declared as graph inputs although no node reads
  them and no initializer backs them, so onnxruntime demands them as feeds ("Required inputs
  ... are missing") and refuses to run.
* the 145 real initializers (BatchNorm, PRelu, the input scalars) are also listed as graph
  inputs, which makes them overridable and stops onnxruntime from constant-folding them;
* two unused initializers (`pre_fc1_{weight,bias}_shape`), value_info stamped with batch 1, and
  IR version 6 although opset 21 needs IR 10;
* the batch dimension is fixed to 1 on the input (`data`) and output (`fc1`). No Reshape acts on
  activations (the 27 Reshapes only reshape weights; the head uses Flatten(axis=1)), so making
  the batch symbolic is enough for batched inference.

`repair` also renames the input to "faces" and the output to "embeddings" and drops the
(inference-time identity) Dropout so that the torch module is deterministic in either mode.

Why dequantise and convert: onnx2torch 1.5.15 supports opsets up to 17 and DequantizeLinear with
`block_size` exists only from opset 21, so `dequantize` replaces every DequantizeLinear of
constant initializers by the fp32 weight computed exactly as onnxruntime does
((q − zero_point) × scale, one scale per block along `axis`; bit-identical) and folds the weight
Reshapes; the fp32 graph can then be converted to opset 17 and to torch (`to_torch`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError
from ..onnx_graph import attr, copy_batch_in_reshapes, finalise, remove_unused_initializers, set_symbolic_dims

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
SFACE_LICENCE = "Apache-2.0 (OpenCV Zoo, models/face_recognition_sface)"
#: Names of the repaired graph's one input and one output.
INPUT_NAME = "faces"
OUTPUT_NAME = "embeddings"
#: Aligned crop side, embedding width.
INPUT_SIZE = 112
EMBEDDING_DIM = 128
BATCH_DIM = "batch"


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def _bypass(graph: onnx.GraphProto, node: onnx.NodeProto) -> None:
    """Remove a one-in/one-out identity node, rewiring its consumers to its input."""
    src, dst = node.input[0], node.output[0]
    graph.node.remove(node)
    if any(o.name == dst for o in graph.output):  # keep the graph output's name
        for other in graph.node:
            other.output[:] = [dst if n == src else n for n in other.output]
            other.input[:] = [dst if n == src else n for n in other.input]
        for value in graph.input:
            if value.name == src:
                value.name = dst
    else:
        for other in graph.node:
            other.input[:] = [src if n == dst else n for n in other.input]


def repair(model: onnx.ModelProto) -> onnx.ModelProto:
    """A runnable copy of the SFace graph: stale inputs removed, initializers no longer inputs,
    input "faces" (batch, 3, 112, 112) and output "embeddings" (batch, 128) with a symbolic batch,
    Dropout removed. Idempotent; the weights stay int8 block-quantised."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    # graph inputs: only the ones a node reads and no initializer backs
    real = [v for v in graph.input if v.name not in inits and v.name in consumed]
    if len(real) != 1 or len(graph.output) != 1:
        raise ModelError(f"expected one image input and one output, found inputs "
                         f"{[v.name for v in real]} and outputs {[o.name for o in graph.output]}")
    del graph.input[:]
    graph.input.extend(real)

    for node in [n for n in graph.node if n.op_type == "Dropout"]:
        if len(node.output) > 1 and node.output[1]:
            raise ModelError("Dropout's mask output is used; cannot remove it")
        _bypass(graph, node)
    consumed = {name for node in graph.node for name in node.input}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in consumed]:
        graph.node.remove(node)
    remove_unused_initializers(graph)

    _rename(graph, graph.input[0].name, INPUT_NAME)
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    set_symbolic_dims(graph.input[0], {0: BATCH_DIM})
    set_symbolic_dims(graph.output[0], {0: BATCH_DIM})
    copy_batch_in_reshapes(graph)  # none in this file (its Reshapes only reshape weights): a guard
    # the shipped value_info carries batch-1 shapes; let shape inference recompute them
    del graph.value_info[:]
    return finalise(model, {"source": f"OpenCV Zoo {SFACE_FILE} (sha256 {SFACE_SHA256})",
                         "licence": SFACE_LICENCE,
                         "input": "faces: (N, 3, 112, 112) float32 RGB 0..255, ArcFace-112 aligned",
                         "output": "embeddings: (N, 128) float32, not L2-normalised"})


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                      axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21) as onnxruntime computes it: per tensor, per axis or per
    block along `axis`; (int32(q) − int32(zero_point)) converted to float, times the scale."""
    q = np.asarray(q)
    scale = np.asarray(scale)
    zp = np.zeros_like(scale, dtype=q.dtype) if zero_point is None else np.asarray(zero_point)
    if scale.ndim == 0 or scale.size == 1 and scale.ndim <= 1 and block_size == 0:
        s, z = scale.reshape(()), zp.reshape(())  # per tensor
    else:
        axis = axis % q.ndim
        if block_size == 0:  # per axis: a 1-D scale along `axis`
            shape = [1] * q.ndim
            shape[axis] = q.shape[axis]
            s, z = scale.reshape(shape), zp.reshape(shape)
        else:  # blocked: scale has q's shape with ceil(D / block_size) along `axis`
            if scale.shape[axis] != -(-q.shape[axis] // block_size):
                raise ModelError(f"scale shape {scale.shape} does not match {q.shape} in blocks of "
                                 f"{block_size} along axis {axis}")
            idx = np.arange(q.shape[axis]) // block_size
            s, z = np.take(scale, idx, axis=axis), np.take(zp, idx, axis=axis)
    diff = q.astype(np.int32) - z.astype(np.int32)
    return diff.astype(scale.dtype) * s


def dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp32 copy: every DequantizeLinear of constant initializers becomes its fp32 result, and
    Reshapes of constants are folded, so the Conv/Gemm weights are plain initializers. The graph
    is otherwise unchanged (same inputs, outputs and opset); repair it first."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    graph_inputs = {v.name for v in graph.input}
    new_nodes = []
    for node in graph.node:
        if (node.op_type in ("DequantizeLinear", "Reshape") and node.domain in ("", "ai.onnx")
                and all(n in consts and n not in graph_inputs for n in node.input if n)):
            if node.op_type == "DequantizeLinear":
                args = [consts[n] if n else None for n in node.input] + [None] * 2
                value = dequantize_linear(args[0], args[1], args[2], axis=attr(node, "axis", 1),
                                          block_size=attr(node, "block_size", 0))
            else:
                data, shape = consts[node.input[0]], consts[node.input[1]].astype(np.int64)
                if attr(node, "allowzero", 0) == 0:  # 0 copies the input's dimension
                    shape = np.array([data.shape[i] if v == 0 else v for i, v in enumerate(shape)])
                value = data.reshape(shape)
            consts[node.output[0]] = value
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    remove_unused_initializers(graph)
    left = [n.name or n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"]
    if left:
        raise ModelError(f"DequantizeLinear of non-constant inputs left: {left}")
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def to_torch(model_bytes_or_proto, opset: int = 17):
    """A torch module (eval mode) of the fp32 graph: takes (N, 3, 112, 112) RGB 0..255 as float
    or uint8 and returns (N, 128). Repairs (idempotent), dequantises, converts the opset to 17
    and converts with onnx2torch."""
    try:
        import onnx2torch
    except ImportError:
        raise ModelError("SFace on the torch path needs onnx2torch: pip install 'faceverify[torch]' "
                         "(or use the .onnx model)") from None
    import torch
    from onnx import version_converter

    model = model_bytes_or_proto
    if isinstance(model, (bytes, bytearray, memoryview)):
        model = onnx.load_from_string(bytes(model))
    fp32 = dequantize(repair(model))
    converted = version_converter.convert_version(fp32, opset)
    onnx.checker.check_model(converted)
    net = onnx2torch.convert(converted)

    class SFaceTorch(torch.nn.Module):
        """SFace: (N, 3, 112, 112) RGB 0..255 (float or uint8) → (N, 128), unnormalised."""

        def __init__(self, graph_module):
            super().__init__()
            self.net = graph_module

        def forward(self, faces):
            if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
                raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB faces, got "
                                 f"{tuple(faces.shape)}")
            if not faces.is_floating_point():
                faces = faces.float()
            return self.net(faces)

    return SFaceTorch(net).eval()


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_bytes(data: bytes, name: str = SFACE_FILE) -> None:
    """Raise ModelError unless `data` is the published SFace file."""
    found = hashlib.sha256(data).hexdigest()
    if found != SFACE_SHA256:
        raise ModelError(f"{name}: sha256 {found} is not that of {SFACE_FILE} ({SFACE_SHA256}); "
                         "the file is corrupt or a different model")


def load_checked(path) -> bytes:
    """The SFace file at `path`, checked against its sha256 and repaired, serialised."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the SFace model {path}: {exc.strerror or exc}") from exc
    check_bytes(data, str(path))
    return repair(onnx.load_from_string(data)).SerializeToString()
