"""Slow, salted hashes of secrets (API keys, passwords) with the standard library's scrypt, checked
in constant time. The encoded form names its parameters, so they can be raised later without
invalidating what was stored."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

#: scrypt's cost: 16 MiB and ~50 ms a check on one core (OWASP's minimum is N=2^17 with r=8 for
#: passwords; API keys carry 256 random bits, and checks of one key are cached by `KeyRing`)
N, R, P = 2 ** 14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
PREFIX = "scrypt"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * (n + p + 2) * 2,
                          dklen=HASH_BYTES)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """`scrypt$N$r$p$salt$hash`, with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    return "$".join([PREFIX, str(N), str(R), str(P), _b64(salt), _b64(_scrypt(secret, salt, N, R, P))])


def check_secret(secret: str, encoded: str) -> bool:
    """Does `secret` hash to `encoded`? The comparison takes the same time wherever they differ;
    a malformed `encoded` is simply no match."""
    try:
        prefix, n, r, p, salt, expected = encoded.split("$")
        if prefix != PREFIX:
            return False
        actual = _scrypt(secret, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(actual, _unb64(expected))
    except (ValueError, TypeError):
        return False


#: checked against when a name or key id is unknown, so an unknown one costs as long as a known one
DECOY_HASH = hash_secret(base64.b64encode(os.urandom(18)).decode())
