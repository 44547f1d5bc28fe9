"""Re-embedding a gallery for a new model, in the store (`upgrade.upgrade_gallery` drives it): new
embeddings are staged in `upgrade_images`, one transaction per person, while the gallery keeps
working with its old model; then one transaction swaps them in. Rows of `upgrade_images` go with
their image (ON DELETE CASCADE); images enrolled meanwhile are staged by the next pass."""
from __future__ import annotations

import numpy as np

from ..errors import GalleryError, ModelMismatchError
from .audit import AuditEntry
from .rows import now, template_of

#: meta keys naming the model an upgrade in progress is staging embeddings for (`upgrade_images`)
UPGRADE_SHA, UPGRADE_DIM = "upgrade_weights_sha256", "upgrade_embedding_dim"


class UpgradeStaging:
    """The staging half of `GalleryStore` (a mixin: it uses the store's connection and hooks)."""

    def _staging_schema(self, embedding_dim: int) -> str:
        """CREATE TABLE upgrade_images: per image, its embedding by the upgrade's target model (or
        the problem that prevented one), keyed by the image's id."""
        raise NotImplementedError

    def _retype_embeddings(self, embedding_dim: int) -> None:
        """In the switch, before the staged embeddings replace the old ones: make the embedding
        columns take `embedding_dim` (templates already emptied). Nothing to do for BLOBs."""

    def _retyped(self) -> None:
        """In the switch, once images and templates hold the new embeddings (constraints, indexes)."""


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
        audit = AuditEntry("upgrade", detail={"from_model": self.meta["weights_sha256"], "to_model": weights_sha256})
        try:
            with self.transaction(audit):
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
                                   ("upgraded", now())):
                    self._execute("DELETE FROM meta WHERE key = ?", (key,))
                    self._execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                self._execute("DELETE FROM meta WHERE key IN (?, ?)", (UPGRADE_SHA, UPGRADE_DIM))
                self._execute("DROP TABLE upgrade_images")
                audit.outcome = f"switched; {len(problems)} photo(s) dropped, {len(removed)} person(s) removed"
                audit.detail.update(dropped=len(problems), removed=removed)
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
                (int(owners[a]), self._vector(template_of(embeddings[a:b])), int(b - a))
                for a, b in zip(bounds[:-1], bounds[1:])])
