"""The audit trail: who changed or searched a gallery, what, when and with what outcome.

One append-only table, `audit` (the database itself refuses UPDATE and DELETE on it: triggers on
both stores). A change writes its line in the same transaction as the change (`GalleryStore.
transaction(audit=...)`), so the trail and the gallery never disagree, not even after a kill; a
refused request writes its line after the rollback. Lines name people, never hold their faces:
removing a person erases their embeddings, thumbnails and kept photos and keeps the lines.
"""
from __future__ import annotations

import getpass
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from ..errors import FaceVerifyError
from .rows import now_precise

#: what a line can record
ACTIONS = ("enrol", "rename", "remove", "remove-photo", "identify", "upgrade", "key-add", "key-revoke")


@dataclass
class AuditEntry:
    action: str
    subject: str | None = None  # the person (a rename's old name), or the key
    outcome: str | None = None  # None until the change is done: no line for a change not made
    detail: dict = field(default_factory=dict)
    renamed_to: str | None = None
    actor: str = ""  # filled in by the store: who its connection acts for
    at: str = ""
    id: int | None = None

    def refused(self, reason: str) -> "AuditEntry":
        return AuditEntry(self.action, self.subject, f"refused: {reason}", self.detail, self.renamed_to)

    def to_dict(self) -> dict:
        return asdict(self)


def local_actor() -> str:
    """Who the audit trail credits with a change made on this machine (CLI, scripts)."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this container
        return "local"


COLUMNS = "id, at, actor, action, subject, renamed_to, outcome, detail"


class AuditTrail:
    """The audit half of `GalleryStore` (a mixin: it uses the store's connection and hooks)."""

    def _audit_schema(self) -> list[str]:
        return [f"CREATE TABLE audit (id {self.id_column}, at TEXT NOT NULL, actor TEXT NOT NULL, "
                "action TEXT NOT NULL, subject TEXT, renamed_to TEXT, outcome TEXT NOT NULL, "
                "detail TEXT NOT NULL)",
                "CREATE INDEX audit_at ON audit(at)",
                "CREATE INDEX audit_subject ON audit(subject)",
                *self._append_only("audit")]

    def _write_audit(self, *entries: AuditEntry) -> None:
        if "audit" in self.missing_tables:
            raise FaceVerifyError(f"{self.path}: this gallery has no audit trail yet and cannot be "
                                  "given one (read-only?); open it once with write access")
        self._executemany(
            "INSERT INTO audit (at, actor, action, subject, renamed_to, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(now_precise(), self.actor, e.action, e.subject, e.renamed_to, e.outcome,
              json.dumps(e.detail, sort_keys=True)) for e in entries])

    def record(self, *entries: AuditEntry) -> None:
        """Lines for what changed nothing (identifications, refusals), in a transaction of their own."""
        with self.transaction():
            self._write_audit(*entries)

    def audit_entries(self, since: str | None = None, person: str | None = None,
                      limit: int | None = None) -> list[AuditEntry]:
        """The trail, oldest first: from `since` (an ISO 8601 time, UTC unless it says otherwise;
        `parse_since`), about `person` (as subject, or as the new name of a rename)."""
        where, params = [], []
        if since:
            where.append("at >= ?")
            params.append(since)
        if person is not None:
            where.append("(subject = ? OR renamed_to = ?)")
            params += [person, person]
        sql = f"SELECT {COLUMNS} FROM audit" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        if limit:
            sql = f"SELECT * FROM ({sql.replace(' ORDER BY id', ' ORDER BY id DESC')} LIMIT {int(limit)}) last ORDER BY id"
        return [AuditEntry(action, subject, outcome, json.loads(detail), renamed_to, actor, at, id_)
                for id_, at, actor, action, subject, renamed_to, outcome, detail in self._execute(sql, params).fetchall()]


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> str:
    """`--since`: an ISO 8601 date or time (UTC unless it names a zone) or an age like 30m, 12h,
    7d; as the UTC ISO text the audit table sorts by."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        moment = datetime.now(timezone.utc) - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise FaceVerifyError(f"--since {text!r}: give an ISO date or time (2026-12-05, "
                                  "2026-12-05T10:00) or an age (30m, 12h, 7d)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
