"""The bundled ensemble with dlib's member in int8, a lever measured and not shipped: the same
graph inputs, outputs and metadata as weights/faceverify-default.onnx, embeddings at cosine 0.9998
of it, ~16 % faster on this CPU (bench/bench_embedding.py).

    OMP_WAIT_POLICY=PASSIVE python training/fast_members.py \
        --out /root/faceverify-data/fast/faceverify-default-fast.onnx [--no-int8-dlib]

What it changes (profiles on onnxruntime 1.32, 2-core AVX-512 CPU):

* weights as plain float32: SFace's int8 block-quantised weights expanded, dlib's fp16 casts and
  the batch-norms folded into the convolutions (onnxruntime's basic, provider-independent
  optimisation, saved): what every session build does anyway (`fold_dequantize`).
* PRelu as (1 - a) * Relu(x) + a * x (`faceverify.onnx_graph.prelu_as_relu`): every export does
  this now, so on the bundled file it changes nothing.
* dlib's ResNet member in int8 (default; `--no-int8-dlib` keeps it float): onnxruntime static
  quantisation, QOperator format, per-channel int8 weights, uint8 activations with MinMax ranges
  calibrated on aligned crops of LFW split=train photos. QOperator, not QDQ, because
  `OnnxEmbedder` builds sessions with QDQ fusion disabled (`session.disable_quant_qdq`), where a
  QDQ graph would run in float. SFace is left in float: int8 (even of its pointwise convolutions
  only) moved its embeddings to cosine 0.995 median, outside parity.
"""
from __future__ import annotations

import argparse
import csv
import random
import tempfile
from pathlib import Path

import numpy as np
import onnx

from faceverify.onnx_graph import prelu_as_relu

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "weights" / "faceverify-default.onnx"
LFW = (ROOT / ".." / "shared" / "data" / "lfw").resolve()
DLIB_PREFIX = "m1/"  # node-name prefix of the dlib member in `export.ensemble_graph`'s graph
#: what the int8 dlib member quantises (its residual Adds, pads and pools stay in uint8 between convs)
INT8_OPS = ["Conv", "MatMul", "Add", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad"]


def float_graph(src: Path = BUNDLED) -> onnx.ModelProto:
    """`src` with plain float32 weights (see the module docstring); inputs, outputs and metadata
    props come through unchanged."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        options.optimized_model_filepath = str(Path(tmp) / "float.onnx")
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def train_crops(count: int = 512, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Aligned crops (one array per template of the bundled model) of `count` random LFW
    split=train photos, as the bundled `Verifier` aligns them: the calibration set."""
    from faceverify import Verifier
    from faceverify.detect import AlignedFace

    rows = [r for r in csv.DictReader(open(LFW / "manifest.csv")) if r["split"] == "train"]
    random.Random(seed).shuffle(rows)
    verifier = Verifier(BUNDLED, face_policy="largest")
    faces = [r for r in verifier.analyze([LFW / r["path"] for r in rows[:count]]) if isinstance(r, AlignedFace)]
    return tuple(np.stack(c) for c in zip(*(f.crops for f in faces)))


def int8_member(model: onnx.ModelProto, crops: tuple[np.ndarray, ...], prefix: str = DLIB_PREFIX,
                batch: int = 32) -> onnx.ModelProto:
    """`model` with the member whose nodes start with `prefix` quantised to int8 (QOperator,
    per-channel weights, MinMax activation ranges from `crops`, fed through the whole graph)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [i.name for i in model.graph.input]

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(crops[0]):
                return None
            feed = {n: c[self.start:self.start + batch] for n, c in zip(names, crops)}
            self.start += batch
            return feed

    with tempfile.TemporaryDirectory() as tmp:
        src, shaped, out = (str(Path(tmp) / f) for f in ("float.onnx", "shaped.onnx", "int8.onnx"))
        onnx.save(model, src)
        quant_pre_process(src, shaped, skip_optimization=True)
        member = [n.name for n in onnx.load(shaped).graph.node if n.name.startswith(prefix)]
        quantize_static(shaped, out, Crops(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=INT8_OPS, nodes_to_quantize=member,
                        calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(out)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def build(src: Path = BUNDLED, int8_dlib: bool = True, calibration: int = 512) -> onnx.ModelProto:
    model = prelu_as_relu(float_graph(src))
    if int8_dlib:
        model = int8_member(model, train_crops(calibration))
    _drop_unused_initializers(model)
    reference = onnx.load(str(src))
    del model.metadata_props[:]  # onnxruntime's saved graph reorders them
    model.metadata_props.extend(reference.metadata_props)
    if [(i.name, i.type) for i in model.graph.input] != [(i.name, i.type) for i in reference.graph.input] or \
            [o.name for o in model.graph.output] != [o.name for o in reference.graph.output]:
        raise RuntimeError("the fast graph's inputs or outputs differ from the bundled model's")
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=BUNDLED)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-int8-dlib", dest="int8_dlib", action="store_false")
    parser.add_argument("--calibration", type=int, default=512, help="LFW split=train photos")
    args = parser.parse_args()
    if args.out.resolve().parent == (ROOT / "weights").resolve():
        parser.error("write the fast model outside weights/")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(args.src, args.int8_dlib, args.calibration), str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
