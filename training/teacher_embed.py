"""Teacher embeddings for distillation: `python training/teacher_embed.py SOURCE PREPARED --teacher dlib [mobilefacenet]`.

SOURCE is what `faceverify prepare` read (a manifest.csv or image folder), PREPARED its output.
Writes PREPARED/teachers/<name>/part-*.npz; rerun after a kill to continue where it stopped.
`--pairs FILE --root DIR` instead scores the teachers themselves on a pairs protocol (their own
alignment, faces found by our MTCNN), and their averaged scores, to check them before distilling.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from faceverify.data import read_pairs  # noqa: E402
from faceverify.detect import TorchMTCNN, detect_faces, select_face  # noqa: E402
from faceverify.errors import FaceVerifyError  # noqa: E402
from faceverify.metrics import cosine_scores, verification_report  # noqa: E402
from faceverify.train.teachers import TEACHER_FACTORIES, build_teacher, embed_prepared  # noqa: E402


def teacher_vectors(teachers, paths: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per teacher, the embedding of each photo's face, found once by our detector for all of them."""
    detector, vectors = TorchMTCNN(), {teacher.name: {} for teacher in teachers}
    for start in tqdm(range(0, len(paths), 32), desc="teachers on pairs", unit="batch"):
        batch = paths[start:start + 32]
        # the student's own detection step (padding retry included), then each teacher's alignment
        for path, found in zip(batch, detect_faces(batch, detector)):
            if not isinstance(found, FaceVerifyError) and found.faces:
                face = select_face(found.faces, found.image.shape, "central")
                for teacher in teachers:
                    vectors[teacher.name][path] = teacher.embed(found.image, [face])[0]
    return vectors


def evaluate_teachers(teachers, pairs_file: str, root: str) -> dict:
    """Each teacher's verification report on a pairs protocol and, for several, the report of their
    averaged cosine scores (how far a student taught by all of them could go)."""
    pairs = read_pairs(pairs_file, root)
    vectors = teacher_vectors(teachers, sorted({p.left for p in pairs} | {p.right for p in pairs}))
    same, folds = np.array([p.same for p in pairs]), np.array([p.fold for p in pairs])
    valid = np.array([p.left in vectors[teachers[0].name] and p.right in vectors[teachers[0].name] for p in pairs])
    reports, all_scores = {}, []
    for teacher in teachers:
        found, zero = vectors[teacher.name], np.zeros(teacher.dim, np.float32)
        scores = cosine_scores(np.stack([found.get(p.left, zero) for p in pairs]),
                               np.stack([found.get(p.right, zero) for p in pairs]))
        reports[teacher.name] = verification_report(scores, same, folds, valid).to_dict()
        all_scores.append(scores)
    if len(teachers) > 1:
        reports["mean of " + " + ".join(t.name for t in teachers)] = verification_report(
            np.mean(all_scores, axis=0), same, folds, valid).to_dict()
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", help="the dataset prepare read (manifest.csv or folder)")
    parser.add_argument("prepared", nargs="?", help="prepare's output folder")
    parser.add_argument("--teacher", nargs="+", default=["dlib"], choices=sorted(TEACHER_FACTORIES),
                        help="one or more teachers (--pairs also scores their averaged cosines)")
    parser.add_argument("--part-size", type=int, default=512,
                        help="faces per stored part: what a kill can lose at most")
    parser.add_argument("--pairs", help="score the teacher on this pairs file instead")
    parser.add_argument("--root", help="image root of --pairs")
    args = parser.parse_args()
    if not (args.pairs and args.root) and not (args.source and args.prepared):
        parser.error("give SOURCE PREPARED, or --pairs and --root")
    teachers = [build_teacher(name) for name in dict.fromkeys(args.teacher)]  # each once
    if args.pairs:
        print(json.dumps(evaluate_teachers(teachers, args.pairs, args.root), indent=2))
        return
    for teacher in teachers:
        print(f"{teacher.name}: {embed_prepared(args.source, args.prepared, teacher, part_size=args.part_size)} "
              "faces embedded")


if __name__ == "__main__":
    main()
