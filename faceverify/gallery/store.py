"""Gallery storage: the same tables and guarantees in SQLite (one file, the embedded default) and
PostgreSQL + pgvector (galleries that outgrow one machine).

Embeddings are stored as raw float32 (SQLite BLOB; pgvector `vector`), never pickled. A gallery
records the fingerprint of the model and detector that produced its embeddings (meta key
`weights_sha256`, holding `metadata.fingerprint`: the weights' sha256, plus the detector for any
but MTCNN) and refuses any other (`faceverify gallery upgrade` re-embeds it for a new model or
detector: see `upgrade`). The
whole enrollment of one identity is one transaction, so a process killed in the middle leaves the
identity fully present or absent; a second writer waits up to the busy timeout and then gets
`GalleryBusyError`. Search is the store's business: SQLite hands its
templates to an in-memory index (numpy / FAISS), PostgreSQL searches an HNSW index in the server.
"""
from __future__ import annotations

import logging
import sqlite3
from abc import ABC, abstractmethod
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import GalleryBusyError, GalleryError, ModelMismatchError
from ..metadata import describe_fingerprint

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
APPLICATION_ID = 0x46564731  # "FVG1": marks a SQLite file as a faceverify gallery
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(location: str | Path, weights_sha256: str, embedding_dim: int, threshold: float,
               busy_timeout_s: float = 10.0, create: bool = True, target_fpir: float | None = None,
               any_model: bool = False):
    """A `PostgresStore` for a postgresql:// URL, else a `SqliteStore` for a file path.
    `any_model`: open it even if another model built it (only `upgrade` does that)."""
    kind = PostgresStore if str(location).startswith(POSTGRES_SCHEMES) else SqliteStore
    return kind(location, weights_sha256, embedding_dim, threshold, busy_timeout_s, create, target_fpir,
                any_model)


#: meta keys naming the model an upgrade in progress is staging embeddings for (`upgrade_images`)
UPGRADE_SHA, UPGRADE_DIM = "upgrade_weights_sha256", "upgrade_embedding_dim"


