"""The ledger on a real redis-server: idempotent outcomes, counters, timeline, batches."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from migrator.ledger import Ledger, PlannedFile, file_id, list_jobs
from migrator.outcomes import FileOutcome, State
from tests.peers.redis import RedisPeer, redis_peer


def planned(n: int, study: str = "1.2.3") -> PlannedFile:
    uri = f"/archive/{n:05d}.dcm"
    return PlannedFile(
        file_id(uri),
        uri,
        1000 + n,
        "v",
        "1.2.840.10008.5.1.4.1.1.2",
        f"1.2.3.4.{n}",
        "1.2.840.10008.1.2.1",
        study,
    )


def outcome(f: PlannedFile, state: State, nbytes: int = 0, reason: str = "") -> FileOutcome:
    return FileOutcome(
        f.uri,
        state,
        reason,
        0 if state is State.STORED else 0xA700,
        sop_instance_uid=f.sop_instance_uid,
        bytes=nbytes,
    )


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisPeer]:
    with redis_peer() as peer:
        yield peer


@pytest.fixture
def ledger(shared_redis: RedisPeer) -> Ledger:
    shared_redis.client().flushall()
    led = Ledger(shared_redis.client(), "job-test")
    assert led.create({"host": "pacs", "port": 104, "called_ae": "PACS"})
    return led


def test_create_is_idempotent_and_listed(ledger: Ledger) -> None:
    assert not ledger.create({"host": "other"})
    assert ledger.config()["host"] == "pacs"
    assert list_jobs(ledger.client) == ["job-test"]


def test_batches_plan_once_and_count(ledger: Ledger) -> None:
    files = [planned(i) for i in range(5)]
    assert ledger.filter_unplanned([f.file_id for f in files]) == [True] * 5
    ledger.add_batch("b1", files)
    assert ledger.filter_unplanned([f.file_id for f in files] + ["new"]) == [False] * 5 + [True]
    assert ledger.batch("b1") == files
    assert ledger.unenqueued_batches() == ["b1"]
    ledger.mark_enqueued("b1")
    assert ledger.unenqueued_batches() == []
    counts = ledger.counts()
    assert counts["planned"] == 5 and counts["in_flight"] == 5


def test_redelivered_outcomes_never_double_count(ledger: Ledger) -> None:
    files = [planned(i) for i in range(4)]
    ledger.add_batch("b1", files)
    now = time.time()
    first = [(f.file_id, outcome(f, State.STORED, f.size), now) for f in files[:3]]
    assert ledger.record_many(first, worker="w1") == 3
    # The same batch delivered again (worker killed before the ack) records the same files.
    assert ledger.record_many(first, worker="w2") == 0
    # A late transient failure of a stored file must not undo the store.
    late = [(files[0].file_id, outcome(files[0], State.FAILED, reason="0xA700"), now)]
    assert ledger.record_many(late) == 0
    ledger.record_many([(files[3].file_id, outcome(files[3], State.FAILED, reason="x"), now)])
    counts = ledger.counts()
    assert (counts["stored"], counts["failed"], counts["in_flight"]) == (3, 1, 0)
    assert counts["bytes_stored"] == sum(f.size for f in files[:3])
    assert ledger.stored_ids([f.file_id for f in files]) == {f.file_id for f in files[:3]}
    assert ledger.failed_ids() == [files[3].file_id]
    # The timeline counts each stored file once, in the second it finished.
    assert ledger.timeline() == {int(now): (3, counts["bytes_stored"])}


def test_failed_then_stored_moves_counters(ledger: Ledger) -> None:
    f = planned(1)
    ledger.add_batch("b1", [f])
    ledger.record_many([(f.file_id, outcome(f, State.FAILED, reason="x"), time.time())])
    assert ledger.reopen([f.file_id]) == 1
    assert ledger.counts()["in_flight"] == 1 and ledger.failed_ids() == []
    ledger.record_many([(f.file_id, outcome(f, State.STORED, 5), time.time())])
    counts = ledger.counts()
    assert (counts["planned"], counts["stored"], counts["failed"]) == (1, 1, 0)


def test_skipped_at_plan_counts_once(ledger: Ledger) -> None:
    assert ledger.record_skipped_at_plan("/archive/README.txt", "not DICOM", State.SKIPPED)
    assert not ledger.record_skipped_at_plan("/archive/README.txt", "not DICOM", State.SKIPPED)
    counts = ledger.counts()
    assert (counts["planned"], counts["skipped"], counts["in_flight"]) == (1, 1, 0)
    result = ledger.to_store_result("pacs:104")
    assert [(o.uri, o.state, o.reason) for o in result.outcomes] == [
        ("/archive/README.txt", State.SKIPPED, "not DICOM")
    ]


def test_outcomes_round_trip_into_the_report(ledger: Ledger) -> None:
    f = planned(7)
    ledger.add_batch("b1", [f])
    out = outcome(f, State.FAILED, reason="0xA700 Out of resources")
    out.attempts, out.ts_sent = 4, "1.2.840.10008.1.2.1"
    ledger.record_many([(f.file_id, out, time.time())], worker="host:1")
    [(fid, back, extra)] = list(ledger.iter_outcomes())
    assert fid == f.file_id and back == out and extra["worker"] == "host:1"


def test_deliveries_and_batch_lease(ledger: Ledger) -> None:
    assert ledger.deliveries("t") == 1
    assert ledger.deliveries("t") == 2
    ledger.delivery_done("t")
    assert ledger.deliveries("t") == 1
    assert ledger.claim_batch("b1", "me", 5)
    assert not ledger.claim_batch("b1", "other", 5)
    assert ledger.batch_holder("b1") == "me"
    assert not ledger.refresh_batch("b1", "other", 5)
    ledger.release_batch("b1", "other")  # not the holder: nothing happens
    assert ledger.batch_holder("b1") == "me"
    ledger.release_batch("b1", "me")
    assert ledger.claim_batch("b1", "other", 5)
