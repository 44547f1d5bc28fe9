"""Which store a gallery location names: a postgresql:// URL or a SQLite file path."""
from __future__ import annotations

from pathlib import Path

from .audit import local_actor

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(POSTGRES_SCHEMES)


def open_store(location: str | Path, weights_sha256: str | None, embedding_dim: int = 0, threshold: float = 0.0,
               busy_timeout_s: float = 10.0, create: bool = True, target_fpir: float | None = None,
               any_model: bool = False, actor: str | None = None):
    """A `PostgresStore` for a postgresql:// URL, else a `SqliteStore` for a file path (each
    imported only when used). `weights_sha256` None: an existing gallery whatever its model (key
    and audit administration); `any_model`: open it even if another model built it (only
    `upgrade` does that); `actor`: who the audit trail credits with this connection's changes
    (default: `audit.local_actor`)."""

    if is_postgres(location):
        from .postgres_store import PostgresStore as kind
    else:
        from .sqlite_store import SqliteStore as kind
    return kind(location, weights_sha256, embedding_dim, threshold, busy_timeout_s, create, target_fpir,
                any_model, actor or local_actor())