def _template(embeddings: np.ndarray) -> np.ndarray:
    """An identity's template: the mean of its embeddings, L2-normalised."""
    template = embeddings.mean(axis=0)
    template /= max(float(np.linalg.norm(template)), 1e-12)
    return template


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class GalleryStore(ABC):
    """What `Gallery` needs from storage. SQL shared by both back ends is written once here with
    `?` placeholders; a back end supplies the connection, its column types and its search."""

    placeholder = "?"

    def __init__(self, location, weights_sha256: str, embedding_dim: int, threshold: float,
                 busy_timeout_s: float, create: bool, target_fpir: float | None, any_model: bool = False):
        self.location, self.busy_timeout_s = str(location), busy_timeout_s
        exists = self._connect(create)
        if not exists:
            self._create(weights_sha256, embedding_dim, threshold, target_fpir)
        self.meta = dict(self._execute("SELECT key, value FROM meta").fetchall())
        if self.meta["weights_sha256"] != weights_sha256 and not any_model:
            self.close()
            raise ModelMismatchError(
                f"{self.path} was built with model {describe_fingerprint(self.meta['weights_sha256'])}, not "
                f"{describe_fingerprint(weights_sha256)}; re-embed it for this model with `faceverify gallery upgrade "
                f"--gallery {self.path} [--model NEW]` (resumable; it keeps working with its old "
                "model until the switch), or open it with the model that built it")
        self.embedding_dim = int(self.meta["embedding_dim"])
        self.has_quality = "quality" in self._columns("images") or self._add_quality_column()

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
    def _staging_schema(self, embedding_dim: int) -> str:
        """CREATE TABLE upgrade_images: per image, its embedding by the upgrade's target model (or
        the problem that prevented one), keyed by the image's id."""

    def _retype_embeddings(self, embedding_dim: int) -> None:
        """In the switch, before the staged embeddings replace the old ones: make the embedding
        columns take `embedding_dim` (templates already emptied). Nothing to do for BLOBs."""

    def _retyped(self) -> None:
        """In the switch, once images and templates hold the new embeddings (constraints, indexes)."""

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
            for statement in self._schema(embedding_dim):
                self._execute(statement)
            rows = [("schema_version", SCHEMA_VERSION), ("weights_sha256", weights_sha256),
                    ("embedding_dim", str(embedding_dim)), ("threshold", repr(float(threshold))),
                    ("created", _now())]
            if target_fpir:
                rows.append(("target_fpir", repr(float(target_fpir))))
            for row in rows:
                self._execute("INSERT INTO meta VALUES (?, ?)", row)

    @contextmanager
    def transaction(self):
        """BEGIN (taking the write lock up front) … COMMIT, or ROLLBACK on any error or kill."""
        self._begin()
        try:
            yield self.db
        except BaseException:
            self._execute("ROLLBACK")
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

    def _add_quality_column(self) -> bool:
        """Give a gallery made before per-face quality its `quality` column, under the write lock
        (a second process doing the same finds it there). A gallery this process cannot write to
        stays as it is: its photos read back without a score."""
        try:
            with self.transaction():
                if "quality" not in self._columns("images"):
                    self._execute("ALTER TABLE images ADD COLUMN quality REAL")
            return True
        except Exception as exc:  # read-only file or role, or another writer holding the lock
            log.warning("%s: cannot add the quality column (%s); photos read back without a score",
                        self.path, str(exc).splitlines()[0])
            return False

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
    def add_images(self, name: str, images: list[dict]) -> int:
        """Add images (dicts with source, sha256, embedding, det_score, face_size, sharpness and
        optionally thumbnail) to `name`, creating it if needed, and refresh its template: all in
        one transaction."""
        with self.transaction():
            self._check_model()
            identity = self.identity_id(name)
            if identity is None:
                identity = self._insert_id("INSERT INTO identities (name, created) VALUES (?, ?)",
                                           (name, _now()))
            for image in images:
                embedding = np.asarray(image["embedding"], np.float32)
                if embedding.shape != (self.embedding_dim,):
                    raise ModelMismatchError(f"embedding of size {embedding.shape} does not match "
                                             f"the gallery's {self.embedding_dim}")
                values = [identity, image["source"], image["sha256"], self._vector(embedding),
                          float(image["det_score"]), float(image["face_size"]), float(image["sharpness"]),
                          image.get("thumbnail"), _now()]
                if self.has_quality:
                    values.append(None if image.get("quality") is None else float(image["quality"]))
                self._execute("INSERT INTO images (identity_id, source, sha256, embedding, det_score, face_size, "
                              f"sharpness, thumbnail, created{', quality' if self.has_quality else ''}) "
                              f"VALUES ({', '.join('?' * len(values))})", values)
            self._refresh_template(identity)
        return identity

    def rename(self, old: str, new: str) -> None:
        if not new or not new.strip():
            raise GalleryError(f"cannot rename {old!r} to an empty name")
        with self.transaction():
            if self.identity_id(old) is None:
                raise GalleryError(f"no identity named {old!r}")
            if self.identity_id(new) is not None:
                raise GalleryError(f"an identity named {new!r} already exists")
            self._execute("UPDATE identities SET name = ? WHERE name = ?", (new, old))

    def remove_identity(self, name: str) -> None:
        with self.transaction():
            if self._execute("DELETE FROM identities WHERE name = ?", (name,)).rowcount == 0:
                raise GalleryError(f"no identity named {name!r}")

    def remove_image(self, image_id: int) -> None:
        with self.transaction():
            row = self._execute("SELECT identity_id FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                raise GalleryError(f"no image with id {image_id}")
            identity = row[0]
            self._execute("DELETE FROM images WHERE id = ?", (image_id,))
            if self._execute("SELECT COUNT(*) FROM images WHERE identity_id = ?", (identity,)).fetchone()[0]:
                self._refresh_template(identity)
            else:  # an identity without images cannot be matched: remove it too
                self._execute("DELETE FROM identities WHERE id = ?", (identity,))

    def _refresh_template(self, identity: int) -> None:
        rows = self._execute("SELECT embedding FROM images WHERE identity_id = ?", (identity,)).fetchall()
        template = _template(self._array([r[0] for r in rows]))
        self._execute("DELETE FROM templates WHERE identity_id = ?", (identity,))
        self._execute("INSERT INTO templates VALUES (?, ?, ?)", (identity, self._vector(template), len(rows)))

    # --------------------------------------------------------------- upgrade
    # Re-embedding for a new model (`upgrade.upgrade_gallery`): new embeddings are staged in
    # `upgrade_images`, one transaction per person, while the gallery keeps working with its old
    # model; then one transaction swaps them in. Rows of `upgrade_images` go with their image
    # (ON DELETE CASCADE); images enrolled meanwhile are staged by the next pass.

    def staged_model(self) -> tuple[str, int] | None:
        """(weights sha256, embedding size) of the model an unfinished upgrade is staging for."""
        meta = dict(self._execute("SELECT key, value FROM meta WHERE key IN (?, ?)",
                                  (UPGRADE_SHA, UPGRADE_DIM)).fetchall())
        if UPGRADE_SHA not in meta or not self._has_table("upgrade_images"):
            return None
        return meta[UPGRADE_SHA], int(meta[UPGRADE_DIM])

    def start_upgrade(self, weights_sha256: str, embedding_dim: int) -> int:
        """Make `upgrade_images` ready for this model: kept if an earlier run staged for the same
        model (returns how many images it holds), else created afresh (returns 0)."""
        with self.transaction():
            if self.staged_model() == (weights_sha256, embedding_dim):
                if "quality" not in self._columns("upgrade_images"):  # staged by an older version
                    self._execute("ALTER TABLE upgrade_images ADD COLUMN quality REAL")
                return self._execute("SELECT COUNT(*) FROM upgrade_images "
                                     "WHERE embedding IS NOT NULL").fetchone()[0]
            self._execute("DROP TABLE IF EXISTS upgrade_images")  # staged for another model: useless now
            self._execute("DELETE FROM meta WHERE key IN (?, ?)", (UPGRADE_SHA, UPGRADE_DIM))
            self._execute(self._staging_schema(embedding_dim))
            self._execute("INSERT INTO meta VALUES (?, ?)", (UPGRADE_SHA, weights_sha256))
            self._execute("INSERT INTO meta VALUES (?, ?)", (UPGRADE_DIM, str(embedding_dim)))
        return 0

    def unstaged_images(self) -> list[tuple[str, list[dict]]]:
        """(name, [images: id, source, sha256]) per person, by name, for the images that have no
        staged embedding yet (never tried, or tried and failed: tried again)."""
        rows = self._execute(
            "SELECT identities.name, images.id, images.source, images.sha256 FROM images "
            "JOIN identities ON identities.id = images.identity_id LEFT JOIN upgrade_images "
            "ON upgrade_images.image_id = images.id WHERE upgrade_images.embedding IS NULL "
            "ORDER BY identities.name, images.id").fetchall()
        people: dict[str, list[dict]] = {}
        for name, image_id, source, sha256 in rows:
            people.setdefault(name, []).append({"id": image_id, "source": source, "sha256": sha256})
        return list(people.items())

    def stage(self, weights_sha256: str, rows: list[dict]) -> None:
        """Record one person's re-embedded images (dicts: id and either embedding, thumbnail,
        det_score, face_size, sharpness, quality, or problem), in one transaction."""
        with self.transaction():
            staged = self.staged_model()
            if staged is None or staged[0] != weights_sha256:
                raise GalleryError(f"{self.path}: another process finished or restarted this upgrade")
            dim = staged[1]
            ids = [row["id"] for row in rows]
            existing = set() if not ids else {r[0] for r in self._execute(
                f"SELECT id FROM images WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()}
            values = []
            for row in rows:
                if row["id"] not in existing:
                    continue  # removed since it was read: nothing to stage
                embedding = row.get("embedding")
                if embedding is not None:
                    embedding = np.asarray(embedding, np.float32)
                    if embedding.shape != (dim,):
                        raise ModelMismatchError(f"embedding of size {embedding.shape} does not match "
                                                 f"the upgrade's {dim}")
                    embedding = self._vector(embedding)
                values.append((row["id"], embedding, row.get("thumbnail"), row.get("det_score"),
                               row.get("face_size"), row.get("sharpness"), row.get("quality"), row.get("problem")))
            if not values:
                return
            self._executemany(
                "INSERT INTO upgrade_images (image_id, embedding, thumbnail, det_score, face_size, "
                "sharpness, quality, problem) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (image_id) DO "
                "UPDATE SET embedding = excluded.embedding, thumbnail = excluded.thumbnail, det_score = "
                "excluded.det_score, face_size = excluded.face_size, sharpness = excluded.sharpness, "
                "quality = excluded.quality, problem = excluded.problem", values)

    def staged_problems(self) -> list[tuple[str, str, str]]:
        """(name, source, reason) of every image the upgrade's model could not re-embed."""
        return [tuple(r) for r in self._execute(
            "SELECT identities.name, images.source, upgrade_images.problem FROM upgrade_images "
            "JOIN images ON images.id = upgrade_images.image_id JOIN identities ON identities.id = "
            "images.identity_id WHERE upgrade_images.embedding IS NULL ORDER BY identities.name, "
            "images.id").fetchall()]

    def finish_upgrade(self, weights_sha256: str, embedding_dim: int, threshold: float,
                       drop_missing: bool = False) -> dict | None:
        """The switch, in one transaction: every image's embedding, thumbnail and quality replaced
        by the staged ones, templates rebuilt, meta naming the new model, staging dropped. With
        `drop_missing`, images that could not be re-embedded are removed first (and people left
        without images). Returns {"dropped": [(name, source, reason)], "removed": [names]}, or
        None, changing nothing, if some image has no staged embedding (enrolled since it was
        staged, or a problem without `drop_missing`)."""
        old_dim = self.embedding_dim
        try:
            with self.transaction():
                if self.staged_model() != (weights_sha256, embedding_dim):
                    raise GalleryError(f"{self.path}: another process finished or restarted this upgrade")
                problems = self.staged_problems()
                unstaged = self._execute(
                    "SELECT COUNT(*) FROM images LEFT JOIN upgrade_images ON upgrade_images.image_id = "
                    "images.id WHERE upgrade_images.image_id IS NULL").fetchone()[0]
                if unstaged or (problems and not drop_missing):
                    return None
                self._execute("DELETE FROM images WHERE id IN "
                              "(SELECT image_id FROM upgrade_images WHERE embedding IS NULL)")
                removed = [r[0] for r in self._execute(
                    "SELECT name FROM identities WHERE NOT EXISTS (SELECT 1 FROM images WHERE "
                    "images.identity_id = identities.id) ORDER BY name").fetchall()]
                self._execute("DELETE FROM identities WHERE NOT EXISTS (SELECT 1 FROM images WHERE "
                              "images.identity_id = identities.id)")
                self._execute("DELETE FROM templates")
                self._retype_embeddings(embedding_dim)
                self._execute(
                    "UPDATE images SET (embedding, thumbnail, det_score, face_size, sharpness) = "
                    "(SELECT embedding, thumbnail, det_score, face_size, sharpness FROM upgrade_images "
                    "WHERE upgrade_images.image_id = images.id)")
                if self.has_quality:  # the new model's verdict on each photo
                    self._execute("UPDATE images SET quality = (SELECT quality FROM upgrade_images "
                                  "WHERE upgrade_images.image_id = images.id)")
                self.embedding_dim = embedding_dim
                self._rebuild_templates()
                self._retyped()
                for key, value in (("weights_sha256", weights_sha256), ("embedding_dim", str(embedding_dim)),
                                   ("threshold", repr(float(threshold))),
                                   ("previous_weights_sha256", self.meta["weights_sha256"]),
                                   ("upgraded", _now())):
                    self._execute("DELETE FROM meta WHERE key = ?", (key,))
                    self._execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                self._execute("DELETE FROM meta WHERE key IN (?, ?)", (UPGRADE_SHA, UPGRADE_DIM))
                self._execute("DROP TABLE upgrade_images")
        except BaseException:
            self.embedding_dim = old_dim  # rolled back: still the old model's gallery
            raise
        self.meta = dict(self._execute("SELECT key, value FROM meta").fetchall())
        return {"dropped": problems, "removed": removed}

    def _rebuild_templates(self, chunk: int = 1000) -> None:
        """Every identity's template from its images (into an empty `templates`), `chunk`
        identities at a time."""
        ids = [r[0] for r in self._execute("SELECT id FROM identities ORDER BY id").fetchall()]
        for start in range(0, len(ids), chunk):
            rows = self._execute("SELECT identity_id, embedding FROM images WHERE identity_id >= ? AND "
                                 "identity_id <= ? ORDER BY identity_id, id",
                                 (ids[start], ids[min(start + chunk, len(ids)) - 1])).fetchall()
            if not rows:
                continue
            owners = np.array([r[0] for r in rows])
            embeddings = self._array([r[1] for r in rows])
            bounds = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1], True])
            self._executemany("INSERT INTO templates VALUES (?, ?, ?)", [
                (int(owners[a]), self._vector(_template(embeddings[a:b])), int(b - a))
                for a, b in zip(bounds[:-1], bounds[1:])])


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


