"""SOP Instance UID ownership kept in a job's ledger (``Ledger.claim_uids``): the claims a
batch gives the transfer core, across batches, workers, redeliveries, re-runs and `retry`
(migrator/transfer/claims.py has the protocol and `store`'s in-memory twin)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from migrator import duplicates
from migrator.ledger import Ledger, PlannedFile
from migrator.sources import SourceCache
from migrator.sources.base import SourceItem
from migrator.transfer.claims import OwnerState, Remote
from migrator.transfer.job import Job

log = logging.getLogger("migrator.transfer.batch")


class _RemoteOwner:
    """The owner of a UID planned in another batch."""

    def __init__(self, planned: PlannedFile, sources: SourceCache) -> None:
        self.planned = planned
        self._sources = sources

    def copy(self) -> duplicates.Copy:
        p = self.planned
        return duplicates.Copy(
            self._sources(p.uri), SourceItem(p.uri, p.size, p.version), p.sop_instance_uid
        )


class LedgerClaims:
    """UID ownership in the job's ledger (``Ledger.claim_uids``): across batches, workers,
    redeliveries, re-runs and `retry`."""

    def __init__(self, ledger: Ledger, sources: SourceCache, by_id: dict[str, Job]) -> None:
        self._ledger = ledger
        self._sources = sources
        self._by_id = by_id

    def owners(self, jobs: Sequence[Job]) -> list[Job | Remote | None]:
        ids = self._ledger.claim_uids([job.ref for job in jobs])
        away = sorted({o for o in ids if o and o not in self._by_id})
        elsewhere = {p.file_id: p for p in self._ledger.files(away)} if away else {}
        out: list[Job | Remote | None] = []
        for job, owner_id in zip(jobs, ids, strict=True):
            if not owner_id:
                out.append(None)
            elif owner_id in self._by_id:
                out.append(self._by_id[owner_id])
            elif owner_id in elsewhere:
                out.append(_RemoteOwner(elsewhere[owner_id], self._sources))
            else:
                log.warning("file %s: its UID's owner %s is not planned", job.ref.file_id, owner_id)
                out.append(None)
        return out

    def state(self, owner: Remote) -> OwnerState:
        assert isinstance(owner, _RemoteOwner)
        state = self._ledger.states([owner.planned.file_id])[owner.planned.file_id]
        if state is None:
            return "pending"
        return "stored" if state == "stored" else "failed"

    def take_over(self, job: Job, owner: Job | Remote) -> bool:
        old = owner.ref if isinstance(owner, Job) else owner
        assert isinstance(old, PlannedFile | _RemoteOwner)
        old_id = old.file_id if isinstance(old, PlannedFile) else old.planned.file_id
        return self._ledger.take_over_uid(job.ref, old_id)
