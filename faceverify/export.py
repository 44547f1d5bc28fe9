"""ONNX export: the embedder (normalisation and metadata inside) and the three MTCNN stages.

The exported embedder takes what `align_face` produces, (N, size, size, 3) RGB uint8 (or float32
0..255) for each template the model names, with a dynamic batch, and returns L2-normalised
embeddings; its `metadata_props` carry the checkpoint's metadata (dim, templates, members,
thresholds, weights hash), so an .onnx file is a complete model on its own. An ensemble becomes
one graph: each member's graph (exported from torch, or the ONNX graph it is stored as) behind a
shared input per template, then the same unit-norm, √weight, concatenate, re-normalise steps as
`models.Ensemble`. Weights stored in fp16 stay fp16 in the file, cast to fp32 on load.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ModelError
from .runtime import MEMBER_NORMS
from .metadata import ModelMetadata
from .onnx_graph import half_storage, prelu_as_relu
from .models import Ensemble, load_checkpoint
from .models.ensemble import kind
from .runtime import METADATA_KEY
from .torch_onnx import export_module, torch_to_onnx

MTCNN_STAGES = {"pnet": (3, 12, 12), "rnet": (3, 24, 24), "onet": (3, 48, 48)}
PRECISIONS = ("fp32", "fp16")


class _NHWCEmbedder(nn.Module):
    """NHWC crops as produced by `align_face` → the NCHW embedder."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, faces):
        return self.model(faces.permute(0, 3, 1, 2))


def export_embedder(checkpoint: str | Path, out: str | Path, input_dtype: str = "uint8",
                    precision: str = "fp32") -> ModelMetadata:
    """Export a checkpoint to ONNX; returns the metadata written into the file. `precision`
    "fp16" halves weights and activations (for GPUs: half the memory traffic); inputs stay as
    `input_dtype`, the embeddings come out float32."""
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
    model, metadata = load_checkpoint(checkpoint)
    if isinstance(model, Ensemble):
        if precision != "fp32":
            raise ModelError("fp16 compute is exported for single networks only; an ensemble keeps "
                             "fp16-stored weights in fp16 on its own")
        proto = ensemble_graph(model, input_dtype, fp16_weights=metadata.weights_dtype == "float16")
    else:
        wrapper = _NHWCEmbedder(model.half() if precision == "fp16" else model).eval()
        size = metadata.templates[0].size
        dtype = torch.uint8 if input_dtype == "uint8" else torch.float32
        proto = torch_to_onnx(wrapper, torch.zeros(2, size, size, 3, dtype=dtype), "faces", "embeddings")
    metadata = metadata.replace(onnx={"opset": _default_opset(proto), "input_dtype": input_dtype, "precision": precision})
    _set_metadata(proto, metadata.to_dict())
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return metadata


