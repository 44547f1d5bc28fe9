"""Fit a model's per-face quality model (`faceverify.quality.QualityModel`) on training data only
and store it in the checkpoint (then export the ONNX file again).

Every photo of the training manifests' `train` rows goes through the model's own pipeline
(detect, align, embed, measure). Each face's target is the fraction of its genuine comparisons
(every other photo of the same person) that pass the model's operating threshold: FAR 1e-4 on
its all-pairs ROC (from `dev_eval`, the calibration set). The training photos are mostly sharp,
well-exposed press photos, so degraded copies of some of them (`degrade`: blur, low resolution,
darkness, heavy JPEG), compared with the clean photos of the same person, teach the score what
such faults cost. The floor is chosen on `dev_eval` by
bench/bench_quality.py and passed here with --floor.

    python training/fit_quality.py weights/faceverify-default.pt --floor 0.84 \
        --cache ~/faceverify-data/quality/train.npz
    faceverify export weights/faceverify-default.pt weights/faceverify-default.onnx
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faceverify.data import Sample, load_samples  # noqa: E402
from faceverify.models import update_metadata  # noqa: E402
from faceverify.operating import threshold_for_far  # noqa: E402
from faceverify.quality import FaceQuality, QualityModel  # noqa: E402
from faceverify.verifier import FaceEmbedding, Verifier  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TRAIN_SETS = [DATA / "lfw" / "manifest.csv", DATA / "celeba" / "manifest.csv", DATA / "orl" / "manifest.csv"]
#: the FAR of the operating point whose successes the score predicts
OPERATING_FAR = 1e-4
QUALITY_FIELDS = ("yaw", "pitch", "roll", "eye_distance", "sharpness", "brightness", "contrast", "det_score")


def analyse(verifier: Verifier, samples, cache: Path | None = None):
    """(embeddings, qualities as an (N, 8 + members) array (`QUALITY_FIELDS`, then the members'
    feature norms), identity labels, sample keys) of the photos (paths or arrays) with a usable
    face, through the model's pipeline (policy "central", as evaluation uses); cached in `cache`."""
    if cache and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return z["embeddings"], z["qualities"], z["labels"], z["keys"].tolist()
    results = list(verifier.analyze_stream([s.path for s in samples], [s.key for s in samples], "central"))
    kept = [(r, s.identity) for r, s in zip(results, samples) if isinstance(r, FaceEmbedding)]
    keys = [s.key for r, s in zip(results, samples) if isinstance(r, FaceEmbedding)]
    embeddings = np.stack([r.embedding for r, _ in kept])
    qualities = np.array([[getattr(r.quality, f) for f in QUALITY_FIELDS] + r.quality.feature_norms
                          for r, _ in kept], np.float64)
    labels = np.unique([i for _, i in kept], return_inverse=True)[1]
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, embeddings=embeddings, qualities=qualities, labels=labels, keys=np.array(keys))
    return embeddings, qualities, labels, keys


def as_qualities(array: np.ndarray) -> list[FaceQuality]:
    """`FaceQuality` objects from `analyse`'s rows: the `QUALITY_FIELDS`, then the member norms."""
    fields = len(QUALITY_FIELDS)
    return [FaceQuality(*row[:fields], feature_norms=row[fields:]) for row in array.tolist()]


