"""Files that share a SOP Instance UID: who is sent, who waits, who is settled unsent.

The first file seen with a UID *owns* it and is sent; a later file with the same UID waits
for the owner's outcome (migrator/duplicates.py has the comparison and the reason texts):

* the owner was stored: the later file is compared with it: identical, **skipped** as a
  duplicate; different, **failed** as a conflict (never sent: the stored copy is not
  overwritten);
* the owner failed (unreadable, refused, the PACS aborted on it): the later file takes
  the UID over and is sent in its place. A conflict is only ever declared against a copy
  that was actually stored.

``--on-conflict`` (Settings.on_conflict) changes the two "different" cases: ``first-good``
skips a copy that differs from a stored one instead of failing it; ``skip`` also skips one
that differs from a first copy that failed, instead of sending it in its place.

Who owns a UID is the business of a ``Claims``: ``MemoryClaims`` here for `store` (one
process sees every file), the ledger's UID index for a job (``migrator.transfer.batch``),
where the owner may be a file of another batch, sent by another worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from migrator import duplicates
from migrator.errors import MigratorError
from migrator.outcomes import State
from migrator.transfer.job import Job

OwnerState = Literal["stored", "failed", "pending"]


class Remote(Protocol):
    """An owner that is not among the files of this transfer (another batch's file)."""

    def copy(self) -> duplicates.Copy: ...


class Claims(Protocol):
    def owners(self, jobs: Sequence[Job]) -> list[Job | Remote | None]:
        """Per job: None when it owns its UID (first to claim it, or claimed it before), else
        the owner: another job of this transfer, or a ``Remote``."""
        ...

    def state(self, owner: Remote) -> OwnerState:
        """Where a remote owner stands now."""
        ...

    def take_over(self, job: Job, owner: Job | Remote) -> bool:
        """Make ``job`` the owner in place of ``owner``, which failed. False when someone
        else got there first (then ask ``owners`` again)."""
        ...


class MemoryClaims:
    """`store`: every file is known up front; the first listed with a UID owns it."""

    def __init__(self) -> None:
        self._owner: dict[str, Job] = {}

    def owners(self, jobs: Sequence[Job]) -> list[Job | Remote | None]:
        out: list[Job | Remote | None] = []
        for job in jobs:
            assert job.header is not None
            owner = self._owner.setdefault(job.header.sop_instance_uid, job)
            out.append(None if owner is job else owner)
        return out

    def state(self, owner: Remote) -> OwnerState:  # never asked: no remote owners here
        raise AssertionError("store has no remote owners")

    def take_over(self, job: Job, owner: Job | Remote) -> bool:
        assert job.header is not None
        self._owner[job.header.sop_instance_uid] = job
        return True


#: How often a file waiting for a remote owner (another batch's copy) looks again, and for
#: how long in all before the transfer leaves it to a later delivery of its batch.
OWNER_RECHECK = 0.5
OWNER_PATIENCE = 20.0


class Waits:
    """The files of one transfer that wait for the owner of their UID, and what becomes of
    them when it settles. ``enqueue`` sends a file (it owns its UID now); ``settle`` gives a
    file its final state without sending it."""

    def __init__(
        self,
        claims: Claims,
        *,
        enqueue: Callable[[Job], None],
        settle: Callable[[Job, State, str], None],
        clock: Callable[[], float],
        on_conflict: str = "fail",
    ) -> None:
        self.claims = claims
        #: --on-conflict: "fail" / "first-good" (a differing copy of a stored one is
        #: skipped) / "skip" (and one of a copy that failed is not sent in its place)
        self.on_conflict = on_conflict
        self._enqueue = enqueue
        self._settle = settle
        self._clock = clock
        #: id(owner job) -> the jobs of this transfer waiting for it
        self._waiting: dict[int, list[Job]] = {}
        #: jobs waiting for a remote owner, looked at every OWNER_RECHECK seconds
        self.parked: list[Job] = []
        self.check_at = 0.0

    def split(self, jobs: list[Job]) -> list[Job]:
        """Claim the UIDs of ``jobs`` (one call); return those to send now."""
        mine = []
        for job, owner in zip(jobs, self.claims.owners(jobs), strict=True):
            if owner is None:
                mine.append(job)
            else:
                self._wait_for(job, owner)
        return mine

    def left(self) -> list[Job]:
        out = list(self.parked)
        for waiting in self._waiting.values():
            out.extend(waiting)
        return out

    def expired(self, now: float) -> bool:
        """A remote owner has kept a file waiting longer than OWNER_PATIENCE."""
        return any(now - job.waiting_since > OWNER_PATIENCE for job in self.parked)

    def settled(self, owner: Job, stored: bool) -> None:
        """``owner`` has its final outcome: settle the copies that waited for it, or hand
        the UID to the first of them when it was not stored."""
        waiting = self._waiting.pop(id(owner), None)
        if not waiting:
            return
        if stored:
            for job in waiting:
                self._compare(job, _copy(owner))
            return
        first, rest = waiting[0], waiting[1:]
        for job in [j for j in waiting if j.uri == owner.uri]:
            # The very same file listed twice: it was tried once, that is its outcome.
            self._settle(job, State.SKIPPED, duplicates.LISTED_TWICE)
        rest = [j for j in waiting if j.uri != owner.uri]
        if self.on_conflict == "skip":
            rest = [j for j in rest if not self._skipped_against(j, _copy(owner))]
        if not rest:
            return
        first, rest = rest[0], rest[1:]
        if not self.claims.take_over(first, owner):  # another batch's copy took it
            for job in [first, *rest]:
                self._reclaim(job)
            return
        first.owner = None
        for job in rest:
            self._wait_for(job, first)
        self._enqueue(first)

    def recheck(self, now: float) -> None:
        """Look at the remote owners again (every OWNER_RECHECK seconds)."""
        if now < self.check_at:
            return
        self.check_at = now + OWNER_RECHECK
        parked, self.parked = self.parked, []
        for job in parked:
            owner = job.owner
            assert owner is not None and not isinstance(owner, Job)
            state = self.claims.state(owner)
            if state == "stored":
                self._compare(job, owner.copy())
            elif state == "failed":
                if self.on_conflict == "skip" and self._skipped_against(job, owner.copy()):
                    continue
                if self.claims.take_over(job, owner):
                    job.owner = None
                    self._enqueue(job)
                else:
                    self._reclaim(job)
            else:
                self.parked.append(job)

    def _wait_for(self, job: Job, owner: Job | Remote) -> None:
        job.owner = owner
        if isinstance(owner, Job):
            self._waiting.setdefault(id(owner), []).append(job)
        else:
            job.waiting_since = self._clock()
            self.parked.append(job)

    def _reclaim(self, job: Job) -> None:
        owner = self.claims.owners([job])[0]
        if owner is None:
            job.owner = None
            self._enqueue(job)
        else:
            self._wait_for(job, owner)

    def _skipped_against(self, job: Job, failed: duplicates.Copy) -> bool:
        """``--on-conflict skip``: settle ``job`` as skipped when it differs from the copy
        that came first and failed (only that first version is ever offered)."""
        uid = job.header.sop_instance_uid if job.header else failed.sop_instance_uid
        try:
            same = duplicates.same_content(_copy(job), failed)
        except MigratorError:  # either cannot be read: not known to be the same version
            same = False
        if same:
            return False
        reason = duplicates.conflict_skipped_reason(uid, failed.item.uri, "skip", stored=False)
        self._settle(job, State.SKIPPED, reason)
        return True

    def _compare(self, job: Job, owner: duplicates.Copy) -> None:
        mine = _copy(job)
        try:
            verdict = duplicates.settle(mine, owner, self.on_conflict)
        except MigratorError as exc:  # this file cannot be read: as sending would have failed
            self._settle(job, State.FAILED, str(exc))
            return
        if verdict is None:  # another UID with the same hash: not a duplicate after all
            job.owner = None
            self._enqueue(job)
            return
        self._settle(job, verdict[0], verdict[1])


def _copy(job: Job) -> duplicates.Copy:
    uid = job.header.sop_instance_uid if job.header else ""
    return duplicates.Copy(job.source, job.item, uid)
