"""Inference speed on this machine, side by side in one run: embedding (torch eager vs
onnxruntime, batch 1 and 64) and detection (facenet-pytorch MTCNN vs ONNX MTCNN). Prints ratios.
End to end (folders, one pair) is `bench_pipeline.py`.

    python bench/bench_inference.py [--threads 2]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from common import ROOT, lfw_photos, median_seconds, table
from faceverify.detect import OnnxMTCNN, TorchMTCNN, detect_and_align
from faceverify.embed import TorchEmbedder
from faceverify.images import load_rgb
from faceverify.runtime import OnnxEmbedder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(ROOT / "weights" / "faceverify-default"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos = lfw_photos(64)
    images = [load_rgb(p) for p in photos]
    torch_detector, onnx_detector = TorchMTCNN(device="cpu"), OnnxMTCNN()
    crops = np.stack([r.crop for r in detect_and_align(images, torch_detector, "central", list(map(str, photos)))])
    torch_embedder = TorchEmbedder.from_checkpoint(args.model + ".pt", "cpu")
    onnx_embedder = OnnxEmbedder(args.model + ".onnx")

    rows = []
    for batch in (1, 64):
        part = crops[:batch]
        t = median_seconds(lambda: torch_embedder(part), repeat=7 if batch == 1 else 3)
        o = median_seconds(lambda: onnx_embedder(part), repeat=7 if batch == 1 else 3)
        rows.append([f"embed, batch {batch}", batch / t, batch / o, t / o])
    det = images[:16]
    t = median_seconds(lambda: torch_detector.detect(det), repeat=3)
    o = median_seconds(lambda: onnx_detector.detect(det), repeat=3)
    rows.append(["MTCNN detect, 250x250 LFW, 16 images", len(det) / t, len(det) / o, t / o])
    table(f"images/s on this CPU ({args.threads} threads); ratio = onnxruntime / torch speed",
          ["what", "torch img/s", "onnxruntime img/s", "ratio"], rows)


if __name__ == "__main__":
    main()
