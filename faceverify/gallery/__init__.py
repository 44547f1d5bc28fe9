"""Gallery: durable enrollment stores (SQLite file or PostgreSQL + pgvector) and 1:N open-set
identification; `upgrade_gallery` re-embeds a gallery for a new model."""
from .gallery import DEFAULT_FPIR, EnrollReport, Gallery, Identification, QualityGate
from .index import INDEX_KINDS, FaissIndex, NumpyIndex, build_index
from .store import GalleryStore, PostgresStore, SqliteStore, open_store
from .upgrade import UpgradeReport, upgrade_gallery

__all__ = ["Gallery", "GalleryStore", "SqliteStore", "PostgresStore", "open_store", "DEFAULT_FPIR",
           "EnrollReport", "Identification", "QualityGate", "INDEX_KINDS", "NumpyIndex",
           "FaissIndex", "build_index", "upgrade_gallery", "UpgradeReport"]
