"""Nearest-template search by inner product (= cosine for normalised vectors).

`NumpyIndex` is exact and dependency-free; `FaissIndex` uses FAISS when installed: flat (exact,
same results as numpy), IVF or HNSW (approximate) for very large galleries. `--index auto` stays
exact below `ANN_FROM` templates and switches to IVF above, with the list count and probes measured
on real templates by `bench/bench_search.py`.
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
                 nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = 64):
        import faiss

        templates = np.ascontiguousarray(templates, np.float32)
        dim = templates.shape[1]
        if kind == "faiss-flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "faiss-ivf":
            nlist = nlist or ivf_lists(len(templates))
            nprobe = nprobe or ivf_probes(nlist)
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on 64 points a list (FAISS's default 256 trains 4x longer for no recall here)
            self.index.cp.max_points_per_centroid = 64
            self.index.train(templates)
        elif kind == "faiss-hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown FAISS index {kind!r}")
        self.kind = kind
        self.index.add(templates)
        self.tune(nprobe=nprobe, ef_search=ef_search)

    def tune(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Search-time speed/recall knobs: IVF lists probed, HNSW candidate-list size."""
        if self.kind == "faiss-ivf" and nprobe:
            self.index.nprobe = nprobe
        if self.kind == "faiss-hnsw" and ef_search:
            self.index.hnsw.efSearch = ef_search

    def search(self, queries: np.ndarray, k: int):
        k = min(k, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, np.float32), k)


#: from this many templates `--index auto` uses IVF: exact numpy search costs ~10 ms a query at 100k
#: and grows linearly (~100 ms at 1M), IVF at its default probes ~5 ms at 100k, ~10 ms at 1M
#: (bench/bench_search.py)
ANN_FROM = 100_000


def ivf_lists(size: int) -> int:
    """IVF list count: about 1,000 templates a list, at least 64."""
    return max(64, size // 1000)


def ivf_probes(lists: int) -> int:
    """Lists probed a query: 1/16 of them, at least 32 (recall@1 ≥ 0.99 against exact search on real
    templates at 100k and 1M, bench/bench_search.py)."""
    return min(lists, max(32, lists // 16))


def ann_settings(size: int) -> dict | None:
    """What `--index auto` uses for a gallery of `size` templates: None (exact) or IVF settings."""
    if size < ANN_FROM:
        return None
    lists = ivf_lists(size)
    return {"kind": "faiss-ivf", "nlist": lists, "nprobe": ivf_probes(lists)}


def build_index(templates: np.ndarray, kind: str = "auto"):
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index {kind!r}; choose one of {INDEX_KINDS}")
    if kind == "auto":
        settings = ann_settings(len(templates)) if _faiss_available() else None
        if settings is None:  # exact numpy search measured faster than FAISS flat (bench_gallery.py)
            return NumpyIndex(templates)
        return FaissIndex(templates, settings["kind"], settings["nlist"], settings["nprobe"])
    return NumpyIndex(templates) if kind == "numpy" else FaissIndex(templates, kind)


def _faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None
