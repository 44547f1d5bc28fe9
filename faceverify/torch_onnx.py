"""A torch module as ONNX: the one exporter call (opset, dynamic batch) the model kinds and `export`
share, below both (the models never import `export`)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

OPSET = 18  # onnxruntime >= 1.20 runs it; the dynamo exporter's lowest well-supported opset


def export_module(module: nn.Module, example: torch.Tensor, out, input_names, output_names, dynamic_axes) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(out), input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          opset_version=OPSET, dynamo=False)


def torch_to_onnx(module: nn.Module, example: torch.Tensor, input_name: str = "image",
                  output_name: str = "embedding"):
    """A module taking one tensor as an in-memory ONNX model (dynamic batch)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_module(module, example, path, [input_name], [output_name], {input_name: {0: "batch"}})
        return onnx.load(str(path))
