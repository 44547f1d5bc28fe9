"""End to end on a folder of real photos, side by side in one run: the detectors alone (the ONNX
MTCNN as issue 16 found it, commit 7027a0c, run from a `git archive` of that commit, vs now, one
image per call and batched, beside facenet-pytorch's MTCNN, RetinaFace and YuNet); the time of each
stage of the default pipeline (decode, detect, align, embed); `faceverify embed`'s pipeline (decode
ahead, detect, align, embed) with the model's own detector and with MTCNN, on the ONNX and torch
paths, with the detector's speed knobs (smallest face as a fraction of the image, a maximum
detection side); dlib / face_recognition's pipeline (HOG detector, 5-point landmarks, ResNet) when
dlib and face_recognition_models are installed; and one-pair verification latency. Every pipeline
takes the largest face of a photo, as face_recognition's users do.

    python bench/bench_pipeline.py [--photos 500]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from common import LFW, ROOT, median_seconds, table
from faceverify.detect import OnnxMTCNN, TorchMTCNN, create_detector, select_face
from faceverify.detect.aligned import align_templates
from faceverify.errors import FaceVerifyError
from faceverify.images import load_rgb
from faceverify.verifier import Verifier

#: the last commit before the ONNX MTCNN was batched and its resampling and NMS vectorised
BASELINE = "7027a0c"
MODEL = ROOT / "weights" / "faceverify-default"


def images_per_second(run, count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def embed_folder(verifier: Verifier, photos: list[Path]) -> int:
    return sum(not isinstance(r, FaceVerifyError) for r in verifier.analyze_stream(photos))


#: run in a checkout of another commit: its ONNX MTCNN, one image per call, on the photos given
_DETECT_ONE_AT_A_TIME = """
import sys, time
from faceverify.detect import OnnxMTCNN
from faceverify.images import load_rgb
images = [load_rgb(p) for p in sys.argv[1:]]
detector = OnnxMTCNN()
detector.detect(images[:4])
start = time.perf_counter()
for image in images:
    detector.detect([image])
