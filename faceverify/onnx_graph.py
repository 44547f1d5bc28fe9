"""Graph edits. The repairs of third-party ONNX files (SFace in `models/sface.py`, YuNet in
`faceverify/detect/yunet.py`) change how a graph is declared (shapes, unused tensors, metadata),
never a weight. The rest are for the files faceverify writes: `prelu_as_relu` and
`dequantize_as_arithmetic`, the same arithmetic in operators onnxruntime runs faster;
`shared_initializers`, equal weights kept once; `half_storage`, float32 weights stored in float16
(the ensemble's fp16-trained members losslessly, the end-to-end graph's `--precision fp16`
rounded)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError


def set_symbolic_dims(value: onnx.ValueInfoProto, names: dict[int, str]) -> None:
    """Declare the dimensions of `value` at the given positions symbolic ({position: name})."""
    dims = value.type.tensor_type.shape.dim
    for position, name in names.items():
        if position < len(dims):
            dims[position].Clear()
            dims[position].dim_param = name


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def activation_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor that depends on a real (non-initializer) graph input."""
    inits = {i.name for i in graph.initializer}
    live = {v.name for v in graph.input if v.name not in inits}
    for node in graph.node:  # nodes are topologically sorted (checked by check_model)
        if any(name in live for name in node.input):
            live.update(node.output)
    return live


