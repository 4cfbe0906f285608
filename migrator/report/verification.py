"""The last ``migrator verify`` of a job, as the report shows it: stored per ledger against
confirmed by the PACS, and the files the PACS lacks (or could not confirm).

``verify`` keeps its result in the ledger (:mod:`migrator.verify`, keys in
:class:`migrator.keys.JobKeys`): a summary hash of counts, and two hashes file id → reason.
They are read here directly rather than through :func:`migrator.verify.load_summary` /
:func:`migrator.verify.load_missing`, for two reasons: importing :mod:`migrator.verify` loads
pynetdicom (about a second on every `migrator report`), and ``load_missing`` reads a whole
hash at once, while a job whose PACS lost a large study can have millions of entries. Here
the hashes are scanned, and only the first :data:`MAX_FILES` file ids of each (in file id
order, so the same ones every time) are kept, with a count of the rest.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from migrator.ledger import Ledger
    from migrator.outcomes import FileOutcome

#: State of a file the ledger says is stored and the PACS says it does not hold.
MISSING_AT_PACS = "missing_at_pacs"
#: State of a file the ledger says is stored and the PACS confirmed neither way.
UNCONFIRMED_AT_PACS = "unconfirmed_at_pacs"
#: Files of each kind (missing, unconfirmed) kept in memory; the rest are only counted.
MAX_FILES = 10_000
#: Entries asked for per HSCAN round trip.
_SCAN_COUNT = 1000


@dataclass(slots=True)
class PacsFile:
    """A file stored per ledger that the PACS lacks (or did not confirm), and why."""

    file_id: str
    uri: str
    sop_instance_uid: str
    study_uid: str
    state: str  #: MISSING_AT_PACS or UNCONFIRMED_AT_PACS
    reason: str
    attempts: int = 0
    ts_sent: str = ""


@dataclass(slots=True)
class Verification:
    """The summary of the last `verify` (counts as of then) and its files."""

    checked_at: float
    destination: str
    method: str
    #: Files the ledger said were stored when `verify` ran
    stored: int
    instances: int
    studies: int
    studies_mismatched: int
    studies_listed: int
    confirmed: int
    missing: int
    unconfirmed: int
    committed: int
    in_flight: int
    missing_files: list[PacsFile] = field(default_factory=list)
    unconfirmed_files: list[PacsFile] = field(default_factory=list)
    #: Entries of each list not kept (beyond ``MAX_FILES``)
    missing_omitted: int = 0
    unconfirmed_omitted: int = 0
    #: Files the ledger says are stored now (when the report was made)
    stored_now: int | None = None
    #: Files of each kind kept at most (None: all)
    limit: int | None = MAX_FILES

    @property
    def commitment(self) -> bool:
        return "commitment" in self.method

    @property
    def all_confirmed(self) -> bool:
        return self.missing == 0 and self.unconfirmed == 0

    @property
    def outdated(self) -> bool:
        """The ledger's stored count changed since `verify` ran (a retry, a resumed run)."""
        return self.stored_now is not None and self.stored_now != self.stored

    @property
    def files(self) -> list[PacsFile]:
        """Missing files, then unconfirmed ones, each sorted by URI."""
        return self.missing_files + self.unconfirmed_files

    @property
    def omitted(self) -> int:
        return self.missing_omitted + self.unconfirmed_omitted

    def where_the_rest_are(self) -> str:
        """Where to find the files a short list leaves out."""
        where = "the CSV report (`migrator report JOB --format csv`)"
        if self.omitted and self.limit is not None:
            where += (
                f", which keeps the first {self.limit:,} of each kind; "
                "`migrator verify JOB --json` lists them all"
            )
        return where

    @classmethod
    def from_summary(cls, summary: Mapping[str, str]) -> Verification:
        """From the ledger's ``verify`` hash (every value a string, as Redis keeps it)."""

        def num(key: str) -> int:
            try:
                return int(float(summary.get(key, "0") or 0))
            except ValueError:
                return 0

        try:
            checked_at = float(summary.get("checked_at", "0") or 0)
        except ValueError:
            checked_at = 0.0
        return cls(
            checked_at=checked_at,
            destination=summary.get("destination", ""),
            method=summary.get("method", ""),
            stored=num("stored"),
            instances=num("instances"),
            studies=num("studies"),
            studies_mismatched=num("studies_mismatched"),
            studies_listed=num("studies_listed"),
            confirmed=num("confirmed"),
            missing=num("missing"),
            unconfirmed=num("unconfirmed"),
            committed=num("committed"),
            in_flight=num("in_flight"),
        )


