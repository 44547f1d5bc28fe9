"""SQLite storage for a gallery: one file, WAL mode, one transaction per enrollment.

Embeddings are stored as raw float32 bytes (never pickled). The file records the fingerprint of
the model that produced them (`weights_sha256`) and refuses embeddings from any other model.
A process killed mid-enrollment leaves the identity either fully present or absent, because
the whole enrollment of one identity is a single transaction.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import GalleryBusyError, GalleryError, ModelMismatchError

SCHEMA_VERSION = "1"
APPLICATION_ID = 0x46564731  # "FVG1": marks the file as a faceverify gallery
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    source TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, embedding BLOB NOT NULL,
    det_score REAL NOT NULL, face_size REAL NOT NULL, sharpness REAL NOT NULL,
    thumbnail BLOB, created TEXT NOT NULL);
CREATE TABLE templates (
    identity_id INTEGER PRIMARY KEY REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL, images INTEGER NOT NULL);
CREATE INDEX images_identity ON images(identity_id);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class GalleryStore:
    """Low-level storage; `Gallery` adds detection, quality checks and search on top."""

    def __init__(self, path: str | Path, weights_sha256: str, embedding_dim: int,
                 threshold: float, busy_timeout_s: float = 10.0, create: bool = True,
                 target_fpir: float | None = None):
        self.path = Path(path)
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if not exists and not create:
            raise GalleryError(f"{self.path}: no such gallery")
        try:
            self.db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            if not exists:
                self._create(weights_sha256, embedding_dim, threshold, target_fpir)
            elif self.db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                raise GalleryError(f"{self.path}: not a faceverify gallery")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: not a readable gallery database ({exc})") from None
        self.meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if self.meta["weights_sha256"] != weights_sha256:
            raise ModelMismatchError(
                f"{self.path} was built with model {self.meta['weights_sha256'][:12]}, not "
                f"{weights_sha256[:12]}; re-embed it with `faceverify gallery export` + `import` "
                "using the new model, or open it with the model that built it")
        self.embedding_dim = int(self.meta["embedding_dim"])

    def _create(self, weights_sha256: str, embedding_dim: int, threshold: float,
                target_fpir: float | None) -> None:
        with self.transaction():
            if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                return  # another process created it while we waited for the lock
            self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", SCHEMA_VERSION), ("weights_sha256", weights_sha256),
                ("embedding_dim", str(embedding_dim)), ("threshold", repr(float(threshold))),
                ("created", _now())] + ([("target_fpir", repr(float(target_fpir)))] if target_fpir else []))

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE … COMMIT: takes the write lock up front, so a second writer waits up to
        the busy timeout and then gets `GalleryBusyError` instead of a half-done write."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise GalleryBusyError(f"{self.path}: another process is writing; try again") from None
            raise
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # ----------------------------------------------------------------- reads
    @property
    def threshold(self) -> float:
        """The fixed threshold stored at creation (used when no target FPIR is set)."""
        return float(self.meta["threshold"])

    @property
    def target_fpir(self) -> float | None:
        return float(self.meta["target_fpir"]) if "target_fpir" in self.meta else None

    def identity_id(self, name: str) -> int | None:
        row = self.db.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def find_image(self, sha256: str):
        return self.db.execute(
            "SELECT images.id, identities.name, images.source FROM images JOIN identities "
            "ON identities.id = images.identity_id WHERE sha256 = ?", (sha256,)).fetchone()

    def identities(self) -> list[tuple[str, int, str]]:
        """(name, number of images, created) for every identity, by name."""
        return self.db.execute(
            "SELECT name, COUNT(images.id), identities.created FROM identities LEFT JOIN images "
            "ON images.identity_id = identities.id GROUP BY identities.id ORDER BY name").fetchall()

    def images_of(self, name: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT images.id, source, sha256, det_score, face_size, sharpness, images.created "
            "FROM images JOIN identities ON identities.id = images.identity_id WHERE name = ? "
            "ORDER BY images.id", (name,)).fetchall()
        keys = ("id", "source", "sha256", "det_score", "face_size", "sharpness", "created")
        return [dict(zip(keys, row)) for row in rows]

    def thumbnail(self, name: str) -> bytes | None:
        """The encoded aligned crop of the identity's first image (for UIs)."""
        row = self.db.execute("SELECT thumbnail FROM images JOIN identities ON identities.id = "
                              "images.identity_id WHERE name = ? AND thumbnail IS NOT NULL "
                              "ORDER BY images.id LIMIT 1", (name,)).fetchone()
        return row[0] if row else None

    def templates(self) -> tuple[list[str], np.ndarray]:
        rows = self.db.execute("SELECT name, embedding FROM templates JOIN identities "
                               "ON identities.id = templates.identity_id ORDER BY identities.id").fetchall()
        matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(-1, self.embedding_dim)
        return [r[0] for r in rows], matrix

    def all_images(self):
        """(identity names, sources, sha256s, embeddings, quality rows) of every image, for export."""
        rows = self.db.execute(
            "SELECT name, source, sha256, embedding, det_score, face_size, sharpness FROM images "
            "JOIN identities ON identities.id = images.identity_id ORDER BY images.id").fetchall()
        embeddings = np.frombuffer(b"".join(r[3] for r in rows), np.float32).reshape(-1, self.embedding_dim)
        return rows, embeddings

    # ---------------------------------------------------------------- writes
    def add_images(self, name: str, images: list[dict]) -> int:
        """Add images (dicts with source, sha256, embedding, det_score, face_size, sharpness and
        optionally thumbnail) to
        `name`, creating it if needed, and refresh its template: all in one transaction."""
        with self.transaction() as db:
            identity = self.identity_id(name)
            if identity is None:
                identity = db.execute("INSERT INTO identities (name, created) VALUES (?, ?)",
                                      (name, _now())).lastrowid
            for image in images:
                embedding = np.asarray(image["embedding"], np.float32)
                if embedding.shape != (self.embedding_dim,):
                    raise ModelMismatchError(f"embedding of size {embedding.shape} does not match "
                                             f"the gallery's {self.embedding_dim}")
                db.execute("INSERT INTO images (identity_id, source, sha256, embedding, det_score, "
                           "face_size, sharpness, thumbnail, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (identity, image["source"], image["sha256"], embedding.tobytes(),
                            image["det_score"], image["face_size"], image["sharpness"],
                            image.get("thumbnail"), _now()))
            self._refresh_template(identity)
        return identity

    def rename(self, old: str, new: str) -> None:
        if not new or not new.strip():
            raise GalleryError(f"cannot rename {old!r} to an empty name")
        with self.transaction() as db:
            if self.identity_id(old) is None:
                raise GalleryError(f"no identity named {old!r}")
            if self.identity_id(new) is not None:
                raise GalleryError(f"an identity named {new!r} already exists")
            db.execute("UPDATE identities SET name = ? WHERE name = ?", (new, old))

    def remove_identity(self, name: str) -> None:
        with self.transaction() as db:
            if db.execute("DELETE FROM identities WHERE name = ?", (name,)).rowcount == 0:
                raise GalleryError(f"no identity named {name!r}")

    def remove_image(self, image_id: int) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT identity_id FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                raise GalleryError(f"no image with id {image_id}")
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            if db.execute("SELECT COUNT(*) FROM images WHERE identity_id = ?", row).fetchone()[0]:
                self._refresh_template(row[0])
            else:  # an identity without images cannot be matched: remove it too
                db.execute("DELETE FROM identities WHERE id = ?", row)

    def _refresh_template(self, identity: int) -> None:
        blobs = self.db.execute("SELECT embedding FROM images WHERE identity_id = ?", (identity,)).fetchall()
        matrix = np.frombuffer(b"".join(b[0] for b in blobs), np.float32).reshape(-1, self.embedding_dim)
        template = matrix.mean(axis=0)
        template /= max(float(np.linalg.norm(template)), 1e-12)
        self.db.execute("INSERT OR REPLACE INTO templates VALUES (?, ?, ?)",
                        (identity, template.astype(np.float32).tobytes(), len(matrix)))