class PostgresStore(GalleryStore):
    """PostgreSQL with pgvector: the same tables, embeddings as `vector(dim)`, an HNSW index on the
    templates (inner product), one transaction per enrollment. Writers serialise on a
    transaction-scoped advisory lock, taken with the busy timeout as lock timeout. Point it at any
    PostgreSQL with the vector extension: a local server, a managed one, or the primary of a
    replicated cluster (reads may go to replicas with a second URL)."""

    placeholder = "%s"
    LOCK_KEY = 0x46564731

    def _connect(self, create: bool) -> bool:
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError as exc:
            raise GalleryError(f"PostgreSQL galleries need `pip install 'faceverify[postgres]'` ({exc})") from None
        try:
            self.db = psycopg.connect(self.location, autocommit=True)
            self.db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(self.db)
        except psycopg.Error as exc:
            raise GalleryError(f"cannot open PostgreSQL gallery {self._safe_location()}: "
                               f"{str(exc).strip().splitlines()[0]}") from None
        exists = self._has_table("meta")
        if not exists and not create:
            raise GalleryError(f"{self._safe_location()}: no faceverify gallery in this database")
        return exists

    def _safe_location(self) -> str:
        """The URL without its password."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.location)
        netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
        user = parts.username + "@" if parts.username else ""
        return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, ""))

    @property
    def path(self) -> str:
        return self._safe_location()

    def _schema(self, embedding_dim: int) -> list[str]:
        return ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                "CREATE TABLE identities (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                "created TEXT NOT NULL)",
                f"CREATE TABLE images (id BIGSERIAL PRIMARY KEY, identity_id BIGINT NOT NULL "
                f"REFERENCES identities(id) ON DELETE CASCADE, source TEXT NOT NULL, "
                f"sha256 TEXT NOT NULL UNIQUE, embedding vector({embedding_dim}) NOT NULL, "
                f"det_score REAL NOT NULL, face_size REAL NOT NULL, sharpness REAL NOT NULL, "
                f"thumbnail BYTEA, created TEXT NOT NULL, quality REAL)",
                f"CREATE TABLE templates (identity_id BIGINT PRIMARY KEY REFERENCES identities(id) "
                f"ON DELETE CASCADE, embedding vector({embedding_dim}) NOT NULL, images INTEGER NOT NULL)",
                "CREATE INDEX images_identity ON images(identity_id)",
                "CREATE INDEX templates_hnsw ON templates USING hnsw (embedding vector_ip_ops)"]

    def _begin(self) -> None:
        import psycopg

        self.db.execute("BEGIN")
        try:
            self.db.execute(f"SET LOCAL lock_timeout = '{int(self.busy_timeout_s * 1000)}ms'")
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (self.LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            self.db.execute("ROLLBACK")
            raise GalleryBusyError(f"{self._safe_location()}: another process is writing; try again") from None

    def _has_table(self, name: str) -> bool:
        return self.db.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def _staging_schema(self, embedding_dim: int) -> str:
        return (f"CREATE TABLE upgrade_images (image_id BIGINT PRIMARY KEY REFERENCES images(id) "
                f"ON DELETE CASCADE, embedding vector({embedding_dim}), thumbnail BYTEA, det_score REAL, "
                f"face_size REAL, sharpness REAL, quality REAL, problem TEXT)")

    def _retype_embeddings(self, embedding_dim: int) -> None:
        """vector(old) → vector(new): the HNSW index goes (rebuilt by `_retyped`), the emptied
        templates column is retyped, the images column retyped empty and refilled by the switch.
        PostgreSQL DDL is transactional: a rollback restores all of it."""
        self._execute("DROP INDEX IF EXISTS templates_hnsw")
        self._execute(f"ALTER TABLE templates ALTER COLUMN embedding TYPE vector({embedding_dim}) "
                      f"USING NULL::vector({embedding_dim})")
        self._execute("ALTER TABLE images ALTER COLUMN embedding DROP NOT NULL")
        self._execute(f"ALTER TABLE images ALTER COLUMN embedding TYPE vector({embedding_dim}) "
                      f"USING NULL::vector({embedding_dim})")

    def _retyped(self) -> None:
        self._execute("ALTER TABLE images ALTER COLUMN embedding SET NOT NULL")
        self._execute("CREATE INDEX templates_hnsw ON templates USING hnsw (embedding vector_ip_ops)")

    def _vector(self, embedding: np.ndarray):
        return np.asarray(embedding, np.float32)

    def _array(self, values: list) -> np.ndarray:
        return np.asarray([v.to_numpy() for v in values], np.float32).reshape(-1, self.embedding_dim)

    def search(self, queries: np.ndarray, k: int, index_kind: str = "auto"):
        """HNSW in the server (`<#>` is the negative inner product); `ef_search` ≥ k."""
        names, scores = [], []
        self.db.execute(f"SET hnsw.ef_search = {max(40, 2 * k)}")
        try:
            for query in np.asarray(queries, np.float32):
                rows = self.db.execute(
                    "SELECT name, -(templates.embedding <#> %s) FROM templates JOIN identities "
                    "ON identities.id = templates.identity_id ORDER BY templates.embedding <#> %s LIMIT %s",
                    (query, query, k)).fetchall()
                names.append([r[0] for r in rows])
                scores.append([float(r[1]) for r in rows])
        except Exception:
            self._check_model()  # upgraded meanwhile? (vectors of another size)
            raise
        self._check_model()
        return (names, scores) if names and names[0] else None
