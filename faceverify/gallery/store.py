"""Gallery storage, the core both back ends share (`sqlite_store`: one file, the embedded default;
`postgres_store`: PostgreSQL + pgvector, for galleries that outgrow one machine; `backends.open_store`
picks one by location).

Embeddings are stored as raw float32 (SQLite BLOB; pgvector `vector`), never pickled. A gallery
records the fingerprint of the model and detector that produced its embeddings (meta key
`weights_sha256`, holding `metadata.fingerprint`: the weights' sha256, plus the detector for any
but MTCNN) and refuses any other (`faceverify gallery upgrade` re-embeds it for a new model or
detector: see `upgrade`). The
whole enrollment of one identity is one transaction, so a process killed in the middle leaves the
identity fully present or absent; a second writer waits up to the busy timeout and then gets
`GalleryBusyError`. Search is the store's business: SQLite hands its
templates to an in-memory index (numpy / FAISS), PostgreSQL searches an HNSW index in the server.
Every change (and every identification) is written to the append-only audit trail in the same
transaction (`audit`), under the store's `actor`; API keys live beside it (`keys`); re-embedding
for a new model is staged by `staging`.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from contextlib import contextmanager

import numpy as np

from ..errors import (AlreadyInGalleryError, FaceVerifyError, GalleryBusyError, GalleryError,
                      ModelMismatchError, NotInGalleryError)
from ..metadata import describe_fingerprint
from .audit import AuditEntry, AuditTrail
from .keys import KeyTable
from .rows import now, template_of
from .staging import UpgradeStaging

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"


class GalleryStore(UpgradeStaging, AuditTrail, KeyTable, ABC):
    """What `Gallery` needs from storage. SQL shared by both back ends is written once here with
    `?` placeholders; a back end supplies the connection, its column types and its search.
    `weights_sha256` None opens an existing gallery whatever its model (key and audit
    administration); `actor` names who the audit trail credits with this connection's changes."""

    placeholder = "?"
    id_column = "INTEGER PRIMARY KEY"  # an auto-numbered key, in the back end's words

    def __init__(self, location, weights_sha256: str | None, embedding_dim: int = 0, threshold: float = 0.0,
                 busy_timeout_s: float = 10.0, create: bool = True, target_fpir: float | None = None,
                 any_model: bool = False, actor: str = "local"):
        self.location, self.busy_timeout_s, self.actor = str(location), busy_timeout_s, actor
        exists = self._connect(create and weights_sha256 is not None)
        if not exists:
            self._create(weights_sha256, embedding_dim, threshold, target_fpir)
        self.meta = dict(self._execute("SELECT key, value FROM meta").fetchall())
        if weights_sha256 is not None and self.meta["weights_sha256"] != weights_sha256 and not any_model:
            self.close()
            raise ModelMismatchError(
                f"{self.path} was built with model {describe_fingerprint(self.meta['weights_sha256'])}, not "
                f"{describe_fingerprint(weights_sha256)}; re-embed it for this model with `faceverify gallery upgrade "
                f"--gallery {self.path} [--model NEW]` (resumable; it keeps working with its old "
                "model until the switch), or open it with the model that built it")
        self.embedding_dim = int(self.meta["embedding_dim"])
        self.has_quality = self._migrate()

    # -------------------------------------------------------- back-end hooks
    @abstractmethod
    def _connect(self, create: bool) -> bool:
        """Open the connection; return whether the gallery already exists."""

    @abstractmethod
    def _schema(self, embedding_dim: int) -> list[str]:
        """CREATE statements for meta, identities, images, templates (+ indexes)."""

    @abstractmethod
    def _begin(self) -> None:
        """Start a write transaction holding the gallery's write lock (or raise GalleryBusyError)."""

    @abstractmethod
    def _vector(self, embedding: np.ndarray):
        """An embedding as the column value of this back end."""

    @abstractmethod
    def _array(self, values: list) -> np.ndarray:
        """(N, dim) float32 from column values."""

    @abstractmethod
    def _append_only(self, table: str) -> list[str]:
        """Statements (triggers) that make the database itself refuse UPDATE and DELETE on `table`."""

    @abstractmethod
    def _has_table(self, name: str) -> bool:
        """Does the gallery's table `name` exist?"""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, index_kind: str = "auto"):
        """(names per query, scores per query), best first, against the identity templates."""

    @property
    def path(self) -> str:
        return self.location

    def _execute(self, sql: str, params=()):
        return self.db.execute(sql.replace("?", self.placeholder), params)

    def _executemany(self, sql: str, rows) -> None:
        self.db.cursor().executemany(sql.replace("?", self.placeholder), rows)

    def _insert_id(self, sql: str, params) -> int:
        return self._execute(sql + " RETURNING id", params).fetchone()[0]

    def _create(self, weights_sha256: str, embedding_dim: int, threshold: float,
                target_fpir: float | None) -> None:
        with self.transaction():
            if self._has_table("meta"):
                return  # another process created it while we waited for the lock
            for statement in self._schema(embedding_dim) + self._audit_schema() + self._key_schema():
                self._execute(statement)
            rows = [("schema_version", SCHEMA_VERSION), ("weights_sha256", weights_sha256),
                    ("embedding_dim", str(embedding_dim)), ("threshold", repr(float(threshold))),
                    ("created", now())]
            if target_fpir:
                rows.append(("target_fpir", repr(float(target_fpir))))
            for row in rows:
                self._execute("INSERT INTO meta VALUES (?, ?)", row)

    @contextmanager
    def transaction(self, audit: AuditEntry | None = None):
        """BEGIN (taking the write lock up front) … COMMIT, or ROLLBACK on any error or kill.
        `audit`: the line the audit trail gets in the same transaction, once its `outcome` is set
        inside; refused by a `FaceVerifyError`, the line is written after the rollback with the
        refusal as its outcome."""
        self._begin()
        try:
            yield self.db
            if audit is not None and audit.outcome is not None:  # None: nothing done, nothing to say
                self._write_audit(audit)
        except BaseException as exc:
            self._execute("ROLLBACK")
            if audit is not None and isinstance(exc, FaceVerifyError) and not isinstance(exc, GalleryBusyError):
                self.record(audit.refused(str(exc)))
            raise
        else:
            self._execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def _check_model(self) -> None:
        """Refuse to go on if another process upgraded the gallery to another model since we opened
        it (its embeddings would no longer be comparable with ours). Meta and embeddings change in
        one transaction, so a check after a read tells whether that read saw the old model's."""
        row = self._execute("SELECT value FROM meta WHERE key = 'weights_sha256'").fetchone()
        if row is None or row[0] != self.meta["weights_sha256"]:
            raise ModelMismatchError(f"{self.path} was upgraded to model {describe_fingerprint(row[0]) if row else '?'} "
                                     "since it was opened; open it again with that model")

    # ----------------------------------------------------------------- reads
    @property
    def threshold(self) -> float:
        """The fixed threshold stored at creation (used when no target FPIR is set)."""
        return float(self.meta["threshold"])

    @property
    def target_fpir(self) -> float | None:
        return float(self.meta["target_fpir"]) if "target_fpir" in self.meta else None

    def identity_id(self, name: str) -> int | None:
        row = self._execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def find_image(self, sha256: str):
        return self._execute(
            "SELECT images.id, identities.name, images.source FROM images JOIN identities "
            "ON identities.id = images.identity_id WHERE sha256 = ?", (sha256,)).fetchone()

    def _columns(self, table: str) -> set[str]:
        cursor = self._execute(f"SELECT * FROM {table} LIMIT 0")
        return {column[0] for column in cursor.description}

    def _migrate(self) -> bool:
        """Bring a gallery made by an earlier version up to date under the write lock (a second
        process doing the same finds it done): the `quality` column, the audit trail and the key
        table. A gallery this process cannot write to stays as it is (its photos read back
        without a score; what needs the new tables fails with a clear error: `missing_tables`
        says which, read once here rather than at every write). Returns whether images have a
        quality column."""
        self.missing_tables = {table for table in ("audit", "api_keys") if not self._has_table(table)}
        if "quality" in self._columns("images") and not self.missing_tables:
            return True
        try:
            with self.transaction():
                if "quality" not in self._columns("images"):
                    self._execute("ALTER TABLE images ADD COLUMN quality REAL")
                statements = ((self._audit_schema() if not self._has_table("audit") else []) +
                              (self._key_schema() if not self._has_table("api_keys") else []))
                for statement in statements:
                    self._execute(statement)
            self.missing_tables = set()
            return True
        except Exception as exc:  # read-only file or role, or another writer holding the lock
            log.warning("%s: cannot bring the gallery up to date (%s); photos read back without a "
                        "quality score, and it keeps no audit trail or keys until it can",
                        self.path, str(exc).splitlines()[0])
            return "quality" in self._columns("images")

    def has_source(self, source: str) -> bool:
        return self._execute("SELECT 1 FROM images WHERE source = ? LIMIT 1", (str(source),)).fetchone() is not None

    def sources(self) -> set[str]:
        """Where every enrolled image came from (a resumed bulk enrolment skips these)."""
        return {r[0] for r in self._execute("SELECT source FROM images").fetchall()}

    def identity_count(self) -> int:
        return self._execute("SELECT COUNT(*) FROM identities").fetchone()[0]

    def image_count(self) -> int:
        return self._execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def identities(self) -> list[tuple[str, int, str]]:
        """(name, number of images, created) for every identity, by name."""
        return [tuple(r) for r in self._execute(
            "SELECT name, COUNT(images.id), identities.created FROM identities LEFT JOIN images "
            "ON images.identity_id = identities.id GROUP BY identities.id, identities.name, "
            "identities.created ORDER BY name").fetchall()]

    def images_of(self, name: str) -> list[dict]:
        rows = self._execute(
            f"SELECT images.id, source, sha256, det_score, face_size, sharpness, "
            f"{'quality' if self.has_quality else 'NULL'}, images.created "
            "FROM images JOIN identities ON identities.id = images.identity_id WHERE name = ? "
            "ORDER BY images.id", (name,)).fetchall()
        keys = ("id", "source", "sha256", "det_score", "face_size", "sharpness", "quality", "created")
        return [dict(zip(keys, row)) for row in rows]

    def thumbnail(self, name: str) -> bytes | None:
        """The encoded aligned crop of the identity's first image (for UIs)."""
        row = self._execute("SELECT thumbnail FROM images JOIN identities ON identities.id = "
                            "images.identity_id WHERE name = ? AND thumbnail IS NOT NULL "
                            "ORDER BY images.id LIMIT 1", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def templates(self) -> tuple[list[str], np.ndarray]:
        rows = self._execute("SELECT name, embedding FROM templates JOIN identities "
                             "ON identities.id = templates.identity_id ORDER BY identities.id").fetchall()
        return [r[0] for r in rows], self._array([r[1] for r in rows])

    def all_images(self):
        """(rows of name, source, sha256, -, det_score, face_size, sharpness; embeddings), for export."""
        rows = self._execute(
            "SELECT name, source, sha256, embedding, det_score, face_size, sharpness FROM images "
            "JOIN identities ON identities.id = images.identity_id ORDER BY images.id").fetchall()
        return rows, self._array([r[3] for r in rows])

    # ---------------------------------------------------------------- writes
    def add_images(self, name: str, images: list[dict], rejected: int = 0, new_person: bool | None = None) -> int:
        """Add images (dicts with source, sha256, embedding, det_score, face_size, sharpness and
        optionally thumbnail) to `name`, creating it if needed, and refresh its template: all in
        one transaction, with its audit line (`rejected`: photos of the request refused before;
        `new_person`: see `check_person`)."""
        audit = AuditEntry("enrol", name)
        with self.transaction(audit):
            self._check_model()
            if new_person is not None:
                self.check_person(name, new_person)
            identity = self.identity_id(name)
            created = identity is None
            if created:
                identity = self._insert_id("INSERT INTO identities (name, created) VALUES (?, ?)",
                                           (name, now()))
            ids = []
            for image in images:
                embedding = np.asarray(image["embedding"], np.float32)
                if embedding.shape != (self.embedding_dim,):
                    raise ModelMismatchError(f"embedding of size {embedding.shape} does not match "
                                             f"the gallery's {self.embedding_dim}")
                values = [identity, image["source"], image["sha256"], self._vector(embedding),
                          float(image["det_score"]), float(image["face_size"]), float(image["sharpness"]),
                          image.get("thumbnail"), now()]
                if self.has_quality:
                    values.append(None if image.get("quality") is None else float(image["quality"]))
                ids.append(self._insert_id(
                    "INSERT INTO images (identity_id, source, sha256, embedding, det_score, face_size, "
                    f"sharpness, thumbnail, created{', quality' if self.has_quality else ''}) "
                    f"VALUES ({', '.join('?' * len(values))})", values))
            self._refresh_template(identity)
            audit.outcome = f"added {len(ids)} photo(s)" + (f", rejected {rejected}" if rejected else "")
            audit.detail = {"photo_ids": ids, "new_person": created, "rejected": rejected}
        return identity

    def check_person(self, name: str, new: bool) -> None:
        """Refuse a `new` person's name that is taken, or a name not enrolled when not `new`."""
        exists = self.identity_id(name) is not None
        if new and exists:
            raise AlreadyInGalleryError(f"{name!r} is already enrolled; add photos to them instead")
        if not new and not exists:
            raise NotInGalleryError(f"no identity named {name!r}")

    def _known(self, name: str) -> int:
        identity = self.identity_id(name)
        if identity is None:
            raise NotInGalleryError(f"no identity named {name!r}")
        return identity

    def rename(self, old: str, new: str) -> None:
        if not new or not new.strip():
            raise GalleryError(f"cannot rename {old!r} to an empty name")
        audit = AuditEntry("rename", old, renamed_to=new)
        with self.transaction(audit):
            self._known(old)
            if self.identity_id(new) is not None:
                raise AlreadyInGalleryError(f"an identity named {new!r} already exists")
            self._execute("UPDATE identities SET name = ? WHERE name = ?", (new, old))
            audit.outcome = "renamed"

    def remove_identity(self, name: str) -> list[str]:
        """Remove a person: their embeddings, thumbnails and template go (the audit line stays).
        Returns the sources of their photos (for the caller to delete the copies it kept)."""
        audit = AuditEntry("remove", name)
        with self.transaction(audit):
            identity = self._known(name)
            sources = [r[0] for r in self._execute("SELECT source FROM images WHERE identity_id = ?",
                                                   (identity,)).fetchall()]
            self._execute("DELETE FROM identities WHERE id = ?", (identity,))
            audit.outcome, audit.detail = f"removed with {len(sources)} photo(s)", {"photos": len(sources)}
        return sources

    def remove_image(self, image_id: int, name: str | None = None) -> str:
        """Remove one photo (of `name`, if given: another person's photo is refused as unknown);
        a person left without photos goes too. Returns the photo's source."""
        audit = AuditEntry("remove-photo", name, detail={"photo_id": image_id})
        with self.transaction(audit):
            row = self._execute("SELECT images.identity_id, images.source, identities.name FROM images JOIN "
                                "identities ON identities.id = images.identity_id WHERE images.id = ?",
                                (image_id,)).fetchone()
            if row is None or (name is not None and row[2] != name):
                raise NotInGalleryError(f"no image with id {image_id}" + (f" of {name!r}" if name else ""))
            identity, source, audit.subject = row
            self._execute("DELETE FROM images WHERE id = ?", (image_id,))
            if self._execute("SELECT COUNT(*) FROM images WHERE identity_id = ?", (identity,)).fetchone()[0]:
                self._refresh_template(identity)
                audit.outcome = "removed"
            else:  # an identity without images cannot be matched: remove it too
                self._execute("DELETE FROM identities WHERE id = ?", (identity,))
                audit.outcome = "removed, and the person with their last photo"
        return source

    def _refresh_template(self, identity: int) -> None:
        rows = self._execute("SELECT embedding FROM images WHERE identity_id = ?", (identity,)).fetchall()
        template = template_of(self._array([r[0] for r in rows]))
        self._execute("DELETE FROM templates WHERE identity_id = ?", (identity,))
        self._execute("INSERT INTO templates VALUES (?, ?, ?)", (identity, self._vector(template), len(rows)))
