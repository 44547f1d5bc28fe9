"""The end-to-end ONNX graph (`faceverify export --end-to-end`) against the Python pipeline on the
same photos, one run: embedding cosine per photo, decisions and accuracy on the LFW dev pairs at
the model's threshold, and the time per photo of each (decoded photos in, embedding out; the
central face, as the evaluation takes it).

    python bench/bench_e2e.py [--photos 600] [--e2e FILE.onnx]
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
from faceverify.e2e.model import CENTRAL, export_end_to_end

DEV_PAIRS = LFW.parent / "pairs_dev.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=600, help="dev-pair photos for the cosine figures (all for decisions)")
    parser.add_argument("--e2e", type=Path, help="an end-to-end file (default: exported from the bundled model)")
    args = parser.parse_args()
    e2e = args.e2e or Path(tempfile.mkdtemp()) / "e2e.onnx"
    if not args.e2e:
        export_end_to_end(e2e)
    session = ort.InferenceSession(str(e2e), providers=["CPUExecutionProvider"])
    verifier = Verifier(ROOT / "weights" / "faceverify-default.onnx", face_policy="central")
    pairs = read_pairs(DEV_PAIRS, LFW)
    photos = sorted({p for pair in pairs for p in (pair.left, pair.right)})
    library, graph, times = {}, {}, {"library": 0.0, "graph": 0.0}
    for path in tqdm(photos, desc="photos", unit="photo"):
        rgb = load_rgb(path)
        start = time.perf_counter()
        (found,) = verifier.analyze([rgb], [str(path)])
        times["library"] += time.perf_counter() - start
        start = time.perf_counter()
        embedding, _, _, _, count = session.run(None, {"image": rgb, "face_policy": np.array([CENTRAL], np.int64)})
        times["graph"] += time.perf_counter() - start
        library[path] = None if isinstance(found, FaceVerifyError) else found.embedding
        graph[path] = embedding if count[0] else None
    both = [p for p in photos if library[p] is not None and graph[p] is not None]
    cosines = np.array([float(np.dot(library[p], graph[p])) for p in both[:args.photos]])
    threshold = verifier.threshold()

    def decisions(embeddings):
        return np.array([embeddings[pair.left] is not None and embeddings[pair.right] is not None and
                         float(np.dot(embeddings[pair.left], embeddings[pair.right])) >= threshold for pair in pairs])

    same = np.array([pair.same for pair in pairs])
    ours, theirs = decisions(graph), decisions(library)
    table("End-to-end graph vs the Python pipeline (LFW dev pairs' photos)", ["measure", "value"], [
        ["photos compared", len(cosines)],
        ["cosine median", float(np.median(cosines))],
        ["photos with cosine ≥ 0.99", f"{100 * (cosines >= 0.99).mean():.2f} %"],
        ["cosine minimum", float(cosines.min())],
        ["faces not found: library / graph", f"{sum(v is None for v in library.values())} / {sum(v is None for v in graph.values())}"],
        ["dev pairs decided alike", f"{100 * (ours == theirs).mean():.2f} % of {len(pairs)}"],
        ["dev accuracy: library / graph", f"{100 * (theirs == same).mean():.2f} % / {100 * (ours == same).mean():.2f} %"],
        ["ms per photo: library / graph", f"{1000 * times['library'] / len(photos):.1f} / {1000 * times['graph'] / len(photos):.1f}"],
        ["graph time / library time", f"{times['graph'] / times['library']:.2f}"],
        ["file size", f"{e2e.stat().st_size / 1e6:.1f} MB"]])


if __name__ == "__main__":
    main()