def copy_batch_in_reshapes(graph: onnx.GraphProto) -> None:
    """Reshapes of activations to a constant shape starting with 1 would pin the batch: make that
    1 a 0, which copies the input's dimension (allowzero defaults to 0)."""
    live = activation_names(graph)
    by_name = {i.name: i for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[0] in live and node.input[1] in by_name:
            shape = numpy_helper.to_array(by_name[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                if any(r.op_type != "Reshape" or r.input[0] not in live for r in readers[node.input[1]]):
                    raise ModelError(f"the shape {node.input[1]} of {node.name} is also read by "
                                     "nodes that do not reshape activations")
                shape[0] = 0
                by_name[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def finalise(model: onnx.ModelProto, metadata: dict) -> onnx.ModelProto:
    """The last steps of every repair: the IR version its opsets need, where the file came from in
    its metadata, shapes inferred afresh (strictly) and the whole model checked."""
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(model.opset_import))
    set_metadata(model, metadata)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def prelu_as_relu(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every PRelu of constant slope `a` written as (1 - a) · Relu(x) + a · x: equal
    for any slope, within float rounding (the bundled model's embeddings within 1.4e-7). Why: onnxruntime runs a
    per-channel PRelu through its generic broadcasting kernel (about 4× a Relu) and, having no
    blocked-layout (NCHWc) PRelu, reorders every activation out of that layout and back around it;
    the Relu and per-channel Muls stay in it (SFace, 40 % of whose time its PRelus took, embeds
    1.6× faster; `bench/bench_embedding.py`)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    slopes = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in slopes:
            nodes.append(node)
            continue
        (x, slope), (y,), name = node.input, node.output, node.name or node.output[0]
        graph.initializer.append(numpy_helper.from_array(1 - slopes[slope].astype(np.float32),
                                                         f"{name}/one_minus_slope"))
        nodes += [helper.make_node("Relu", [x], [f"{name}/relu"], name=f"{name}/relu"),
                  helper.make_node("Mul", [x, slope], [f"{name}/ax"], name=f"{name}/ax"),
                  helper.make_node("Mul", [f"{name}/relu", f"{name}/one_minus_slope"], [f"{name}/bx"],
                                   name=f"{name}/bx"),
                  helper.make_node("Add", [f"{name}/bx", f"{name}/ax"], [y], name=f"{name}/sum")]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def half_storage(model: onnx.ModelProto, lossless_only: bool = True) -> onnx.ModelProto:
    """`model` (changed in place) with its float32 weights stored as float16, each behind a Cast back
    to float32: about half the file, computed in float32 as before (onnxruntime folds the casts when
    it loads the graph; its CPU and wasm kernels have no half-precision convolutions).
    `lossless_only`: only the tensors whose values are float16 numbers already (weights trained or
    kept in fp16: the same numbers); otherwise every float32 tensor of 64 values or more (rounded),
    but those with values beyond float16's range."""
    casts, kept = [], []
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.FLOAT else None  # others stay
        if values is None or values.size < 64 or np.abs(values).max() > np.finfo(np.float16).max:
            kept.append(init)
            continue
        half = values.astype(np.float16)
        if not lossless_only or np.array_equal(half.astype(np.float32), values):
            kept.append(numpy_helper.from_array(half, f"{init.name}/fp16"))
            casts.append(helper.make_node("Cast", [f"{init.name}/fp16"], [init.name], to=onnx.TensorProto.FLOAT))
        else:
            kept.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def shared_initializers(graph: onnx.GraphProto) -> None:
    """Initializers equal in type, shape and bytes kept once, every reader (in subgraphs too) reading
    the first: onnxruntime would merge them when it loads the graph, but cannot rename what an `If`
    branch reads from outside and warns about each."""
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for init in graph.initializer:
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in first:
            renamed[init.name] = first[key]
        else:
            first[key] = init.name
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)

    def rename(g: onnx.GraphProto) -> None:
        for node in g.node:
            node.input[:] = [renamed.get(name, name) for name in node.input]
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    rename(sub)

    rename(graph)


def dequantize_as_arithmetic(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (changed in place) with each DequantizeLinear of stored weights written as
    (Cast(x) − zero point) · scale: the same float32 numbers, but ops onnxruntime folds into
    float weights when it loads the graph, in every binding and with default options (it keeps
    DequantizeLinear for its quantised kernels and would expand the weights at every run; the
    library's sessions ask for the fold with `session.disable_quant_qdq`). Per-tensor, per-axis and
    blocked quantisation; the file keeps its int8 weights."""
    weights = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not all(name in weights for name in node.input if name) or \
                weights[node.input[1]].data_type != onnx.TensorProto.FLOAT or not _fits(node, weights):
            nodes.append(node)  # left to onnxruntime: activations, float16 scales, layouts it would refuse
            continue
        x, scale, *rest = node.input
        zero = rest[0] if rest and rest[0] else None
        rank, axis = len(weights[x].dims), attr(node, "axis", 1)
        axis, block = axis % rank if rank else 0, attr(node, "block_size", 0)
        name, out = node.name or node.output[0], node.output[0]

        def spread(param: str) -> str:
            """`param` broadcastable against x: as is when scalar, along `axis` when per-axis, its
            blocks repeated along `axis` when blocked."""
            dims = list(weights[param].dims)
            if not dims or rank == 0:
                return param
            if block:
                index = f"{name}/{param.rsplit('/', 1)[-1]}_blocks"
                model.graph.initializer.append(numpy_helper.from_array(
                    np.arange(weights[x].dims[axis], dtype=np.int64) // block, index))
                nodes.append(helper.make_node("Gather", [param, index], [f"{index}/spread"], axis=axis))
                return f"{index}/spread"
            shape = f"{name}/{param.rsplit('/', 1)[-1]}_shape"
            model.graph.initializer.append(numpy_helper.from_array(
                np.array([-1 if i == axis else 1 for i in range(rank)], np.int64), shape))
            nodes.append(helper.make_node("Reshape", [param, shape], [f"{shape}/spread"]))
            return f"{shape}/spread"

        value = f"{name}/float"
        nodes.append(helper.make_node("Cast", [x], [value], to=onnx.TensorProto.FLOAT))
        if zero is not None:
            nodes.append(helper.make_node("Cast", [spread(zero)], [f"{name}/zero"], to=onnx.TensorProto.FLOAT))
            nodes.append(helper.make_node("Sub", [value, f"{name}/zero"], [f"{name}/centred"]))
            value = f"{name}/centred"
        nodes.append(helper.make_node("Mul", [value, spread(scale)], [out]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _fits(node: onnx.NodeProto, weights: dict) -> bool:
    """Whether a DequantizeLinear's scale has a shape its layout allows: one value (per tensor),
    one per index of `axis`, or one per `block_size` indices of it (blocked)."""
    x, scale = (list(weights[name].dims) for name in node.input[:2])
    if len(scale) == 0 or scale == [1] and not attr(node, "block_size", 0):
        return True
    axis, block = attr(node, "axis", 1) % max(len(x), 1), attr(node, "block_size", 0)
    if block:
        return len(scale) == len(x) and all(s == (-(-d // block) if i == axis else d)
                                            for i, (s, d) in enumerate(zip(scale, x)))
    return scale == [x[axis]]
