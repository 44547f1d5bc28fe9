"""1:N search on real face templates at up to 1M: exact numpy beside FAISS IVF (nprobe sweep) and
HNSW (efSearch sweep); recall@1 against exact search and milliseconds per single query.

Real templates: the bundled model's embeddings of prepared faces (e.g. the extra set, aligned from
their source photos with the landmarks `prepare` recorded), cached in `--cache`. A gallery larger than the real set is filled with synthetic templates drawn from a
Gaussian fitted to the real ones (their mean and full covariance, then L2-normalised), so it keeps
the real templates' anisotropy, which uniform random vectors lack and which IVF and HNSW exploit.
Two kinds of real query, kept out of every gallery: *mated* ones (another photo of someone with a
template in the gallery: what identification is for) and *non-mated* ones (people absent from the
gallery, whose nearest template is some stranger at a low score: the hard case for approximate
search, and one the threshold rejects anyway).

    python bench/bench_search.py PREPARED_DIR PHOTOS_DIR --cache search-templates.npy [--sizes 20000 100000 1000000]
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from common import embed_prepared_faces, table
from faceverify.bundled import weights_dir
from faceverify.gallery.index import FaissIndex, NumpyIndex, ann_settings
from faceverify.verifier import Verifier


def real_templates(rows: list[dict], photos: Path, cache: Path | None) -> np.ndarray:
    """The bundled ONNX model's embeddings of prepared faces (from their source photos), cached."""
    count = len(rows)
    if cache and cache.is_file():
        templates = np.load(cache)
        if len(templates) >= count:
            return templates[:count]
    templates = embed_prepared_faces(Verifier(weights_dir() / "faceverify-default.onnx"), rows, photos)
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
    parser.add_argument("photos", type=Path, help="the photos it was prepared from")
    parser.add_argument("--cache", type=Path, help=".npy of its embeddings, written on first use")
    parser.add_argument("--real", type=int, default=20_200, help="real crops embedded (gallery + queries)")
    parser.add_argument("--queries", type=int, default=200, help="of each kind, mated and non-mated")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 1_000_000],
                        help="gallery sizes; the smallest should hold every real template, so that "
                             "mated queries have their person in every gallery")
    parser.add_argument("--hnsw-up-to", type=int, default=100_000,
                        help="largest gallery to build HNSW for (its build is slow on 2 cores)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with open(args.prepared / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:args.real]
    templates = real_templates(rows, args.photos, args.cache)
    gallery_rows, queries = split_queries([row["identity"] for row in rows], args.queries, rng)
    real = templates[gallery_rows]
    print(f"{len(real):,} real templates; real queries outside every gallery: "
          + ", ".join(f"{len(rows)} {kind}" for kind, rows in queries.items()))
    if min(args.sizes) < len(real):
        print(f"warning: a {min(args.sizes):,} gallery leaves out real templates: some 'mated' queries are not")
    pool = np.concatenate([real, synthetic_like(real, max(args.sizes) - len(real), rng)]) \
        if max(args.sizes) > len(real) else real
    rows = []
    for size in args.sizes:
        gallery = pool[:size]
        exact = NumpyIndex(gallery)
        truth = {kind: exact.search(templates[q], 1)[1][:, 0] for kind, q in queries.items()}
        timing = templates[queries["mated"][:50]]
        base = per_query_ms(exact, timing)
        rows.append([f"{size:,}", "numpy (exact)", "", *(1.0 for _ in queries), base, 1.0, ""])
        auto = ann_settings(size)
        probes = sorted({4, 16, 32, 64} | ({auto["nprobe"]} if auto else set()))
        candidates = [("faiss-ivf", {"nprobe": p}) for p in probes]
        if size <= args.hnsw_up_to:
            candidates += [("faiss-hnsw", {"ef_search": e}) for e in (32, 64, 128)]
        built = {}
        for kind, knobs in candidates:
            if kind not in built:
                start = time.perf_counter()
                built[kind] = (FaissIndex(gallery, kind), time.perf_counter() - start)
            index, build_s = built[kind]
            index.tune(**knobs)
            recalls = [float(np.mean(index.search(templates[q], 1)[1][:, 0] == truth[k]))
                       for k, q in queries.items()]
            ms = per_query_ms(index, timing)
            setting = ", ".join(f"{k} {v}" for k, v in knobs.items())
            rows.append([f"{size:,}", kind, setting, *recalls, ms, base / ms, f"{build_s:.1f}"])
        print(f"{size:,}: --index auto uses {auto or 'numpy (exact)'}")
    table("identify on real-structured templates: recall@1 vs exact, median ms per single query (top-5)",
          ["templates", "index", "setting", *(f"recall@1 {kind}" for kind in queries), "ms / query",
           "speed-up", "build s"], rows)


def split_queries(identities: list[str], count: int, rng: np.random.Generator):
    """(gallery rows, {"mated": rows, "non-mated": rows}): mated queries are one held-out photo of
    `count` people who keep other photos in the gallery; non-mated ones one photo each of `count`
    people removed from the gallery altogether."""
    by_identity: dict[str, list[int]] = {}
    for row, identity in enumerate(identities):
        by_identity.setdefault(identity, []).append(row)
    names = list(by_identity)
    rng.shuffle(names)
    several = [n for n in names if len(by_identity[n]) >= 2][:count]
    chosen = set(several)
    strangers = [n for n in names if n not in chosen][:count]
    mated = [by_identity[n][0] for n in several]
    held = set(mated) | {row for n in strangers for row in by_identity[n]}
    gallery = [row for row in range(len(identities)) if row not in held]
    return gallery, {"mated": mated, "non-mated": [by_identity[n][0] for n in strangers]}


if __name__ == "__main__":
    main()
