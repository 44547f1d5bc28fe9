"""Inference speed on this machine, side by side in one run: embedding by torch eager and by
onnxruntime (fp32 and fp16 ONNX) over a sweep of batch sizes, and detection (facenet-pytorch
MTCNN vs ONNX MTCNN), on the CPU and, when there is one, on the GPU (torch CUDA and onnxruntime's
CUDA execution provider; `pip install 'faceverify[gpu]'`). Prints images/s and ratios.
End to end (folders, one pair) is `bench_pipeline.py`.

    python bench/bench_inference.py [--threads 2] [--batches 1 8 32 64]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common import ROOT, lfw_photos, median_seconds, table
from faceverify.detect import OnnxMTCNN, TorchMTCNN, detect_and_align
from faceverify.embed import TorchEmbedder
from faceverify.export import export_embedder
from faceverify.images import load_rgb
from faceverify.runtime import OnnxEmbedder

CUDA_EP = "CUDAExecutionProvider"


def gpu_available() -> bool:
    has_torch, has_ort = torch.cuda.is_available(), CUDA_EP in ort.get_available_providers()
    if not (has_torch and has_ort):
        print(f"GPU rows skipped: torch CUDA {'available' if has_torch else 'unavailable'}, onnxruntime "
              f"providers {ort.get_available_providers()}")
    return has_torch and has_ort


def embedders(model: str, fp16_onnx: Path | None, gpu: bool, largest_batch: int):
    """(runtime, precision, device, embedder) for every combination this machine runs."""
    for device in ("cpu", "cuda") if gpu else ("cpu",):
        yield "torch", "fp32", device, TorchEmbedder.from_checkpoint(f"{model}.pt", device, largest_batch)
        providers = [CUDA_EP, "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        for precision, path in (("fp32", Path(f"{model}.onnx")), ("fp16", fp16_onnx)):
            if path is not None:
                yield "onnxruntime", precision, device, OnnxEmbedder(path, providers, largest_batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(ROOT / "weights" / "faceverify-default"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos = lfw_photos(64)
    images = [load_rgb(p) for p in photos]
    torch_detector = TorchMTCNN(device="cpu")
    fp32 = OnnxEmbedder(f"{args.model}.onnx")
    faces = detect_and_align(images, torch_detector, "central", list(map(str, photos)), fp32.metadata.templates)
    repeat = -(-max(args.batches) // len(faces))
    crops = [np.concatenate([np.stack(c)] * repeat) for c in zip(*(f.crops for f in faces))]
    gpu = gpu_available()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp16_onnx = None
        if fp32.metadata.members:  # fp16 compute is exported for single networks
            print("fp16 rows skipped: the model is an ensemble (its fp16-stored weights run in fp32)")
        else:
            fp16_onnx = Path(tmp) / "fp16.onnx"
            export_embedder(f"{args.model}.pt", fp16_onnx, precision="fp16")
        reference = fp32(*(c[:64] for c in crops))
        for runtime, precision, device, embedder in embedders(args.model, fp16_onnx, gpu, max(args.batches)):
            cosine = float((embedder(*(c[:64] for c in crops)) * reference).sum(axis=1).min())
            speeds = [batch / median_seconds(lambda: embedder(*(c[:batch] for c in crops)),
                                             repeat=7 if batch == 1 else 3)
                      for batch in args.batches]
            rows.append([runtime, precision, device, f"{cosine:.5f}", *speeds])
    table(f"embedding, images/s by batch size ({args.threads} CPU threads); cosine = lowest cosine to "
          "the fp32 ONNX model's embeddings", ["runtime", "precision", "device", "cosine"]
          + [f"batch {b}" for b in args.batches], rows)

    det = images[:16]
    detectors = [("facenet-pytorch MTCNN", "cpu", torch_detector), ("ONNX MTCNN", "cpu", OnnxMTCNN())]
    if gpu:
        detectors += [("facenet-pytorch MTCNN", "cuda", TorchMTCNN(device="cuda")),
                      ("ONNX MTCNN", "cuda", OnnxMTCNN(providers=[CUDA_EP, "CPUExecutionProvider"]))]
    rows = [[name, device, len(det) / median_seconds(lambda d=detector: d.detect(det), repeat=3)]
            for name, device, detector in detectors]
    table("MTCNN detection, 16 LFW photos (250×250) a call", ["detector", "device", "images/s"], rows)


if __name__ == "__main__":
    main()
