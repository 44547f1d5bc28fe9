"""ONNX export: the embedder (normalisation and metadata inside) and the three MTCNN stages.

The exported embedder takes what `align_face` produces, (N, 112, 112, 3) RGB uint8 (or float32
0..255), with a dynamic batch, and returns L2-normalised embeddings; its `metadata_props` carry
the checkpoint's metadata (dim, template, thresholds, weights hash), so an .onnx file is a
complete model on its own.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .metadata import ModelMetadata
from .models import load_checkpoint
from .runtime import METADATA_KEY

OPSET = 18  # onnxruntime >= 1.20 runs it; the dynamo exporter's lowest well-supported opset
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
    wrapper = _NHWCEmbedder(model.half() if precision == "fp16" else model).eval()
    size = metadata.input_size
    dtype = torch.uint8 if input_dtype == "uint8" else torch.float32
    example = torch.zeros(2, size, size, 3, dtype=dtype)
    _export(wrapper, example, out, ["faces"], ["embeddings"], {"faces": {0: "batch"}})
    proto = onnx.load(str(out))
    metadata = metadata.replace(onnx={"opset": OPSET, "input_dtype": input_dtype, "precision": precision})
    _set_metadata(proto, metadata.to_dict())
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return metadata


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
        _export(net, example, path, ["image"], outputs, {"image": dynamic})
        proto = onnx.load(str(path))
        _set_metadata(proto, {"stage": name, "source": "facenet-pytorch MTCNN weights"})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        paths.append(path)
    return paths


def _export(module, example, out, input_names, output_names, dynamic_axes) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(out), input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          opset_version=OPSET, dynamo=False)


def _set_metadata(proto, metadata: dict) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    for key in ("arch", "embedding_dim", "input_size", "weights_sha256"):
        if key in metadata:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(metadata[key])