def genuine_successes(embeddings: np.ndarray, labels: np.ndarray, threshold: float):
    """Per face: (fraction of its genuine comparisons at or above `threshold`, their number)."""
    success, count = np.zeros(len(labels)), np.zeros(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        scores = embeddings[members] @ embeddings[members].T
        passed = (scores >= threshold).sum(1) - 1  # minus the face with itself
        count[members] = len(members) - 1
        success[members] = passed / (len(members) - 1)
    return success, count


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the faults users' photos have and the training photos rarely do: blur, low resolution,
    darkness or heavy JPEG compression, at a random strength."""
    import cv2

    kind = rng.integers(4)
    if kind == 0:
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(1.5, 8))
    if kind == 1:
        h, w = image.shape[:2]
        scale = rng.uniform(0.12, 0.4)
        small = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == 2:
        return (255 * (image / 255.0) ** rng.uniform(2, 4)).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(3, 12))])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1]


def degraded_successes(verifier: Verifier, samples, embeddings, labels, keys, threshold: float, count: int,
                       cache: Path | None):
    """(qualities, success fraction, comparisons) of `count` degraded copies of training photos,
    each compared with the clean photos of the same person (its own clean copy left out)."""
    from faceverify.images import load_rgb

    rng = np.random.default_rng(0)
    row_of = {key: row for row, key in enumerate(keys)}
    by_key = {s.key: s for s in samples}
    partners = np.bincount(labels)[labels] > 1
    picked = rng.choice(np.flatnonzero(partners), min(count, int(partners.sum())), replace=False)
    copies = [Sample(degrade(load_rgb(by_key[keys[i]].path), rng), keys[i], str(labels[i])) for i in picked]
    degraded, qualities, _, kept = analyse(verifier, copies, cache)
    success, comparisons = [], []
    for vector, key in zip(degraded, kept):
        own = row_of[key]
        same = np.flatnonzero(labels == labels[own])
        same = same[same != own]
        success.append(float(np.mean(embeddings[same] @ vector >= threshold)))
        comparisons.append(len(same))
    return qualities, np.array(success), np.array(comparisons, np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--embed-with", type=Path, help="the same model as ONNX, to embed faster")
    parser.add_argument("--manifests", type=Path, nargs="+", default=TRAIN_SETS)
    parser.add_argument("--floor", type=float, default=0.5)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--degraded", type=int, default=3000,
                        help="degraded copies of training photos added to the fit (blur, low resolution, dark, JPEG)")
    args = parser.parse_args()
    verifier = Verifier(args.embed_with or args.checkpoint)
    roc = verifier.metadata.all_pairs_roc
    if not roc:
        sys.exit(f"{args.checkpoint}: calibrate it on all pairs first (faceverify calibrate --identities)")
    threshold = threshold_for_far(roc["points"], OPERATING_FAR)
    # identities per manifest: two sets never share a label
    samples = [Sample(s.path, s.key, f"{m.parent.name}/{s.identity}", s.split)
               for m in args.manifests for s in load_samples(m) if s.split == "train"]
    embeddings, qualities, labels, keys = analyse(verifier, samples, args.cache)
    success, count = genuine_successes(embeddings, labels, threshold)
    used = count > 0
    extra = (degraded_successes(verifier, samples, embeddings, labels, keys, threshold, args.degraded,
                                args.cache.with_name(args.cache.stem + "-degraded.npz") if args.cache else None)
             if args.degraded else (np.zeros((0, qualities.shape[1])), np.zeros(0), np.zeros(0)))
    model = QualityModel.fit(as_qualities(np.concatenate([qualities[used], extra[0]])),
                             np.concatenate([success[used], extra[1]]), np.concatenate([count[used], extra[2]]),
                             data=[str(m.relative_to(DATA)) if m.is_relative_to(DATA) else str(m) for m in args.manifests],
                             split="train", faces=int(used.sum()), degraded_copies=len(extra[1]),
                             genuine_comparisons=int(count.sum() / 2 + extra[2].sum()),
                             operating_point=f"FAR {OPERATING_FAR:g} on the all-pairs ROC: threshold {threshold:.4f}",
                             mean_success=float(np.average(success[used], weights=count[used])))
    model.floor = args.floor
    update_metadata(args.checkpoint, lambda metadata: metadata.replace(quality=model.to_dict()))
    print({name: round(c, 3) for name, c in zip(model.features, model.coef)}, model.fitted_on)


if __name__ == "__main__":
    main()
