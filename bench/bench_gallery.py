"""1:N search latency over synthetic normalised templates: exact numpy vs FAISS (flat, IVF,
HNSW), one query and a batch of 64, at 1k, 100k and 1M identities, side by side.
Recall@1 counts how often the (slightly perturbed) query's own template comes first.

    python bench/bench_gallery.py [--sizes 1000 100000 1000000] [--dim 512]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import median_seconds, table
from faceverify.gallery import FaissIndex, NumpyIndex


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        templates = rng.standard_normal((size, args.dim), dtype=np.float32)
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
        queries = templates[:64] + 0.1 * rng.standard_normal((64, args.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        indexes = {"numpy (exact)": NumpyIndex(templates), "faiss flat (exact)": FaissIndex(templates)}
        build = {}
        # approximate indexes where exact search starts to cost; HNSW's build is too slow for 1M
        # on two cores, IVF trains on FAISS's own subsample with 1,024 lists
        kinds = {100_000: ("faiss-ivf", "faiss-hnsw"), 1_000_000: ("faiss-ivf",)}.get(size, ())
        for kind in kinds:
            start = time.perf_counter()
            indexes[kind] = FaissIndex(templates, kind, nlist=1024)
            build[kind] = time.perf_counter() - start
        base = None
        for name, index in indexes.items():
            one = median_seconds(lambda: index.search(queries[:1], 5), repeat=5)
            many = median_seconds(lambda: index.search(queries, 5), repeat=3)
            recall = float(np.mean(index.search(queries, 1)[1][:, 0] == np.arange(64)))
            base = base or one
            rows.append([f"{size:,}", name, 1000 * one, 1000 * many / 64, base / one, recall,
                         f"{build.get(name, 0):.1f}"])
        del templates, indexes
    table("identify latency (top-5); speed-up vs numpy on one query; recall@1 of the true template",
          ["templates", "index", "1 query ms", "per query in batch of 64, ms", "speed-up", "recall@1",
           "build s"], rows)


if __name__ == "__main__":
    main()
