"""Files whose SOP Instance UID another batch's copy holds: the transfer parks them, looks
at that copy again every OWNER_RECHECK seconds, and settles them by its outcome, or hands
them back (Deferred) when it takes longer than OWNER_PATIENCE. Scripted claims stand in
for the ledger's (the whole path through Redis and workers: test_duplicates.py); written
for the mutation survivors of migrator/transfer/policy.py (docs/testing.md)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from migrator import duplicates
from migrator.errors import Deferred
from migrator.outcomes import FileOutcome, State
from migrator.sources.base import SourceItem
from migrator.transfer.claims import OWNER_PATIENCE, OWNER_RECHECK, OwnerState
from migrator.transfer.job import Job
from migrator.transfer.policy import DEFER_RETRY, Ended
from tests.test_policy_unit import Sleeps, Source, jobs, make
from tests.test_transfer_unit import FakeDestination


@dataclass(eq=False)
class RemoteCopy:
    """Another batch's file with the UID (same bytes as ours)."""

    source: Source
    uid: str

    def copy(self) -> duplicates.Copy:
        return duplicates.Copy(self.source, SourceItem("mem://remote", 100), self.uid)


class RemoteClaims:
    """Every UID in ``remote`` belongs to another batch, whose copy answers ``states`` in
    turn (the last one for ever)."""

    def __init__(self, remote: dict[str, RemoteCopy], states: list[OwnerState]) -> None:
        self.remote = remote
        self.states = states
        self.asked: list[float] = []
        self.taken: list[str] = []

    def owners(self, batch: Sequence[Job]) -> list[Job | RemoteCopy | None]:
        return [self.remote.get(j.header.sop_instance_uid) if j.header else None for j in batch]

    def state(self, owner: object) -> OwnerState:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def take_over(self, job: Job, owner: object) -> bool:
        assert job.header is not None
        self.taken.append(job.header.sop_instance_uid)
        return True


def _run(
    states: list[OwnerState],
) -> tuple[RemoteClaims, FakeDestination, Ended, list[FileOutcome]]:
    clock, source, dest = Sleeps(), Source(), FakeDestination()
    claims = RemoteClaims({"1.2.3.1": RemoteCopy(source, "1.2.3.1")}, states)
    real_state = claims.state

    def state(owner: object) -> OwnerState:
        claims.asked.append(clock.now)
        return real_state(owner)

    claims.state = state  # type: ignore[method-assign]
    t, got = make(dest, clock, concurrency=1, claims=claims)
    ended = t.run(jobs(source, 3))
    return claims, dest, ended, got


def test_a_file_whose_uid_another_batch_holds_waits_and_is_skipped_once_that_copy_is_stored() -> (
    None
):
    claims, dest, ended, got = _run(["pending", "pending", "pending", "stored"])
    assert ended.error is None and not ended.left
    by = {o.uri: o for o in got}
    assert by["mem://1"].state is State.SKIPPED and "mem://remote" in by["mem://1"].reason
    assert sorted(dest.opened[0].sent) == ["1.2.3.0", "1.2.3.2"]
    # looked at again every OWNER_RECHECK seconds, not in a busy loop nor less often
    gaps = [b - a for a, b in itertools.pairwise(claims.asked)]
    assert len(claims.asked) == 4 and all(abs(g - OWNER_RECHECK) < 0.01 for g in gaps)


def test_a_file_whose_other_copy_failed_is_sent_in_its_place() -> None:
    claims, dest, ended, got = _run(["pending", "failed"])
    assert ended.error is None
    assert claims.taken == ["1.2.3.1"]
    assert sorted(dest.opened[0].sent) == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert all(o.state is State.STORED for o in got)


def test_a_file_kept_waiting_too_long_is_handed_back_for_later() -> None:
    claims, _, ended, got = _run(["pending"])
    error = ended.error
    assert isinstance(error, Deferred) and error.retry_in == DEFER_RETRY
    assert str(error) == "1 files wait for another copy's outcome"
    assert [j.uri for j in ended.left] == ["mem://1"]
    assert sorted(o.uri for o in got) == ["mem://0", "mem://2"]
    waited = claims.asked[-1] - claims.asked[0]
    assert OWNER_PATIENCE - 1 <= waited <= OWNER_PATIENCE + 1
