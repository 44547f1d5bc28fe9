"""Nearest-template search by inner product (= cosine for normalised vectors).

`NumpyIndex` is exact and dependency-free; `FaissIndex` uses FAISS when installed: flat (exact,
same results as numpy), IVF or HNSW (approximate) for very large galleries.
"""
from __future__ import annotations

import numpy as np

INDEX_KINDS = ("auto", "numpy", "faiss-flat", "faiss-ivf", "faiss-hnsw")


class NumpyIndex:
    def __init__(self, templates: np.ndarray):
        self.templates = np.ascontiguousarray(templates, np.float32)

    def search(self, queries: np.ndarray, k: int):
        """(scores, indices), each (Q, k), best first."""
        scores = np.asarray(queries, np.float32) @ self.templates.T
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
            np.tile(np.arange(scores.shape[1]), (len(scores), 1))
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        return np.take_along_axis(scores, top, 1), top


class FaissIndex:
    def __init__(self, templates: np.ndarray, kind: str = "faiss-flat", nlist: int | None = None,
                 nprobe: int = 16, hnsw_m: int = 32):
        import faiss

        templates = np.ascontiguousarray(templates, np.float32)
        dim = templates.shape[1]
        if kind == "faiss-flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "faiss-ivf":
            nlist = nlist or max(1, int(4 * np.sqrt(len(templates))))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.train(templates)
            self.index.nprobe = nprobe
        elif kind == "faiss-hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown FAISS index {kind!r}")
        self.index.add(templates)

    def search(self, queries: np.ndarray, k: int):
        k = min(k, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, np.float32), k)


def build_index(templates: np.ndarray, kind: str = "auto"):
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index {kind!r}; choose one of {INDEX_KINDS}")
    if kind == "auto":  # exact numpy search measured faster than FAISS flat here (bench_gallery.py)
        kind = "numpy"
    return NumpyIndex(templates) if kind == "numpy" else FaissIndex(templates, kind)
