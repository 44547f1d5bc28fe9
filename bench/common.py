"""Timing helpers shared by the benchmarks: warm up, repeat, report the median."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting threads distort 2-core timings

ROOT = Path(__file__).resolve().parents[1]
LFW = (ROOT / ".." / "shared" / "data" / "lfw" / "images").resolve()


def lfw_photos(n: int) -> list[Path]:
    return sorted(LFW.glob("*/*.jpg"))[::37][:n]


def median_seconds(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")


def embed_prepared_faces(verifier, rows: list[dict], photos: Path, batch: int = 256) -> np.ndarray:
    """Embeddings of faces a `prepare` run recorded (manifest rows: source, box, landmarks), each
    aligned from its source photo under `photos` to every template the model takes."""
    from tqdm import tqdm

    from faceverify.data import load_samples
    from faceverify.detect import AlignedFace
    from faceverify.detect.aligned import align_templates
    from faceverify.images import load_rgb
    from faceverify.prepare import face_from_manifest

    paths = {sample.key: sample.path for sample in load_samples(photos)}
    out = []
    for start in tqdm(range(0, len(rows), batch), desc="embed", unit="batch"):
        faces = []
        for row in rows[start:start + batch]:
            face = face_from_manifest(row)
            faces.append(AlignedFace(face, align_templates(load_rgb(paths[row["source"]]), face,
                                                           verifier.templates), 1))
        out += [f.embedding for f in verifier.embed_faces(faces)]
    return np.stack(out)
