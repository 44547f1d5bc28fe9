"""Gallery: durable enrollment stores (SQLite file or PostgreSQL + pgvector) and 1:N open-set
identification."""
from .gallery import DEFAULT_FPIR, EnrollReport, Gallery, Identification, QualityGate
from .index import INDEX_KINDS, FaissIndex, NumpyIndex, build_index
from .store import GalleryStore, PostgresStore, SqliteStore, open_store

__all__ = ["Gallery", "GalleryStore", "SqliteStore", "PostgresStore", "open_store", "DEFAULT_FPIR",
           "EnrollReport", "Identification", "QualityGate", "INDEX_KINDS", "NumpyIndex",
           "FaissIndex", "build_index"]