def ensemble_graph(model: Ensemble, input_dtype: str = "uint8", fp16_weights: bool = False):
    """One ONNX graph for `model` (see the module docstring): inputs `faces_<template>`
    (N, size, size, 3) in `model.templates` order, outputs "embeddings" and `MEMBER_NORMS`."""
    from onnx import TensorProto, compose, helper, numpy_helper, version_converter

    graphs = [kind(spec.arch).onnx_graph(network, spec.template.size)
              for spec, network in zip(model.specs, model.networks)]
    opset = max(_default_opset(g) for g in graphs)
    graphs = [g if _default_opset(g) == opset else version_converter.convert_version(g, opset)
              for g in graphs]
    if fp16_weights:  # weights trained or kept in fp16: stored so, the same numbers
        graphs = [half_storage(g) for g in graphs]
    graphs = [prelu_as_relu(g) for g in graphs]  # CPU speed, same arithmetic
    dtype = TensorProto.UINT8 if input_dtype == "uint8" else TensorProto.FLOAT
    inputs, nodes, initializers, value_info = [], [], [], []
    for t in model.templates:
        name = f"faces_{t.name.replace('-', '_')}"
        inputs.append(helper.make_tensor_value_info(name, dtype, ["batch", t.size, t.size, 3]))
        nodes += [helper.make_node("Cast", [name], [f"{name}/float"], to=TensorProto.FLOAT),
                  helper.make_node("Transpose", [f"{name}/float"], [f"{name}/nchw"], perm=[0, 3, 1, 2])]
    parts, norms = [], []
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), "axis_1"))
    for i, (spec, graph) in enumerate(zip(model.specs, graphs)):
        graph = compose.add_prefix(graph, f"m{i}/")
        stored = {init.name for init in graph.graph.initializer}
        (member_input,) = [v.name for v in graph.graph.input if v.name not in stored]
        template_input = inputs[[t.name for t in model.templates].index(spec.template.name)].name
        nodes.append(helper.make_node("Identity", [f"{template_input}/nchw"], [member_input]))
        nodes += list(graph.graph.node)
        initializers += list(graph.graph.initializer)
        value_info += list(graph.graph.value_info)
        unit, raw = f"m{i}/unit", graph.graph.output[0].name
        nodes += [helper.make_node("LpNormalization", [raw], [unit], axis=1, p=2),
                  helper.make_node("Mul", [raw, raw], [f"m{i}/squares"]),
                  helper.make_node("ReduceSum", [f"m{i}/squares", "axis_1"], [f"m{i}/sum"], keepdims=1),
                  helper.make_node("Sqrt", [f"m{i}/sum"], [f"m{i}/norm"])]
        norms.append(f"m{i}/norm")
        centre = getattr(model, f"centre_{i}")
        if centre is not None:
            initializers.append(numpy_helper.from_array(centre.numpy().astype(np.float32)[None], f"m{i}/centre"))
            nodes += [helper.make_node("Sub", [unit, f"m{i}/centre"], [f"m{i}/centred"]),
                      helper.make_node("LpNormalization", [f"m{i}/centred"], [f"{unit}2"], axis=1, p=2)]
            unit = f"{unit}2"
        initializers.append(numpy_helper.from_array(np.array(math.sqrt(spec.weight), np.float32), f"m{i}/scale"))
        nodes.append(helper.make_node("Mul", [unit, f"m{i}/scale"], [f"m{i}/part"]))
        parts.append(f"m{i}/part")
    nodes += [helper.make_node("Concat", parts, ["joined"], axis=1),
              helper.make_node("LpNormalization", ["joined"], ["embeddings"], axis=1, p=2),
              helper.make_node("Concat", norms, [MEMBER_NORMS], axis=1)]
    outputs = [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", model.embedding_dim]),
               helper.make_tensor_value_info(MEMBER_NORMS, TensorProto.FLOAT, ["batch", len(norms)])]
    graph = helper.make_graph(nodes, "faceverify-ensemble", inputs, outputs, initializers, value_info=value_info)
    imports = {}
    for g in graphs:
        for o in g.opset_import:
            imports[o.domain] = max(imports.get(o.domain, 0), o.version)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in imports.items()],
                              producer_name="faceverify")
    proto.ir_version = max(g.ir_version for g in graphs)
    return proto


def _default_opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_mtcnn(out_dir: str | Path) -> list[Path]:
    """P-, R- and O-net from the weights inside facenet-pytorch → out_dir/{pnet,rnet,onet}.onnx."""
    import onnx
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, net in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
        net.eval()
        shape = MTCNN_STAGES[name]
        outputs = ["reg", "landmarks", "prob"] if name == "onet" else ["reg", "prob"]
        dynamic = {0: "batch", 2: "height", 3: "width"} if name == "pnet" else {0: "batch"}
        example = torch.zeros(2, *shape) if name != "pnet" else torch.zeros(1, 3, 40, 52)
        path = out_dir / f"{name}.onnx"
        export_module(net, example, path, ["image"], outputs, {"image": dynamic})
        proto = onnx.load(str(path))
        _set_metadata(proto, {"stage": name, "source": "facenet-pytorch MTCNN weights"})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        paths.append(path)
    return paths


def _set_metadata(proto, metadata: dict) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    for key in ("arch", "embedding_dim", "weights_sha256"):
        if key in metadata:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(metadata[key])

