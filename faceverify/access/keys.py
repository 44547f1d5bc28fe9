"""API keys: `fvk_<key id>_<secret>`. The key id is public (it finds the key's row); the secret is
256 random bits, shown once when the key is made and kept only as a slow salted hash in the
gallery (`gallery.keys`). A key carries scopes: verify (1:1 comparisons and embeddings), identify
(1:N searches), enrol (adding people and reading who is enrolled), admin (everything, renames and
removals included)."""
from __future__ import annotations

import hmac
import os
import secrets
import threading
from dataclasses import dataclass

from ..errors import AuthenticationError, FaceVerifyError, PermissionDeniedError
from ..gallery.names import identity_name
from .hashing import DECOY_HASH, check_secret, hash_secret

SCOPES = ("verify", "identify", "enrol", "admin")
TOKEN_PREFIX = "fvk"
KEY_ID_BYTES, SECRET_BYTES = 8, 32


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_id: str
    scopes: frozenset

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise PermissionDeniedError(f"key {self.name!r} has scopes {', '.join(sorted(self.scopes))}; "
                                        f"this needs {scope!r}")


def _split(token: str) -> tuple[str, str]:
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        raise AuthenticationError("malformed API key (expected fvk_<id>_<secret>)")
    return parts[1], parts[2]


class CheckedTokens:
    """Tokens whose secret already passed its slow hash in this process, keyed by key id and
    remembered as an HMAC under a per-process random key (never the token itself): a client's
    every request would otherwise cost a full scrypt. Revocation is still read from the gallery
    on every request (`KeyRing.authenticate`)."""

    def __init__(self, size: int = 1024):
        self._mac_key, self._size = os.urandom(32), size
        self._seen: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def _mac(self, token: str) -> bytes:
        return hmac.new(self._mac_key, token.encode(), "sha256").digest()

    def known(self, key_id: str, secret_hash: str, token: str) -> bool:
        with self._lock:
            seen = self._seen.get((key_id, secret_hash))
        return seen is not None and hmac.compare_digest(seen, self._mac(token))

    def add(self, key_id: str, secret_hash: str, token: str) -> None:
        with self._lock:
            if len(self._seen) >= self._size:
                self._seen.clear()
            self._seen[(key_id, secret_hash)] = self._mac(token)


class KeyRing:
    """Makes, lists, revokes and checks the API keys of the gallery `store` (an open
    `GalleryStore`). `checked`: a `CheckedTokens` shared across requests (servers keep one)."""

    def __init__(self, store, checked: CheckedTokens | None = None):
        self.store, self.checked = store, checked or CheckedTokens()

    def add(self, name: str, scopes) -> tuple[ApiKey, str]:
        """A new key; returns it and its token, which is shown once and stored nowhere."""
        name = identity_name(name)
        scopes = sorted(set(scopes))
        unknown = [s for s in scopes if s not in SCOPES]
        if not scopes or unknown:
            raise FaceVerifyError(f"scopes {unknown or 'none given'}: choose among {', '.join(SCOPES)}")
        key_id, secret = secrets.token_hex(KEY_ID_BYTES), secrets.token_urlsafe(SECRET_BYTES).replace("_", "-")
        self.store.add_key(name, key_id, hash_secret(secret), scopes)
        return ApiKey(name, key_id, frozenset(scopes)), f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def revoke(self, name: str) -> None:
        self.store.revoke_key(name)

    def list(self) -> list[dict]:
        return self.store.api_keys()

    def authenticate(self, token: str | None) -> ApiKey:
        """The key `token` belongs to, or `AuthenticationError`: none, malformed, unknown, wrong
        secret or revoked. An unknown key id costs one scrypt like a known one."""
        if not token:
            raise AuthenticationError("an API key is needed: Authorization: Bearer fvk_...")
        key_id, secret = _split(token)
        row = self.store.key_by_id(key_id)
        if row is None:
            check_secret(secret, DECOY_HASH)
            raise AuthenticationError("unknown or wrong API key")
        if not self.checked.known(key_id, row["secret_hash"], token):
            if not check_secret(secret, row["secret_hash"]):
                raise AuthenticationError("unknown or wrong API key")
            self.checked.add(key_id, row["secret_hash"], token)
        if row["revoked"]:
            raise AuthenticationError(f"API key {row['name']!r} was revoked")
        return ApiKey(row["name"], key_id, frozenset(row["scopes"].split()))
