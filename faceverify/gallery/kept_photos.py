"""Copies of uploaded photos kept beside a gallery (the web UI's and the API's enrolments): a
gallery moving to a new model is re-embedded from its photos' sources (`upgrade`), and the
uploads the servers receive are temporary. A copy is named by its content's digest, written whole
or not at all, and deleted when no image of the gallery holds it any more: a face photo is not
kept for nothing."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .backends import is_postgres

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}


def default_folder(location: str | Path) -> Path:
    """`<gallery file>.photos` for a SQLite gallery; for a PostgreSQL one, `faceverify-photos` in
    the working directory (servers take `--photos DIR`)."""
    if is_postgres(location):
        return Path("faceverify-photos")
    path = Path(location)
    return path.with_name(path.name + ".photos")


class KeptPhotos:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()

    def keep(self, data: bytes, filename: str = "") -> Path:
        """A copy of an upload's bytes (the suffix of `filename` kept if it is an image's)."""
        suffix = Path(filename).suffix.lower()
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = self.folder / (hashlib.sha256(data).hexdigest()[:32] + (suffix if suffix in IMAGE_SUFFIXES else ".img"))
        if not kept.is_file():  # the name is the content's digest: an existing copy is this one
            partial = kept.with_name(f"{kept.name}.{os.getpid()}.{id(data)}.tmp")
            partial.write_bytes(data)
            os.replace(partial, kept)
        return kept

    def holds(self, source: str | Path) -> bool:
        """Is `source` one of this folder's copies (never a file enrolled from elsewhere)?"""
        return Path(source).resolve().parent == self.folder

    def discard(self, sources, held) -> None:
        """Delete the copies among `sources` that no image of the gallery holds (`held(source)`:
        does one?): rejected photos, a failed enrolment, a removed person."""
        for source in set(map(str, sources)):
            if self.holds(source) and not held(source):
                Path(source).unlink(missing_ok=True)

    def prune(self, held: set[str], min_age_s: float = 3600) -> int:
        """Delete every copy no image holds (left by a process killed between a gallery's commit
        and its clean-up) and older than `min_age_s` (younger ones may belong to an enrolment in
        progress in another process): run when a server starts. Returns how many went."""
        if not self.folder.is_dir():
            return 0
        cutoff = time.time() - min_age_s
        stale = [p for p in self.folder.iterdir()
                 if p.is_file() and str(p) not in held and p.stat().st_mtime < cutoff]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)
