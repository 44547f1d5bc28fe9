"""The web UI's users: an auth file (JSON: user name → scrypt hash of the password), written
atomically and readable by its owner only. `faceverify users add/remove` manage it."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import FaceVerifyError
from ..gallery.names import identity_name
from .hashing import DECOY_HASH, check_secret, hash_secret

MIN_PASSWORD_LENGTH = 10
FORMAT = "faceverify-users-1"


class UserFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.users: dict[str, str] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("format") != FORMAT:
                    raise ValueError("not a faceverify auth file")
                self.users = dict(data["users"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise FaceVerifyError(f"{self.path}: cannot read the auth file ({exc})") from None

    def add(self, name: str, password: str) -> None:
        """Add a user, or set a user's new password."""
        name = identity_name(name)
        if len(password) < MIN_PASSWORD_LENGTH:
            raise FaceVerifyError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        self.users[name] = hash_secret(password)
        self._save()

    def remove(self, name: str) -> None:
        if self.users.pop(name, None) is None:
            raise FaceVerifyError(f"{self.path}: no user named {name!r}")
        self._save()

    def check(self, name: str, password: str) -> bool:
        """Are these a user's name and password? An unknown name costs as long as a known one."""
        return check_secret(password, self.users.get(name, DECOY_HASH)) and name in self.users

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as fh:  # mkstemp: mode 0600 from the start
            json.dump({"format": FORMAT, "users": self.users}, fh, indent=2)
        os.replace(tmp, self.path)
