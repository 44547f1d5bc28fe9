"""The end-to-end ONNX graph (`faceverify export --end-to-end`, weights in fp32 and in fp16) against
the Python pipeline on the same photos, one run: embedding cosine per photo, decisions and accuracy
on the LFW dev pairs at the model's threshold, and the time per photo of each (decoded photos in,
embedding out; the central face, as the evaluation takes it).

    python bench/bench_e2e.py [--photos 600]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from common import LFW, ROOT, table
from faceverify import FaceVerifyError, Verifier, load_rgb
from faceverify.data import read_pairs
from faceverify.e2e.model import CENTRAL, PRECISIONS, export_end_to_end

DEV_PAIRS = LFW.parent / "pairs_dev.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=600, help="dev-pair photos for the cosine figures (all for decisions)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    files = {precision: folder / f"e2e-{precision}.onnx" for precision in PRECISIONS}
    for precision, path in files.items():
        export_end_to_end(path, precision=precision)
    sessions = {p: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for p, path in files.items()}
    verifier = Verifier(ROOT / "weights" / "faceverify-default.onnx", face_policy="central")
    pairs = read_pairs(DEV_PAIRS, LFW)
    photos = sorted({p for pair in pairs for p in (pair.left, pair.right)})
    embeddings = {name: {} for name in ["library", *sessions]}
    times = dict.fromkeys(embeddings, 0.0)
    for path in tqdm(photos, desc="photos", unit="photo"):
        rgb = load_rgb(path)
        start = time.perf_counter()
        (found,) = verifier.analyze([rgb], [str(path)])
        times["library"] += time.perf_counter() - start
        embeddings["library"][path] = None if isinstance(found, FaceVerifyError) else found.embedding
        for precision, session in sessions.items():
            start = time.perf_counter()
            embedding, count = session.run(["embedding", "faces_found"], {"image": rgb, "face_policy": np.array([CENTRAL], np.int64)})
            times[precision] += time.perf_counter() - start
            embeddings[precision][path] = embedding if count[0] else None
    threshold = verifier.threshold()
    same = np.array([pair.same for pair in pairs])

    def decisions(found):
        return np.array([found[pair.left] is not None and found[pair.right] is not None and
                         float(np.dot(found[pair.left], found[pair.right])) >= threshold for pair in pairs])

    library = embeddings["library"]
    theirs = decisions(library)
    columns = {}
    for precision in sessions:
        graph = embeddings[precision]
        both = [p for p in photos if library[p] is not None and graph[p] is not None]
        cosines = np.array([float(np.dot(library[p], graph[p])) for p in both[:args.photos]])
        ours = decisions(graph)
        columns[precision] = [
            len(cosines), f"{np.median(cosines):.4f}", f"{100 * (cosines >= 0.99).mean():.2f} %", f"{cosines.min():.4f}",
            f"{sum(v is None for v in library.values())} / {sum(v is None for v in graph.values())}",
            f"{100 * (ours == theirs).mean():.2f} % of {len(pairs)}",
            f"{100 * (theirs == same).mean():.2f} % / {100 * (ours == same).mean():.2f} %",
            f"{1000 * times['library'] / len(photos):.1f} / {1000 * times[precision] / len(photos):.1f}",
            f"{times[precision] / times['library']:.2f}", f"{files[precision].stat().st_size / 1e6:.1f} MB"]
    measures = ["photos compared", "cosine median", "photos with cosine ≥ 0.99", "cosine minimum",
                "faces not found: library / graph", "dev pairs decided alike", "dev accuracy: library / graph",
                "ms per photo: library / graph", "graph time / library time", "file size"]
    table("End-to-end graph vs the Python pipeline (LFW dev pairs' photos)", ["measure", *(f"graph, {p} weights" for p in sessions)],
          [[m, *(columns[p][i] for p in sessions)] for i, m in enumerate(measures)])


if __name__ == "__main__":
    main()
