"""Refit the `dlib-150` alignment template: where MTCNN's five landmarks fall in dlib's own chips.

dlib's ResNet was trained on 150×150 chips (padding 0.25) cut by dlib's 5-point predictor, whose
points (eye corners, under the nose) are not MTCNN's (eye centres, nose tip, mouth corners). For
each photo: MTCNN finds the face and its five points; dlib's 5-point predictor, on the same face,
gives dlib's chip; MTCNN's points are mapped into that chip. The template is their mean. The
mapping is checked against dlib's own chip pixels (mean absolute difference printed).

    python training/fit_dlib_template.py ../shared/data/lfw/manifest.csv --split train --count 500
"""
from __future__ import annotations

import argparse
import math

import cv2
import numpy as np
from tqdm import tqdm

from faceverify.align import DLIB_150
from faceverify.data import load_samples
from faceverify.detect import OnnxMTCNN, detect_faces, select_face
from faceverify.errors import FaceVerifyError
from faceverify.train.teachers import dlib_models_dir, dlib_rectangle


def chip_transform(details) -> np.ndarray:
    """2×3 affine map from photo to chip pixels, as dlib's chip extraction defines it: the chip
    rectangle's corners, rotated by `angle` about its centre, go to the chip's corners."""
    rect = details.rect
    cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    cos, sin = math.cos(details.angle), math.sin(details.angle)

    def rotated(x, y):
        return cx + cos * (x - cx) - sin * (y - cy), cy + sin * (x - cx) + cos * (y - cy)

    corners = np.float32([rotated(rect.left(), rect.top()), rotated(rect.right(), rect.top()),
                          rotated(rect.right(), rect.bottom())])
    size = np.float32([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]])
    return cv2.getAffineTransform(corners, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--split", default="train")
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    import dlib

    predictor = dlib.shape_predictor(str(dlib_models_dir() / "shape_predictor_5_face_landmarks.dat"))
    samples = load_samples(args.manifest, args.split)[:args.count]
    points, pixel_error = [], []
    for found in tqdm(detect_faces([s.path for s in samples], OnnxMTCNN()), desc="fit", unit="img"):
        if isinstance(found, FaceVerifyError):
            continue
        try:
            face = select_face(found.faces, found.image.shape, "central", "photo")
        except FaceVerifyError:
            continue
        shape = predictor(found.image, dlib_rectangle(face, dlib))
        details = dlib.get_face_chip_details(shape, DLIB_150.size, 0.25)
        matrix = chip_transform(details)
        points.append(face.landmarks @ matrix[:, :2].T + matrix[:, 2])
        ours = cv2.warpAffine(found.image, matrix, (DLIB_150.size, DLIB_150.size), flags=cv2.INTER_LINEAR)
        theirs = np.asarray(dlib.extract_image_chip(found.image, details))
        pixel_error.append(np.abs(ours.astype(float) - theirs)[10:-10, 10:-10].mean())
    points = np.stack(points)
    print(f"{len(points)} faces; mapping vs dlib's chip pixels: mean abs difference "
          f"{np.mean(pixel_error):.2f} grey levels")
    print("template (x, y), mean ± sd over faces:")
    for name, mean, sd in zip(("left eye", "right eye", "nose", "left mouth", "right mouth"),
                              points.mean(0), points.std(0)):
        print(f"  {name:12s} ({mean[0]:.2f}, {mean[1]:.2f}) ± ({sd[0]:.2f}, {sd[1]:.2f})")
    print(f"shipped dlib-150: max difference {np.abs(points.mean(0) - DLIB_150.points).max():.2f} px")


if __name__ == "__main__":
    main()
