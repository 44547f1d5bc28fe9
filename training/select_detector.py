"""Which detector should the model name? Every detector and combination, the same model, on the
development sets the project has: `python training/select_detector.py --work DIR [--out TABLE.md]`.

Sets (all from ../shared/data; none holds a held-back identity):
- **dev pairs**: the 1,200 LFW dev pairs (folds 7-8), 2-fold accuracy;
- **all dev_eval pairs**: every pair of the 2,585 LFW `dev_eval` photos (a photo without a face
  counts as rejected), TAR at FAR 1e-4;
- **turned heads**: photos of the LFW train split and CelebA whose head is turned ≥ `--yaw`
  degrees (the pose estimate of `quality.head_pose`, from RetinaFace's landmarks, the detector the
  issue found best on profiles; MTCNN's understate the turn), each paired with a frontal photo
  (|yaw| < 20°) of the same person and of another person of the pool: identity-disjoint from
  `dev_eval`, which calibrates the thresholds; accuracy at the threshold that is best on these pairs
  (so it measures separability, not calibration) and at the model's own;
- **tight crops**: `bench/bench_crops.py`'s crops of 80 `dev_eval` people (photo 1 cut brows to
  chin and tighter) against photo 2 of the same and of the next person, at the model's threshold;
- **low resolution**: the dev pairs with every photo shrunk to 64×64 (faces ~28 px), 2-fold;
- **ORL** and **Yale B**: every pair (a photo without a face counts as rejected), TAR at FAR 1e-3 (pose / extreme light; Yale B: every
  `--yaleb-every`-th photo, 4 by default, 604 photos: the 2,414 would triple the run).

Every photo is detected and embedded once per single detector (cached in WORK); combinations are
formed from those per-photo results: `a>b` takes b's face where a found none (`detect.combined`),
`a+b` averages the two alignments' member embeddings (each member's unit embeddings averaged and
re-normalised) where both found the face. Speed: `detect` alone over 300 LFW photos, 32 a call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_crops import CUTS, people, tight_crop  # noqa: E402

from faceverify.data import load_samples, read_pairs  # noqa: E402
from faceverify.detect import select_face  # noqa: E402
from faceverify.detect.registry import create_detector  # noqa: E402
from faceverify.errors import FaceVerifyError  # noqa: E402
from faceverify.images import load_rgb  # noqa: E402
from faceverify.metrics import all_pairs_report, best_threshold, verification_report  # noqa: E402
from faceverify.evaluation import all_pairs_scores  # noqa: E402
from faceverify.quality import head_pose  # noqa: E402
from faceverify.runtime import OnnxEmbedder  # noqa: E402
from faceverify.verifier import FaceEmbedding, Verifier, default_model_path  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SINGLE = ("mtcnn", "yunet", "retinaface")
COMBINED = ("retinaface>mtcnn", "yunet>mtcnn", "retinaface+mtcnn", "retinaface+yunet")
LOW_RES = 64
FRONTAL_YAW = 20.0


class Results:
    """One detector's per-photo results on one set: embeddings (zeros where no face), found."""

    def __init__(self, embeddings: np.ndarray, ok: np.ndarray, seconds: float = 0.0):
        self.embeddings, self.ok, self.seconds = embeddings, ok, seconds

    @classmethod
    def run(cls, verifier: Verifier, images: list, names: list[str], path: Path, label: str) -> "Results":
        if path.is_file():
            with np.load(path) as z:
                return cls(z["embeddings"], z["ok"], float(z["seconds"]))
        dim = verifier.metadata.embedding_dim
        embeddings, ok = np.zeros((len(images), dim), np.float32), np.zeros(len(images), bool)
        start = time.perf_counter()
        stream = verifier.analyze_stream(images, names, face_policy="central")
        for i, result in enumerate(tqdm(stream, total=len(images), desc=label, unit="img")):
            if isinstance(result, FaceEmbedding):
                embeddings[i], ok[i] = result.embedding, True
        seconds = time.perf_counter() - start
        np.savez(path, embeddings=embeddings, ok=ok, seconds=seconds)
        return cls(embeddings, ok, seconds)

    @staticmethod
    def combine(spec: str, by_name: dict, members: int) -> "Results":
        """`a>b` (b where a found no face) or `a+b` (member embeddings averaged where both found it)."""
        if ">" in spec:
            a, b = (by_name[n] for n in spec.split(">"))
            return Results(np.where(a.ok[:, None], a.embeddings, b.embeddings), a.ok | b.ok)
        a, b = (by_name[n] for n in spec.split("+"))
        both = a.ok & b.ok
        mean = []
        for part_a, part_b in zip(np.split(a.embeddings, members, axis=1), np.split(b.embeddings, members, axis=1)):
            part = part_a + part_b
            part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
            mean.append(part * np.sqrt(1.0 / members))
        averaged = np.concatenate(mean, axis=1)
        embeddings = np.where(both[:, None], averaged, np.where(a.ok[:, None], a.embeddings, b.embeddings))
        return Results(embeddings.astype(np.float32), a.ok | b.ok)


