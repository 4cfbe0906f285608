"""What a verification found, and how it is kept in the job's ledger.

The result goes into the ledger, for ``status`` and reports (all keys in :class:`JobKeys`):

- ``verify`` (hash): ``checked_at``, ``destination``, ``method``, ``stored``, ``instances``,
  ``studies``, ``studies_mismatched``, ``studies_listed``, ``confirmed``, ``missing``,
  ``unconfirmed``, ``committed``, ``in_flight``; read it with :func:`load_summary`.
- ``verify_missing`` (hash): file id → why the PACS lacks it (:func:`load_missing`).
- ``verify_unconfirmed`` (hash): file id → why it could not be confirmed either way (a storage
  commitment without an answer, a file without a Study Instance UID).

Each :func:`save_result` replaces the previous verification of the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from migrator.exitcodes import ExitStatus
from migrator.ledger import Ledger

FILES_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class StudyCount:
    """A study whose instance count at the PACS differs from the ledger's."""

    study_uid: str
    ledger: int
    pacs: int


@dataclass(frozen=True, slots=True)
class FileProblem:
    """One stored-per-ledger file the PACS lacks (or did not confirm), and why."""

    file_id: str
    uri: str
    sop_instance_uid: str
    study_uid: str
    reason: str


@dataclass(slots=True)
class VerifyResult:
    """Stored per ledger against confirmed by the PACS."""

    job_id: str
    destination: str
    stored: int = 0  #: files the ledger says are stored
    instances: int = 0  #: distinct SOP Instance UIDs among them
    studies: int = 0
    in_flight: int = 0
    studies_listed: int = 0  #: studies compared instance by instance
    mismatched: list[StudyCount] = field(default_factory=list)
    missing: list[FileProblem] = field(default_factory=list)
    unconfirmed: list[FileProblem] = field(default_factory=list)
    #: how the destination was asked: "c-find" (DIMSE) or "qido-rs" (DICOMweb)
    query: str = "c-find"
    commitment: bool = False
    committed: int = 0  #: instances the PACS committed to (storage commitment only)
    checked_at: float = 0.0
    seconds: float = 0.0

    @property
    def confirmed(self) -> int:
        return self.stored - len(self.missing) - len(self.unconfirmed)

    @property
    def method(self) -> str:
        return f"{self.query}+commitment" if self.commitment else self.query

    @property
    def exit_status(self) -> ExitStatus:
        ok = not self.missing and not self.unconfirmed
        return ExitStatus.OK if ok else ExitStatus.PARTIAL_FAILURE

    def summary(self) -> dict[str, str | int | float]:
        return {
            "checked_at": round(self.checked_at, 3),
            "destination": self.destination,
            "method": self.method,
            "stored": self.stored,
            "instances": self.instances,
            "studies": self.studies,
            "studies_mismatched": len(self.mismatched),
            "studies_listed": self.studies_listed,
            "confirmed": self.confirmed,
            "missing": len(self.missing),
            "unconfirmed": len(self.unconfirmed),
            "committed": self.committed,
            "in_flight": self.in_flight,
        }

    def to_json(self) -> dict[str, Any]:
        problem = ("file_id", "uri", "sop_instance_uid", "study_uid", "reason")
        return {
            "job": self.job_id,
            **self.summary(),
            "seconds": round(self.seconds, 3),
            "mismatched_studies": [
                {"study_uid": s.study_uid, "ledger": s.ledger, "pacs": s.pacs}
                for s in self.mismatched
            ],
            "missing_files": [{k: getattr(p, k) for k in problem} for p in self.missing],
            "unconfirmed_files": [{k: getattr(p, k) for k in problem} for p in self.unconfirmed],
        }


def save_result(ledger: Ledger, result: VerifyResult) -> None:
    """Replace the job's last verification with ``result`` (one transaction)."""
    k = ledger.keys
    pipe = ledger.client.pipeline(transaction=True)
    pipe.delete(k.verify, k.verify_missing, k.verify_unconfirmed)
    summary: Mapping[Any, Any] = result.summary()  # redis-py's Mapping key is invariant
    pipe.hset(k.verify, mapping=summary)
    for key, problems in (
        (k.verify_missing, result.missing),
        (k.verify_unconfirmed, result.unconfirmed),
    ):
        for i in range(0, len(problems), FILES_CHUNK):
            chunk = problems[i : i + FILES_CHUNK]
            pipe.hset(key, mapping={p.file_id: p.reason for p in chunk})
    pipe.execute()


def load_summary(ledger: Ledger) -> dict[str, str] | None:
    """The last verification's counts (strings, as stored), or None if never verified."""
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(ledger.keys.verify))
    if not raw:
        return None
    return {k.decode(): v.decode() for k, v in raw.items()}


def load_missing(ledger: Ledger, *, unconfirmed: bool = False) -> dict[str, str]:
    """File id → reason for the files the last verification found missing (or unconfirmed)."""
    key = ledger.keys.verify_unconfirmed if unconfirmed else ledger.keys.verify_missing
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(key))
    return {k.decode(): v.decode() for k, v in raw.items()}
