"""The API keys a gallery accepts, kept beside it: a name, the public key id, the scopes and a slow
salted hash of the secret (`access.hashing`), never the secret itself. Adding and revoking a key
reach the audit trail. What a key is and how one is checked: `access.keys`."""
from __future__ import annotations

from ..errors import AlreadyInGalleryError, FaceVerifyError, NotInGalleryError
from .audit import AuditEntry
from .rows import now

KEY_COLUMNS = ("name", "key_id", "secret_hash", "scopes", "created", "revoked")


class KeyTable:
    """The key half of `GalleryStore` (a mixin: it uses the store's connection and hooks)."""

    def _key_schema(self) -> list[str]:
        return [f"CREATE TABLE api_keys (id {self.id_column}, name TEXT NOT NULL, key_id TEXT NOT NULL UNIQUE, "
                "secret_hash TEXT NOT NULL, scopes TEXT NOT NULL, created TEXT NOT NULL, revoked TEXT)",
                # a name is unique among the keys in force (a revoked key's name may be given again)
                "CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE revoked IS NULL"]

    def _require_keys(self) -> None:
        if "api_keys" in self.missing_tables:
            raise FaceVerifyError(f"{self.path}: this gallery has no key table yet and cannot be given "
                                  "one (read-only?); open it once with write access")

    def add_key(self, name: str, key_id: str, secret_hash: str, scopes: list[str]) -> None:
        self._require_keys()
        audit = AuditEntry("key-add", name, detail={"key_id": key_id, "scopes": scopes})
        with self.transaction(audit):
            if self._live_key(name) is not None:
                raise AlreadyInGalleryError(f"a key named {name!r} is in force; revoke it first or choose another name")
            self._execute("INSERT INTO api_keys (name, key_id, secret_hash, scopes, created) VALUES (?, ?, ?, ?, ?)",
                          (name, key_id, secret_hash, " ".join(scopes), now()))
            audit.outcome = "added"

    def _live_key(self, name: str):
        return self._execute("SELECT key_id FROM api_keys WHERE name = ? AND revoked IS NULL", (name,)).fetchone()

    def revoke_key(self, name: str) -> None:
        self._require_keys()
        audit = AuditEntry("key-revoke", name)
        with self.transaction(audit):
            row = self._live_key(name)
            if row is None:
                raise NotInGalleryError(f"no key in force named {name!r}")
            self._execute("UPDATE api_keys SET revoked = ? WHERE key_id = ?", (now(), row[0]))
            audit.outcome, audit.detail = "revoked", {"key_id": row[0]}

    def api_keys(self) -> list[dict]:
        """Every key ever added (secret hashes left out), oldest first."""
        self._require_keys()
        rows = self._execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys ORDER BY id").fetchall()
        return [{k: v for k, v in zip(KEY_COLUMNS, row) if k != "secret_hash"} for row in rows]

    def key_by_id(self, key_id: str) -> dict | None:
        """The key with this public id (its hash included, for checking a secret), or None."""
        self._require_keys()
        row = self._execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return dict(zip(KEY_COLUMNS, row)) if row else None
