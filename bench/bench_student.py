"""What a single-network student would save (issue 24's cost bar: ≤ 60 % of the ensemble's
embedding cost), side by side in one run on the same real aligned faces: the bundled ensemble
(SFace + dlib ResNet) against a dlib-ResNet student exported to ONNX, both on onnxruntime, batch 32.

    python bench/bench_student.py STUDENT.pt      # e.g. a training run's best.pt
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, lfw_photos, median_seconds, table

from faceverify.detect import OnnxMTCNN, detect_and_align
from faceverify.export import export_embedder
from faceverify.images import load_rgb
from faceverify.runtime import OnnxEmbedder

ENSEMBLE = ROOT / "weights" / "faceverify-default.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path)
    parser.add_argument("--faces", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        student_onnx = Path(tmp) / "student.onnx"
        export_embedder(args.student, student_onnx)
        models = {"ensemble (bundled)": OnnxEmbedder(ENSEMBLE), "dlib-ResNet student": OnnxEmbedder(student_onnx)}
        templates = {t.name: t for m in models.values() for t in m.metadata.templates}
        faces = [f for f in detect_and_align([load_rgb(p) for p in lfw_photos(args.faces)], OnnxMTCNN(),
                                             "largest", [str(i) for i in range(args.faces)], list(templates.values()))
                 if not isinstance(f, Exception)]
        crops = {name: np.stack([f.crops[i] for f in faces]) for i, name in enumerate(templates)}
        rates = {}
        for name, model in models.items():
            inputs = [crops[t.name] for t in model.metadata.templates]
            seconds = median_seconds(lambda: [model(*(c[s:s + 32] for c in inputs)) for s in range(0, len(faces), 32)],
                                     repeat=3)
            rates[name] = len(faces) / seconds
    ensemble = rates["ensemble (bundled)"]
    table(f"Embedding {len(faces)} LFW faces, onnxruntime on this CPU, batch 32", ["model", "faces/s", "cost vs ensemble"],
          [[name, rate, f"{ensemble / rate:.0%}"] for name, rate in rates.items()])


if __name__ == "__main__":
    main()
