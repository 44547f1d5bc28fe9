"""1:N search on real face templates at up to 1M: exact numpy beside FAISS IVF (nprobe sweep) and
HNSW (efSearch sweep); recall@1 against exact search and milliseconds per single query.

Real templates: the bundled model's embeddings of prepared crops (e.g. the extra set), cached in
`--cache`. A gallery larger than the real set is filled with synthetic templates drawn from a
Gaussian fitted to the real ones (their mean and full covariance, then L2-normalised), so it keeps
the real templates' anisotropy and cluster structure, which uniform random vectors lack and which
IVF and HNSW exploit. Queries are real templates kept out of every gallery.

    python bench/bench_search.py PREPARED_DIR --cache search-templates.npy [--sizes 10000 100000 1000000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common import table
from faceverify.data import load_samples
from faceverify.gallery.index import FaissIndex, NumpyIndex, ann_settings
from faceverify.runtime import OnnxEmbedder
from faceverify.bundled import weights_dir


def real_templates(prepared: Path, count: int, cache: Path | None) -> np.ndarray:
    """Embeddings of the first `count` crops of a prepared folder (bundled ONNX model), cached."""
    if cache and cache.is_file():
        templates = np.load(cache)
        if len(templates) >= count:
            return templates[:count]
    embedder = OnnxEmbedder(weights_dir() / "faceverify-default.onnx")
    samples = load_samples(prepared)[:count]
    out = []
    for start in tqdm(range(0, len(samples), 256), desc="embed", unit="batch"):
        crops = np.stack([cv2.imread(str(s.path))[:, :, ::-1] for s in samples[start:start + 256]])
        out.append(embedder(crops))
    templates = np.concatenate(out)
    if cache:
        np.save(cache, templates)
    return templates


def synthetic_like(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` unit vectors from a Gaussian with the real templates' mean and covariance."""
    mean = real.mean(0)
    root = np.linalg.cholesky(np.cov(real, rowvar=False) + 1e-6 * np.eye(real.shape[1]))
    out = np.empty((count, real.shape[1]), np.float32)
    for start in range(0, count, 100_000):
        block = rng.standard_normal((min(100_000, count - start), real.shape[1])) @ root.T + mean
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def per_query_ms(index, queries: np.ndarray) -> float:
    index.search(queries[:1], 1)  # warm-up
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None], 5)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="a prepared folder (faceverify prepare)")
    parser.add_argument("--cache", type=Path, help=".npy of its embeddings, written on first use")
    parser.add_argument("--real", type=int, default=20_000, help="real templates (+ queries)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--hnsw-up-to", type=int, default=100_000,
                        help="largest gallery to build HNSW for (its build is slow on 2 cores)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    templates = real_templates(args.prepared, args.real + args.queries, args.cache)
    queries, real = templates[:args.queries], templates[args.queries:]
    print(f"{len(real):,} real templates, {len(queries)} real queries outside every gallery")
    pool = np.concatenate([real, synthetic_like(real, max(args.sizes) - len(real), rng)]) \
        if max(args.sizes) > len(real) else real
    rows = []
    for size in args.sizes:
        gallery = pool[:size]
        exact = NumpyIndex(gallery)
        truth = exact.search(queries, 1)[1][:, 0]
        base = per_query_ms(exact, queries[:50])
        rows.append([f"{size:,}", "numpy (exact)", "", 1.0, base, 1.0, ""])
        candidates = [("faiss-ivf", {"nprobe": p}) for p in (4, 16, 32, 64)]
        if size <= args.hnsw_up_to:
            candidates += [("faiss-hnsw", {"ef_search": e}) for e in (32, 64, 128)]
        built = {}
        for kind, knobs in candidates:
            if kind not in built:
                start = time.perf_counter()
                built[kind] = (FaissIndex(gallery, kind), time.perf_counter() - start)
            index, build_s = built[kind]
            index.tune(**knobs)
            recall = float(np.mean(index.search(queries, 1)[1][:, 0] == truth))
            ms = per_query_ms(index, queries[:50])
            setting = ", ".join(f"{k} {v}" for k, v in knobs.items())
            rows.append([f"{size:,}", kind, setting, recall, ms, base / ms, f"{build_s:.1f}"])
        auto = ann_settings(size)
        print(f"{size:,}: --index auto uses {auto or 'numpy (exact)'}")
    table("identify on real-structured templates: recall@1 vs exact, median ms per single query (top-5)",
          ["templates", "index", "setting", "recall@1", "ms / query", "speed-up", "build s"], rows)


if __name__ == "__main__":
    main()