class PendingVerification:
    """A verification read from the ledger, its files not yet resolved to URIs and UIDs.

    Made before the report's pass over the outcomes: the pass hands every outcome to
    :meth:`see`, which keeps those of the listed files (their SOP Instance UID as sent, the
    attempts and the syntax sent); :meth:`resolve` then reads their plans (source URI, study).
    """

    def __init__(
        self,
        verification: Verification,
        missing: list[tuple[str, str]],
        unconfirmed: list[tuple[str, str]],
    ) -> None:
        self.verification = verification
        self._lists = ((MISSING_AT_PACS, missing), (UNCONFIRMED_AT_PACS, unconfirmed))
        self.wanted = {fid for _, ids in self._lists for fid, _ in ids}
        self._outcomes: dict[str, FileOutcome] = {}

    def see(self, file_id: str, outcome: FileOutcome) -> None:
        if file_id in self.wanted:
            self._outcomes[file_id] = outcome

    def resolve(self, ledger: Ledger, stored_now: int | None = None) -> Verification:
        v = self.verification
        v.stored_now = stored_now
        planned = {p.file_id: p for p in ledger.files(sorted(self.wanted))} if self.wanted else {}
        for state, ids in self._lists:
            files = []
            for fid, reason in ids:
                plan = planned.get(fid)
                outcome = self._outcomes.get(fid)
                # As `verify` does: the UIDs as sent first, the plan's as the fallback.
                uri = (outcome.uri if outcome else "") or (plan.uri if plan else "")
                sop = (outcome.sop_instance_uid if outcome else "") or (
                    plan.sop_instance_uid if plan else ""
                )
                files.append(
                    PacsFile(
                        file_id=fid,
                        uri=uri or f"(file {fid}: not in the ledger's plan)",
                        sop_instance_uid=sop,
                        study_uid=plan.study_uid if plan else "",
                        state=state,
                        reason=reason,
                        attempts=outcome.attempts if outcome else 0,
                        ts_sent=(outcome.ts_sent or outcome.ts_original) if outcome else "",
                    )
                )
            files.sort(key=lambda f: (f.uri, f.file_id))
            if state == MISSING_AT_PACS:
                v.missing_files = files
            else:
                v.unconfirmed_files = files
        self._outcomes.clear()
        return v


def load(ledger: Ledger, *, limit: int | None = MAX_FILES) -> PendingVerification | None:
    """The job's last verification, or None if `verify` never ran for it.

    ``limit``: file ids of each kind kept (the first in file id order); None keeps all.
    """
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(ledger.keys.verify))
    if not raw:
        return None
    verification = Verification.from_summary({k.decode(): v.decode() for k, v in raw.items()})
    verification.limit = limit
    missing, verification.missing_omitted = _first(ledger, ledger.keys.verify_missing, limit)
    unconfirmed, verification.unconfirmed_omitted = _first(
        ledger, ledger.keys.verify_unconfirmed, limit
    )
    return PendingVerification(verification, missing, unconfirmed)


def _first(ledger: Ledger, key: str, limit: int | None) -> tuple[list[tuple[str, str]], int]:
    """The first ``limit`` (file id, reason) entries of a hash by file id, and how many more."""
    scan = cast(Iterator[tuple[bytes, bytes]], ledger.client.hscan_iter(key, count=_SCAN_COUNT))
    entries = ((fid.decode(), reason.decode()) for fid, reason in scan)
    # Bounded memory: a heap of ``limit`` entries, whatever the size of the hash.
    kept = sorted(entries) if limit is None else heapq.nsmallest(limit, entries)
    # HSCAN may return an entry twice (the hash resized during the scan): once each here.
    unique = sorted(dict(kept).items())
    total = ledger.client.hlen(key)
    return unique, max(0, total - len(unique))