def pair_accuracy(results: Results, left, right, same, folds) -> dict:
    valid = results.ok[left] & results.ok[right]
    scores = np.einsum("ij,ij->i", results.embeddings[left], results.embeddings[right])
    report = verification_report(scores, same, folds, valid)
    return {"accuracy": report.accuracy_mean, "failures": int((~results.ok).sum())}


def all_pairs(results: Results, labels: np.ndarray, far: str) -> dict:
    """TAR at `far` over every pair, a photo without a face scoring 0 with every other (its genuine
    pairs rejected): detectors that give up on the hardest photos are not flattered."""
    report = all_pairs_report(*all_pairs_scores(results.embeddings, labels))
    hit = report["tar_at_far"].get(far)
    return {"tar": hit["tar"] if hit else float("nan"), "failures": int((~results.ok).sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="per-set, per-detector caches")
    parser.add_argument("--model", type=Path, help="ONNX model (default: the bundled one)")
    parser.add_argument("--yaw", type=float, default=45.0, help="turned: |yaw| at least this (degrees)")
    parser.add_argument("--yaleb-every", type=int, default=4, help="Yale B: every N-th photo")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here too")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    embedder = OnnxEmbedder(args.model or default_model_path())
    members = max(1, len(embedder.metadata.members))
    verifiers = {name: Verifier(embedder=embedder, detector=name) for name in SINGLE}
    threshold = verifiers["mtcnn"].threshold()

    def run(set_name: str, images: list, names: list[str]) -> dict:
        by_name = {name: Results.run(v, images, names, args.work / f"{set_name}-{name}.npz", f"{set_name} {name}")
                   for name, v in verifiers.items()}
        return {**by_name, **{spec: Results.combine(spec, by_name, members) for spec in COMBINED}}

    table: dict[str, dict] = {}

    # LFW dev pairs, full size and shrunk
    pairs = read_pairs(DATA / "lfw" / "pairs_dev.txt", DATA / "lfw" / "images")
    photos = sorted({p.left for p in pairs} | {p.right for p in pairs})
    index = {p: i for i, p in enumerate(photos)}
    left, right = np.array([index[p.left] for p in pairs]), np.array([index[p.right] for p in pairs])
    same, folds = np.array([p.same for p in pairs]), np.array([p.fold for p in pairs])
    for spec, results in run("dev-pairs", photos, [str(p) for p in photos]).items():
        table.setdefault(spec, {})["dev"] = pair_accuracy(results, left, right, same, folds)
    import cv2

    small = [cv2.resize(load_rgb(p), (LOW_RES, LOW_RES), interpolation=cv2.INTER_AREA) for p in photos]
    for spec, results in run("low-res", small, [str(p) for p in photos]).items():
        table[spec]["low_res"] = pair_accuracy(results, left, right, same, folds)

    # every pair of dev_eval, ORL, Yale B
    for set_name, manifest, split, far, every in (
            ("dev-eval", DATA / "lfw" / "manifest.csv", "dev_eval", "0.0001", 1),
            ("orl", DATA / "orl" / "manifest.csv", None, "0.001", 1),
            ("yaleb", DATA / "yaleb" / "manifest.csv", None, "0.001", args.yaleb_every)):
        samples = load_samples(manifest, split)[::every]
        _, labels = np.unique([s.identity for s in samples], return_inverse=True)
        for spec, results in run(set_name, [s.path for s in samples], [s.key for s in samples]).items():
            table[spec][set_name] = all_pairs(results, labels, far)

    # turned heads
    turned_pairs, pool = turned_head_pairs(args.work, args.yaw)
    t_left, t_right, t_same = (np.array(c) for c in zip(*turned_pairs))
    for spec, results in run(f"turned{args.yaw:g}", [s.path for s in pool], [s.key for s in pool]).items():
        valid = results.ok[t_left] & results.ok[t_right]
        scores = np.einsum("ij,ij->i", results.embeddings[t_left], results.embeddings[t_right])
        scores = np.where(valid, scores, -1.0)  # a photo without a face: its pairs count as errors
        best = best_threshold(scores, t_same)
        table[spec]["turned"] = {"accuracy": float(np.mean((scores >= best) == t_same)),
                                 "at_model": float(np.mean((scores >= threshold) == t_same)),
                                 "failures": int((~results.ok).sum()), "pairs": len(t_same)}

    # tight crops: cut from MTCNN's landmarks, the same crops for every detector
    chosen = people(80)
    mtcnn = create_detector("mtcnn")
    crops, references = [], []
    for a, b in chosen:
        image = load_rgb(a)
        (faces,) = mtcnn.detect([image])
        for cut in CUTS.values():
            crops.append(tight_crop(image, faces[0].landmarks, *cut) if faces else np.zeros((8, 8, 3), np.uint8))
        references.append(b)
    crop_results = run("tight-crops", crops, [f"crop {i}" for i in range(len(crops))])
    ref_results = run("tight-refs", references, [str(r) for r in references])
    for spec in crop_results:
        correct = wrong = 0
        for i in range(len(crops)):
            person = i // len(CUTS)
            if not crop_results[spec].ok[i]:
                continue
            for other, is_same in ((person, True), ((person + 1) % len(references), False)):
                if ref_results[spec].ok[other]:
                    decided = float(crop_results[spec].embeddings[i] @ ref_results[spec].embeddings[other]) >= threshold
                    correct, wrong = correct + (decided == is_same), wrong + (decided != is_same)
        table[spec]["crops"] = {"correct": correct, "wrong": wrong}

    speeds = detection_speed(verifiers)
    text = render(table, speeds, args.yaw, len(turned_pairs)) + "\n" + pose_spread(verifiers, photos)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


def turned_head_pairs(work: Path, min_yaw: float, seed: int = 0):
    """(pairs as (left, right, same) indices into the pool, pool samples): each photo of the LFW
    train split (people with ≥ 2 photos) or CelebA turned ≥ `min_yaw` by RetinaFace's landmarks,
    with a frontal photo of the same person and one of another person."""
    pool = [s for s in load_samples(DATA / "lfw" / "manifest.csv", "train")] + load_samples(DATA / "celeba" / "manifest.csv")
    counts: dict[str, int] = {}
    for s in pool:
        counts[s.identity] = counts.get(s.identity, 0) + 1
    pool = [s for s in pool if counts[s.identity] >= 2]
    cache = work / "pool-yaw-retinaface.npy"
    if cache.is_file():
        yaw = np.load(cache)
    else:
        detector = create_detector("retinaface")
        yaw = np.full(len(pool), np.nan)
        for start in tqdm(range(0, len(pool), 32), desc="pose", unit="batch"):
            batch = pool[start:start + 32]
            images = []
            for s in batch:
                try:
                    images.append(load_rgb(s.path))
                except FaceVerifyError:
                    images.append(np.zeros((32, 32, 3), np.uint8))
            for i, faces in enumerate(detector.detect(images), start):
                if faces:
                    face = max(faces, key=lambda f: f.area)
                    yaw[i] = head_pose(face.landmarks)[0].yaw
        np.save(cache, yaw)
    rng = np.random.default_rng(seed)
    frontal_by_person: dict[str, list[int]] = {}
    for i, s in enumerate(pool):
        if abs(yaw[i]) < FRONTAL_YAW:
            frontal_by_person.setdefault(s.identity, []).append(i)
    people_with_frontal = sorted(frontal_by_person)
    pairs, used = [], set()
    for i, s in enumerate(pool):
        if not abs(yaw[i]) >= min_yaw or not frontal_by_person.get(s.identity):
            continue
        mate = int(rng.choice(frontal_by_person[s.identity]))
        stranger = s.identity
        while stranger == s.identity:
            stranger = people_with_frontal[rng.integers(len(people_with_frontal))]
        other = int(rng.choice(frontal_by_person[stranger]))
        pairs += [(i, mate, True), (i, other, False)]
        used.update((i, mate, other))
    keep = sorted(used)
    remap = {old: new for new, old in enumerate(keep)}
    return [(remap[a], remap[b], same) for a, b, same in pairs], [pool[i] for i in keep]


def detection_speed(verifiers: dict, photos: int = 300) -> dict:
    """Photos per second of each detector's `detect` alone, 32 a call, on LFW photos."""
    paths = sorted((DATA / "lfw" / "images").glob("*/*.jpg"))[::37][:photos]
    images = [load_rgb(p) for p in paths]
    speeds = {}
    for name, verifier in verifiers.items():
        verifier.detector.detect(images[:32])  # warm up
        start = time.perf_counter()
        for i in range(0, len(images), 32):
            verifier.detector.detect(images[i:i + 32])
        speeds[name] = len(images) / (time.perf_counter() - start)
    return speeds


def pose_spread(verifiers: dict, photos: list[Path]) -> str:
    """How noisy each detector's landmarks make the pose estimate (`quality.head_pose`) on the
    LFW dev-pair photos, mostly frontal press photos: the spread of pitch and yaw, and the share
    of faces the quality hints call tilted or turned (> 35°) though few are."""
    images = [load_rgb(p) for p in photos]
    lines = ["| landmarks from | pitch: std / 5-95 % range | yaw: std | pitch > 35° | yaw > 35° |",
             "|---|---|---|---|---|"]
    for name, verifier in verifiers.items():
        poses = [head_pose(select_face(faces, image.shape, "central").landmarks)[0]
                 for i in range(0, len(images), 32)
                 for image, faces in zip(images[i:i + 32], verifier.detector.detect(images[i:i + 32])) if faces]
        pitch, yaw = np.array([p.pitch for p in poses]), np.array([p.yaw for p in poses])
        low, high = np.percentile(pitch, [5, 95])
        lines.append(f"| {name} | {pitch.std():.1f}° / {low:.0f}° to {high:.0f}° | {yaw.std():.1f}° | "
                     f"{100 * np.mean(np.abs(pitch) > 35):.1f} % | {100 * np.mean(np.abs(yaw) > 35):.1f} % |")
    return "\n".join(lines) + "\n"


def render(table: dict, speeds: dict, yaw: float, turned_pairs: int) -> str:
    header = (f"| landmarks from | turned ≥ {yaw:g}° ({turned_pairs} pairs): best threshold / model's | "
              "LFW dev pairs | dev_eval all pairs TAR@1e-4 | tight crops right / wrong | "
              f"low res ({LOW_RES} px) | ORL TAR@1e-3 | Yale B TAR@1e-3 | photos without a face "
              "(turned / dev_eval / ORL / Yale B) | detect photos/s |")
    lines = [header, "|" + "---|" * 10]
    for spec, row in table.items():
        speed = speeds.get(spec)
        lines.append(
            f"| {spec} | {100 * row['turned']['accuracy']:.2f} % / {100 * row['turned']['at_model']:.2f} % | "
            f"{100 * row['dev']['accuracy']:.2f} % | {row['dev-eval']['tar']:.4f} | "
            f"{row['crops']['correct']} / {row['crops']['wrong']} | {100 * row['low_res']['accuracy']:.2f} % | "
            f"{row['orl']['tar']:.4f} | {row['yaleb']['tar']:.4f} | {row['turned']['failures']} / "
            f"{row['dev-eval']['failures']} / {row['orl']['failures']} / {row['yaleb']['failures']} | "
            f"{f'{speed:.0f}' if speed else '–'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
