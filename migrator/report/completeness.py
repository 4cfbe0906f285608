"""The per-study completeness table of a job reconciled with its source (`migrator verify`
of a ``dimse://`` job): per study, its instances at the source, stored per the ledger and at
the destination, as the last reconciliation counted them (migrator/verify/reconcile.py).

Read from the job's Redis directly (importing :mod:`migrator.verify` loads pynetdicom, about
a second on every `migrator report`). UIDs, Accession Numbers and counts only: no patient
data. None when the job was never reconciled: the report then has no such table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from migrator.ledger import Ledger


@dataclass(frozen=True, slots=True)
class CompletenessRow:
    study_uid: str
    accession: str
    at_source: int
    stored: int
    at_destination: int

    @property
    def complete(self) -> bool:
        return self.at_source == self.stored == self.at_destination

    def to_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_uid,
            "accession_number": self.accession or None,
            "at_source": self.at_source,
            "stored": self.stored,
            "at_destination": self.at_destination,
            "complete": self.complete,
        }


@dataclass(slots=True)
class Completeness:
    """The last reconciliation: its summary (as `verify` stored it) and the table."""

    checked_at: float
    source: str
    destination: str
    missing: int
    extra: int
    rows: list[CompletenessRow] = field(default_factory=list)

    @property
    def differing(self) -> int:
        return sum(1 for r in self.rows if not r.complete)

    def by_study(self) -> dict[str, CompletenessRow]:
        return {r.study_uid: r for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_at": round(self.checked_at, 3),
            "source": self.source,
            "destination": self.destination,
            "studies": len(self.rows),
            "studies_differing": self.differing,
            "at_source": sum(r.at_source for r in self.rows),
            "stored": sum(r.stored for r in self.rows),
            "at_destination": sum(r.at_destination for r in self.rows),
            "missing": self.missing,
            "extra": self.extra,
            "rows": [r.to_json() for r in self.rows],
        }


def load(ledger: Ledger) -> Completeness | None:
    """The job's last reconciliation, differing studies first (then by UID); None if none."""
    k = ledger.keys
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(k.reconcile))
    if not raw:
        return None
    summary = {a.decode(): b.decode() for a, b in raw.items()}
    rows = []
    for uid, value in cast(dict[bytes, bytes], ledger.client.hgetall(k.reconcile_studies)).items():
        accession, at_source, stored, at_destination = json.loads(value)
        rows.append(CompletenessRow(uid.decode(), accession, at_source, stored, at_destination))
    rows.sort(key=lambda r: (r.complete, r.study_uid))
    return Completeness(
        checked_at=float(summary.get("checked_at", 0) or 0),
        source=summary.get("source", ""),
        destination=summary.get("destination", ""),
        missing=int(summary.get("missing", 0) or 0),
        extra=int(summary.get("extra", 0) or 0),
        rows=rows,
    )
