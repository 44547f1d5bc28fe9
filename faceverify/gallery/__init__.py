"""Gallery: durable SQLite enrollment store and 1:N open-set identification."""
from .gallery import EnrollReport, Gallery, Identification, QualityGate
from .index import INDEX_KINDS, FaissIndex, NumpyIndex, build_index
from .store import GalleryStore

__all__ = ["Gallery", "GalleryStore", "EnrollReport", "Identification", "QualityGate",
           "INDEX_KINDS", "NumpyIndex", "FaissIndex", "build_index"]