print(len(images) / (time.perf_counter() - start))
"""


def images_per_second_at(commit: str, photos: list[Path]) -> float | None:
    """The ONNX MTCNN of `commit`, whole (its own runtime settings too), in a fresh interpreter
    over a `git archive` of that commit; None, saying why, when that cannot run (7027a0c also needs
    threadpoolctl, no longer a dependency)."""
    with tempfile.TemporaryDirectory() as tree:
        archive = Path(tree) / "tree.tar"
        made = subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit],
                              capture_output=True, text=True)
        if made.returncode:
            print(f"ONNX MTCNN at {commit}: skipped ({made.stderr.strip() or 'git archive failed'})")
            return None
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        done = subprocess.run([sys.executable, "-c", _DETECT_ONE_AT_A_TIME, *map(str, photos)], cwd=tree,
                              env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True)
    if done.returncode:
        print(f"ONNX MTCNN at {commit}: skipped ({(done.stderr.strip().splitlines() or ['failed'])[-1]})")
        return None
    return float(done.stdout.split()[-1])


def dlib_pipeline():
    """face_recognition's recipe in dlib calls: HOG (upsampled once), 5-point landmarks, ResNet."""
    import dlib

    from faceverify.train.teachers import dlib_models_dir

    files = dlib_models_dir()
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(files / "shape_predictor_5_face_landmarks.dat"))
    model = dlib.face_recognition_model_v1(str(files / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(photos):
        done = 0
        for photo in photos:
            image = load_rgb(photo)
            rects = detector(image, 1)
            if rects:
                rect = max(rects, key=lambda r: r.area())
                model.compute_face_descriptor(image, landmarks(image, rect))
                done += 1
        return done
    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=500)
    args = parser.parse_args()
    every = sorted(LFW.glob("*/*.jpg"))
    photos = every[::max(1, len(every) // args.photos)][:args.photos]  # spread over the identities
    n = len(photos)
    images = [load_rgb(p) for p in photos]

    def one_at_a_time(detector):
        return lambda: [detector.detect([image]) for image in images]

    def batched(detector):
        return lambda: [detector.detect(images[i:i + 32]) for i in range(0, n, 32)]

    rows = []
    before = images_per_second_at(BASELINE, photos)
    if before is not None:
        rows.append([f"ONNX MTCNN at {BASELINE} (as issue 16 found it), one image per call", before])
    detector = OnnxMTCNN()
    for name, found, calls in [("ONNX MTCNN now, one image per call", detector, one_at_a_time),
                               ("ONNX MTCNN now, batched (32 a call)", detector, batched),
                               ("facenet-pytorch MTCNN (torch), batched (32 a call)", TorchMTCNN(device="cpu"),
                                batched),
                               ("RetinaFace, batched (32 a call)", create_detector("retinaface"), batched),
                               ("YuNet, batched (32 a call)", create_detector("yunet"), batched)]:
        found.detect(images[:4])  # warm-up
        rows.append([name, images_per_second(calls(found), n)])
    header = ["detector", "images/s"]
    if before is not None:
        header.append(f"vs {BASELINE}")
        rows = [row + [f"{row[1] / before:.2f}×"] for row in rows]
    table(f"detection only, {n} decoded LFW photos (250×250)", header, rows)

    default = Verifier(f"{MODEL}.onnx", face_policy="largest")
    stage_times(default, photos)
    paths = {
        f"ONNX (.onnx, {default.detector_name}, the model's detector)": default,
        "ONNX (.onnx, batched ONNX MTCNN)": Verifier(f"{MODEL}.onnx", face_policy="largest", detector="mtcnn"),
        f"torch (.pt, {default.detector_name})": Verifier(f"{MODEL}.pt", device="cpu", face_policy="largest"),
        "torch (.pt, facenet-pytorch MTCNN)": Verifier(f"{MODEL}.pt", device="cpu", face_policy="largest",
                                                       detector=TorchMTCNN(device="cpu")),
        "ONNX, smallest face 1/5 of the image": Verifier(f"{MODEL}.onnx", face_policy="largest",
                                                         min_face_fraction=0.2),
        "ONNX, detected at ≤ 125 px a side": Verifier(f"{MODEL}.onnx", face_policy="largest",
                                                      max_detection_side=125),
    }
    rows, speeds = [], {}
    for name, verifier in paths.items():
        embed_folder(verifier, photos[:64])  # warm-up: every session through a full batch
        embedded = 0

        def run(verifier=verifier):
            nonlocal embedded
            embedded = embed_folder(verifier, photos)
        speeds[name] = images_per_second(run, n)
        rows.append([f"faceverify embed: {name}", speeds[name], embedded])
    if importlib.util.find_spec("dlib") and importlib.util.find_spec("face_recognition_models"):
        embed = dlib_pipeline()
        embedded = 0

        def run_dlib():
            nonlocal embedded
            embedded = embed(photos)
        dlib_speed = images_per_second(run_dlib, n)
        rows.append(["dlib / face_recognition (HOG, 5-point, ResNet)", dlib_speed, embedded])
        rows = [row + [f"{row[1] / dlib_speed:.2f}×"] for row in rows]
    else:
        print("dlib not installed (pip install 'faceverify[distill]'): its row is skipped")
        rows = [row + ["n/a"] for row in rows]
    table(f"folder of {n} JPEG files → embeddings, end to end on this CPU",
          ["pipeline", "images/s", "faces embedded", "vs dlib"], rows)

    pair = (photos[0], photos[1])
    latency = {name: median_seconds(lambda v=verifier: v.verify(*pair), repeat=5)
               for name, verifier in list(paths.items())[:4]}
    torch_ms = 1000 * latency[f"torch (.pt, {default.detector_name})"]
    table("verify one pair from JPEG files (decode, detect, align, embed, score)",
          ["path", "latency ms", "speed vs torch"],
          [[name, 1000 * s, torch_ms / (1000 * s)] for name, s in latency.items()])


def stage_times(verifier: Verifier, photos: list[Path]) -> None:
    """Each stage of the pipeline alone over the same photos, in the batches `embed` uses: what
    bounds the folder speed (the stages overlap there, decoding ahead in threads)."""
    seconds = {}
    start = time.perf_counter()
    images = [load_rgb(p) for p in photos]
    seconds["decode (JPEG → RGB)"] = time.perf_counter() - start
    start = time.perf_counter()
    found = [faces for i in range(0, len(images), 32) for faces in verifier.detector.detect(images[i:i + 32])]
    seconds[f"detect ({verifier.detector_name}, 32 a call)"] = time.perf_counter() - start
    start = time.perf_counter()
    crops = [align_templates(image, select_face(faces, image.shape, "largest"), verifier.templates)
             for image, faces in zip(images, found) if faces]
    seconds[f"align ({', '.join(t.name for t in verifier.templates)})"] = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(crops), 64):
        verifier.features(*(np.stack(c) for c in zip(*crops[i:i + 64])))
    seconds["embed (64 a call)"] = time.perf_counter() - start
    total = sum(seconds.values())
    table(f"the default pipeline's stages, one after another, {len(photos)} photos ({len(crops)} faces)",
          ["stage", "ms a photo", "photos/s alone", "share"],
          [[stage, 1000 * s / len(photos), len(photos) / s, f"{100 * s / total:.0f} %"] for stage, s in seconds.items()])


if __name__ == "__main__":
    main()
