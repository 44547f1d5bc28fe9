"""Gallery: durable enrollment stores (SQLite file or PostgreSQL + pgvector) and 1:N open-set
identification, with an append-only audit trail and the API keys a server accepts;
`upgrade_gallery` re-embeds a gallery for a new model."""
from .audit import AuditEntry, parse_since
from .backends import open_store
from .gallery import DEFAULT_FPIR, DEFAULT_GALLERY, EnrollReport, Gallery, Identification, QualityGate
from .index import INDEX_KINDS, FaissIndex, NumpyIndex, build_index
from .kept_photos import KeptPhotos
from .names import identity_name
from .store import GalleryStore
from .upgrade import UpgradeReport, upgrade_gallery

__all__ = ["Gallery", "GalleryStore", "open_store", "DEFAULT_FPIR", "DEFAULT_GALLERY", "EnrollReport",
           "Identification", "QualityGate", "INDEX_KINDS", "NumpyIndex", "FaissIndex", "build_index",
           "upgrade_gallery", "UpgradeReport", "AuditEntry", "parse_since", "KeptPhotos", "identity_name"]
