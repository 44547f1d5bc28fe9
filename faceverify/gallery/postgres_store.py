"""The PostgreSQL + pgvector gallery store, for galleries that outgrow one machine (core: `store`)."""
from __future__ import annotations

import numpy as np

from ..errors import GalleryBusyError, GalleryError
from .store import GalleryStore


class PostgresStore(GalleryStore):
    """PostgreSQL with pgvector: the same tables, embeddings as `vector(dim)`, an HNSW index on the
    templates (inner product), one transaction per enrollment. Writers serialise on a
    transaction-scoped advisory lock, taken with the busy timeout as lock timeout. Point it at any
    PostgreSQL with the vector extension: a local server, a managed one, or the primary of a
    replicated cluster (reads may go to replicas with a second URL)."""

    placeholder = "%s"
    id_column = "BIGSERIAL PRIMARY KEY"
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

    def _append_only(self, table: str) -> list[str]:
        function = f"faceverify_{table}_append_only"
        return [f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION 'the {table} table is append-only'; END $$",
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {function}()",
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"]

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
