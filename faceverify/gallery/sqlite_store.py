"""The SQLite gallery store: one file, WAL mode, the embedded default (core: `store`)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from ..errors import GalleryBusyError, GalleryError
from .store import GalleryStore

APPLICATION_ID = 0x46564731  # "FVG1": marks a SQLite file as a faceverify gallery


class SqliteStore(GalleryStore):
    """One file, WAL mode; BEGIN IMMEDIATE takes the write lock up front."""

    def _connect(self, create: bool) -> bool:
        path = Path(self.location)
        exists = path.is_file() and path.stat().st_size > 0
        if not exists and not create:
            raise GalleryError(f"{path}: no such gallery")
        try:
            self.db = sqlite3.connect(str(path), timeout=self.busy_timeout_s, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.execute("PRAGMA secure_delete = ON")  # a removed person's rows are overwritten, not left in free pages
            if exists and self.db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                raise GalleryError(f"{path}: not a faceverify gallery")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            if exists:
                self.db.execute("SELECT key FROM meta LIMIT 1")  # readable at all?
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{path}: not a readable gallery database ({exc})") from None
        self._cache = None
        return exists

    def _schema(self, embedding_dim: int) -> list[str]:
        return [f"PRAGMA application_id = {APPLICATION_ID}",
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                "CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                "created TEXT NOT NULL)",
                "CREATE TABLE images (id INTEGER PRIMARY KEY, identity_id INTEGER NOT NULL "
                "REFERENCES identities(id) ON DELETE CASCADE, source TEXT NOT NULL, "
                "sha256 TEXT NOT NULL UNIQUE, embedding BLOB NOT NULL, det_score REAL NOT NULL, "
                "face_size REAL NOT NULL, sharpness REAL NOT NULL, thumbnail BLOB, created TEXT NOT NULL, "
                "quality REAL)",
                "CREATE TABLE templates (identity_id INTEGER PRIMARY KEY REFERENCES identities(id) "
                "ON DELETE CASCADE, embedding BLOB NOT NULL, images INTEGER NOT NULL)",
                "CREATE INDEX images_identity ON images(identity_id)"]

    def _begin(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise GalleryBusyError(f"{self.location}: another process is writing; try again") from None
            raise

    def _append_only(self, table: str) -> list[str]:
        return [f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the {table} table is append-only'); END"
                for verb in ("UPDATE", "DELETE")]

    def _has_table(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None

    def _staging_schema(self, embedding_dim: int) -> str:
        return ("CREATE TABLE upgrade_images (image_id INTEGER PRIMARY KEY REFERENCES images(id) "
                "ON DELETE CASCADE, embedding BLOB, thumbnail BLOB, det_score REAL, face_size REAL, "
                "sharpness REAL, quality REAL, problem TEXT)")

    def _vector(self, embedding: np.ndarray) -> bytes:
        return np.asarray(embedding, np.float32).tobytes()

    def _array(self, values: list) -> np.ndarray:
        return np.frombuffer(b"".join(values), np.float32).reshape(-1, self.embedding_dim)

    def version(self):
        """Changes whenever any writer (this process or another) commits: the index is rebuilt."""
        return self.db.execute("PRAGMA data_version").fetchone()[0], self.db.total_changes

    def search(self, queries: np.ndarray, k: int, index_kind: str = "auto"):
        from .index import build_index

        if self._cache is None or self._cache[0] != (self.version(), index_kind):
            try:
                names, templates = self.templates()
            except Exception:
                self._check_model()  # upgraded meanwhile? (templates of another size)
                raise
            self._check_model()
            self._cache = ((self.version(), index_kind), names,
                           build_index(templates, index_kind) if names else None)
        _, names, index = self._cache
        if index is None:
            return None
        scores, indices = index.search(queries, k)
        return ([[names[j] for j in row if j >= 0] for row in indices],
                [[float(s) for s, j in zip(srow, irow) if j >= 0] for srow, irow in zip(scores, indices)])
