"""Photos that are already tight face crops: how many refusals ("no face") the whole-image fallback
and `--assume-cropped` turn into correct decisions.

From LFW `dev_eval` people with two or more photos: photo 1 is cut around its face (from its own
MTCNN landmarks) at two tightnesses, "brows to chin" and "tighter"; each crop is verified against
photo 2 of the same person (genuine) and against photo 2 of the next person (impostor), at the
model's best-accuracy threshold. Side by side: MTCNN with the padded retry only (as before the
whole-image fallback), MTCNN + the whole-image fallback, the model's own detector (with the same
fallbacks) and `--assume-cropped`. The crops are cut from MTCNN's landmarks for every row.

    python bench/bench_crops.py [--people 80]
"""
from __future__ import annotations

import argparse

import numpy as np
from common import ROOT, table

from faceverify.data import load_samples
from faceverify.detect import AssumeCropped, OnnxMTCNN
from faceverify.errors import FaceVerifyError
from faceverify.images import load_rgb
from faceverify.verifier import Verifier

DATA = ROOT.parent / "shared" / "data"
#: margins around the landmarks, in eye distances: (above the eyes, below the mouth, beside the eyes)
CUTS = {"brows to chin": (0.35, 0.6, 0.45), "tighter": (0.15, 0.35, 0.25)}


class PaddedRetryOnly:
    """MTCNN without `detect_whole`: what the pipeline did before the fallback."""

    def __init__(self, detector):
        self.detect = detector.detect


def tight_crop(image: np.ndarray, landmarks: np.ndarray, above: float, below: float, side: float) -> np.ndarray:
    (lx, ly), (rx, ry) = landmarks[:2]
    d = rx - lx
    top, bottom = int(min(ly, ry) - above * d), int(landmarks[3:, 1].max() + below * d)
    left, right = int(lx - side * d), int(rx + side * d)
    return np.ascontiguousarray(image[max(top, 0):bottom, max(left, 0):right])


def people(count: int) -> list[tuple]:
    by_identity = {}
    for s in load_samples(DATA / "lfw" / "manifest.csv"):
        if s.split == "dev_eval":
            by_identity.setdefault(s.identity, []).append(s.path)
    return [paths[:2] for paths in by_identity.values() if len(paths) >= 2][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=80)
    parser.add_argument("--model", default=str(ROOT / "weights" / "faceverify-default.onnx"))
    args = parser.parse_args()
    mtcnn = OnnxMTCNN()
    model = Verifier(args.model)
    verifiers = {"MTCNN, padded retry only": Verifier(args.model, detector=PaddedRetryOnly(mtcnn)),
                 "MTCNN + whole-image fallback": Verifier(args.model, detector=mtcnn),
                 f"{model.detector_name} + whole-image fallback (the model's)": model}
    cropped = Verifier(args.model, detector=AssumeCropped(mtcnn))
    threshold = cropped.threshold()
    chosen = people(args.people)
    rows_of = {**verifiers, "--assume-cropped": cropped}
    # photo 2 (a whole LFW photo, its subject in the middle) through each row's own detector
    # (--assume-cropped: MTCNN's, as photo 2 is no crop)
    references = {name: v.analyze([b for _, b in chosen], face_policy="central") for name, v in verifiers.items()}
    references["--assume-cropped"] = references["MTCNN + whole-image fallback"]
    rows = []
    for cut, margins in CUTS.items():
        crops = []
        for a, _ in chosen:
            (face,) = mtcnn.detect([load_rgb(a)])[:1] or [[]]
            crops.append(tight_crop(load_rgb(a), face[0].landmarks, *margins) if face else None)
        cut_people = [i for i, c in enumerate(crops) if c is not None]  # photo 1 had a face to cut
        for name, verifier in rows_of.items():
            found = verifier.analyze([crops[i] for i in cut_people])
            refused = sum(isinstance(f, FaceVerifyError) for f in found)
            whole = sum(not isinstance(f, FaceVerifyError) and f.face.whole_image for f in found)
            correct = wrong = 0
            usable = [(i, f) for i, f in zip(cut_people, found) if not isinstance(f, FaceVerifyError)]
            for i, face in usable:
                genuine, impostor = references[name][i], references[name][(i + 1) % len(chosen)]
                for other, same in ((genuine, True), (impostor, False)):
                    if isinstance(other, FaceVerifyError):
                        continue
                    decided = float(face.embedding @ other.embedding) >= threshold
                    correct, wrong = correct + (decided == same), wrong + (decided != same)
            rows.append([cut, name, len(found), refused, whole, correct, wrong])
    table(f"{len(chosen)} LFW dev_eval people: tight crop of photo 1 vs photo 2 of the same person and "
          f"of the next (threshold {threshold:.4f})",
          ["crop", "detector", "crops", "refused (no face)", "whole-image faces", "correct decisions",
           "wrong decisions"], rows)


if __name__ == "__main__":
    main()
