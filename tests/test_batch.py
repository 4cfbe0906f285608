"""The batch runner without Celery: poison batches, concurrent deliveries, dead holders.

Real Redis ledger and a real receiver (the counting pynetdicom SCP); the Celery paths that
lead here are covered end to end in test_engine.py.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator import synth
from migrator.dicomfile import inspect_file
from migrator.errors import BatchBusy
from migrator.ledger import Ledger, PlannedFile
from migrator.outcomes import FileOutcome, State
from migrator.report.builder import from_ledger
from migrator.report.text import render as render_text
from migrator.settings import Settings
from migrator.transfer.batch import POISON_DELIVERIES, run_batch
from migrator.transfer.runtime import Runtime
from migrator.transfer.takeover import FOUND_AFTER_LOSS
from tests.peers.counting_scp import CountingScp, counting_scp
from tests.peers.redis import RedisPeer, redis_peer


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisPeer]:
    with redis_peer() as peer:
        yield peer


@pytest.fixture
def scp() -> Iterator[CountingScp]:
    with counting_scp() as server:
        yield server


def make_job(client: object, scp: CountingScp, tmp: Path, n: int = 10) -> Ledger:
    ledger = Ledger(client, f"job-{tmp.name}")  # type: ignore[arg-type]
    ledger.client.flushall()
    ledger.create(Settings("127.0.0.1", scp.port, "COUNTING").to_dict())
    files = []
    for path in synth.write_corpus(tmp / "in", count=n, size="tiny", seed=n):
        h = inspect_file(str(path))
        files.append(
            PlannedFile(
                str(path),
                h.size,
                "",
                h.sop_class_uid,
                h.sop_instance_uid,
                h.transfer_syntax,
                h.study_uid,
            )
        )
    ledger.add_batch("b1", files)
    return ledger


def test_a_batch_sends_and_records_every_file(
    shared_redis: RedisPeer, scp: CountingScp, tmp_path: Path
) -> None:
    ledger = make_job(shared_redis.client(), scp, tmp_path)
    runtime = Runtime(ledger.client)
    summary = run_batch(ledger, "b1", runtime, task_id="t1")
    assert (summary.stored, summary.failed) == (10, 0)
    assert scp.distinct == 10
    # Delivered again: nothing is sent twice.
    again = run_batch(ledger, "b1", runtime, task_id="t1")
    assert again.skipped_already_stored == 10 and scp.total == 10
    runtime.close_all()


def test_a_batch_that_killed_its_worker_n_times_fails_as_poison(
    shared_redis: RedisPeer, scp: CountingScp, tmp_path: Path
) -> None:
    ledger = make_job(shared_redis.client(), scp, tmp_path)
    for _ in range(POISON_DELIVERIES):
        ledger.deliveries("t1")  # starts that never finished (the worker died)
    summary = run_batch(ledger, "b1", Runtime(ledger.client), task_id="t1")
    assert summary.poison and summary.failed == 10
    assert scp.total == 0
    outcomes = [o for _, o, _ in ledger.iter_outcomes()]
    assert all(o.state is State.FAILED and o.reason.startswith("poison") for o in outcomes)
    assert ledger.counts()["in_flight"] == 0


def test_a_second_delivery_while_the_first_runs_is_refused(
    shared_redis: RedisPeer, scp: CountingScp, tmp_path: Path
) -> None:
    ledger = make_job(shared_redis.client(), scp, tmp_path)
    # A live holder on another host (Redis re-delivered the batch after a visibility
    # timeout while it still ran).
    assert ledger.claim_batch("b1", "otherhost:1:abcd", 30)
    with pytest.raises(BatchBusy) as busy:
        run_batch(ledger, "b1", Runtime(ledger.client))
    assert 0 < busy.value.retry_in <= 30
    assert scp.total == 0


def test_a_dead_holder_on_this_host_is_taken_over_at_once(
    shared_redis: RedisPeer, scp: CountingScp, tmp_path: Path
) -> None:
    ledger = make_job(shared_redis.client(), scp, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert ledger.claim_batch("b1", f"{socket.gethostname()}:{dead.pid}:abcd", 30)
    t0 = time.monotonic()
    runtime = Runtime(ledger.client)
    summary = run_batch(ledger, "b1", runtime)
    runtime.close_all()
    assert summary.stored == 10 and time.monotonic() - t0 < 10


def _lose_lease_mid_batch(
    ledger: Ledger, scp: CountingScp, monkeypatch: pytest.MonkeyPatch, *, others_store: bool
) -> tuple[threading.Thread, list[str]]:
    """While the batch is being sent (after 5 of its 20 files): its lease vanishes, as after
    a Redis partition longer than the lease; with ``others_store``, another delivery then
    stores the last 5 files (as after `retry --in-flight` handed the batch on) and ends."""
    from migrator.transfer import batch as batch_module

    monkeypatch.setattr(batch_module, "LEASE_REFRESH", 0.05)  # refresh at every flush
    taken: list[str] = []

    def meanwhile() -> None:
        while scp.total < 5:
            time.sleep(0.01)
        ledger.client.delete(ledger.keys.running("b1"))
        if others_store:
            files = ledger.batch("b1")[15:]
            taken.extend(f.sop_instance_uid for f in files)
            ledger.record_many(
                [(f.file_id, FileOutcome(f.uri, State.STORED), time.time()) for f in files]
            )

    thread = threading.Thread(target=meanwhile)
    thread.start()
    return thread, taken


def test_a_batch_whose_lease_went_to_another_delivery_stops_and_sends_nothing_twice(
    shared_redis: RedisPeer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with counting_scp(response_delay=0.05) as scp:
        ledger = make_job(shared_redis.client(), scp, tmp_path, n=20)
        thread, taken = _lose_lease_mid_batch(ledger, scp, monkeypatch, others_store=True)
        runtime = Runtime(ledger.client)
        with pytest.raises(BatchBusy):
            run_batch(ledger, "b1", runtime, task_id="t1")
        thread.join()
        assert [scp.stores[uid] for uid in taken] == [0] * 5  # the other delivery's files
        # The next delivery sends what neither sent; nothing reaches the PACS twice.
        again = run_batch(ledger, "b1", runtime, task_id="t2")
        runtime.close_all()
    assert again.skipped_already_stored >= 5
    assert ledger.counts()["in_flight"] == 0
    assert scp.total == scp.distinct == 15


def test_a_batch_whose_lease_merely_expired_takes_it_back_and_goes_on(
    shared_redis: RedisPeer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with counting_scp(response_delay=0.05) as scp:
        ledger = make_job(shared_redis.client(), scp, tmp_path, n=20)
        thread, _ = _lose_lease_mid_batch(ledger, scp, monkeypatch, others_store=False)
        runtime = Runtime(ledger.client)
        summary = run_batch(ledger, "b1", runtime, task_id="t1")
        thread.join()
        runtime.close_all()
    assert summary.stored == 20
    assert scp.total == scp.distinct == 20


#: A delivery in its own process that writes no outcome before it dies (flushes pushed out
#: of reach): every file it sends is sent and unrecorded when it is killed.
_LOST_DELIVERY = """
import sys, redis
from migrator.ledger import Ledger
from migrator.transfer import batch
from migrator.transfer.runtime import Runtime
batch.FLUSH_FILES, batch.FLUSH_SECONDS = 10**6, 10**6
ledger = Ledger(redis.Redis.from_url(sys.argv[1]), sys.argv[2])
batch.run_batch(ledger, "b1", Runtime(ledger.client), task_id="t1")
"""


def _lose_a_delivery_after(ledger: Ledger, url: str, scp: CountingScp, sent: int) -> None:
    """Start the batch in another process and SIGKILL it once ``sent`` files arrived."""
    proc = subprocess.Popen([sys.executable, "-c", _LOST_DELIVERY, url, ledger.job_id])
    try:
        deadline = time.monotonic() + 60
        while scp.total < sent:
            assert proc.poll() is None and time.monotonic() < deadline, scp.total
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    # A C-STORE on the wire at the kill is still stored (the PACS had all of it), once its
    # handler's 0.05 s delay is over.
    time.sleep(0.5)
    ledger.client.delete(ledger.keys.running("b1"))  # its lease, as when it expires


def test_a_lost_deliverys_files_found_at_the_pacs_are_recorded_not_sent_again(
    shared_redis: RedisPeer, tmp_path: Path
) -> None:
    with counting_scp(response_delay=0.05, find=True) as scp:
        ledger = make_job(shared_redis.client(), scp, tmp_path, n=20)
        _lose_a_delivery_after(ledger, shared_redis.url, scp, 6)
        lost = scp.distinct
        assert ledger.counts()["stored"] == 0  # nothing recorded: the case at hand
        runtime = Runtime(ledger.client)
        summary = run_batch(ledger, "b1", runtime, task_id="t1")
        runtime.close_all()
    # Every instance once at the PACS; the lost delivery's files stored by the ledger too.
    assert scp.total == scp.distinct == 20
    assert summary.stored == 20 and scp.finds == 1
    outcomes = [o for _, o, _ in ledger.iter_outcomes()]
    found = [o for o in outcomes if o.reason == FOUND_AFTER_LOSS]
    assert len(found) == lost and all(o.state is State.STORED for o in found)
    report = from_ledger(ledger)  # what the report says of them
    assert report.found_after_loss == lost and report.stored == 20
    assert re.search(rf"Found stored: +{lost} \(sent by a lost worker", render_text(report))
    assert ledger.counts() == {**ledger.counts(), "stored": 20, "in_flight": 0}
    assert ledger.client.smembers(ledger.keys.opened("b1")) == set()


class _TimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded: an Exception raised by a signal handler
    in the sending thread, wherever it is (here: waiting for a C-STORE's answer)."""


def test_a_delivery_ended_by_a_time_limit_mid_send_does_not_send_its_file_twice(
    shared_redis: RedisPeer, tmp_path: Path
) -> None:
    """Celery's soft time limit ends a delivery with a C-STORE on the wire, and the batch
    goes on in a new task a second later. The file whose answer never came is at the PACS with no
    outcome: the next delivery finds it there (C-FIND) instead of sending it a second time
    (seen under load in test_fleet.py: one instance stored twice)."""

    def limit(signum: int, frame: object) -> None:
        raise _TimeLimit()

    with counting_scp(response_delay=0.3, find=True) as scp:
        ledger = make_job(shared_redis.client(), scp, tmp_path, n=8)
        runtime = Runtime(ledger.client)
        main = threading.get_ident()

        def fire() -> None:  # once 3 files are stored and the 4th is on its way
            deadline = time.monotonic() + 30
            while scp.total < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.1)
            signal.pthread_kill(main, signal.SIGUSR1)

        old = signal.signal(signal.SIGUSR1, limit)
        timer = threading.Thread(target=fire, daemon=True)
        timer.start()
        try:
            with pytest.raises(_TimeLimit):
                run_batch(ledger, "b1", runtime, task_id="t1")
        finally:
            timer.join()
            signal.signal(signal.SIGUSR1, old)
        time.sleep(0.5)  # the PACS finishes storing what was on the wire
        recorded = ledger.counts()["stored"]
        unanswered = scp.distinct - recorded
        assert unanswered == 1, (scp.distinct, recorded)  # the case at hand
        summary = run_batch(ledger, "b1", runtime, task_id="t2")  # the new task
        runtime.close_all()
    assert scp.total == scp.distinct == 8, scp.stores  # none twice
    assert scp.finds == 1
    found = [o for _, o, _ in ledger.iter_outcomes() if o.reason == FOUND_AFTER_LOSS]
    assert len(found) == unanswered and summary.stored == 8 - recorded
    assert ledger.counts() == {**ledger.counts(), "stored": 8, "in_flight": 0}
    assert ledger.client.smembers(ledger.keys.opened("b1")) == set()


def test_a_pacs_that_cannot_be_asked_gets_the_lost_deliverys_files_again(
    shared_redis: RedisPeer, tmp_path: Path
) -> None:
    """No C-FIND at the PACS: the files are sent again (a PACS keeps an instance once; a file
    never sent would be lost), and every file ends stored."""
    with counting_scp(response_delay=0.05) as scp:
        ledger = make_job(shared_redis.client(), scp, tmp_path, n=20)
        _lose_a_delivery_after(ledger, shared_redis.url, scp, 6)
        lost = scp.distinct
        runtime = Runtime(ledger.client)
        summary = run_batch(ledger, "b1", runtime, task_id="t1")
        runtime.close_all()
    assert summary.stored == 20 and ledger.counts()["in_flight"] == 0
    assert scp.distinct == 20 and scp.total == 20 + lost


def test_an_instance_held_under_another_study_is_not_taken_for_the_lost_deliverys_file(
    shared_redis: RedisPeer, tmp_path: Path
) -> None:
    """The PACS holds the file's SOP Instance UID, but in another study (a UID reused in the
    archive, an earlier load): that is not this file. It is sent, not recorded as found."""
    with counting_scp(find=True) as scp:
        ledger = make_job(shared_redis.client(), scp, tmp_path, n=4)
        files = ledger.batch("b1")
        scp.held[files[0].sop_instance_uid] = ("1.2.3.999", "OTHER-PATIENT")  # not ours
        scp.held[files[1].sop_instance_uid] = (files[1].study_uid, "P")  # ours, sent by it
        ledger.open_delivery("b1", "deadhost:1:abcd")  # a delivery that never ended
        runtime = Runtime(ledger.client)
        summary = run_batch(ledger, "b1", runtime, task_id="t1")
        runtime.close_all()
    assert summary.stored == 4 and scp.finds == 1
    assert scp.stores[files[0].sop_instance_uid] == 1  # sent
    assert scp.stores[files[1].sop_instance_uid] == 0  # found, not sent again
    reasons = {o.sop_instance_uid: o.reason for _, o, _ in ledger.iter_outcomes()}
    assert reasons[files[0].sop_instance_uid] != FOUND_AFTER_LOSS
    assert reasons[files[1].sop_instance_uid] == FOUND_AFTER_LOSS


def test_a_late_delivery_of_a_settled_batch_sends_nothing_until_retry_reopens_its_failures(
    shared_redis: RedisPeer, scp: CountingScp, tmp_path: Path
) -> None:
    """A batch whose files all have outcomes (one failed) is delivered again, as a retry
    message a stopped worker handed back is found by the next command's workers: nothing is
    sent, the failed file stays failed. `retry` puts it back in flight: then it is sent."""
    ledger = make_job(shared_redis.client(), scp, tmp_path, n=4)
    files = ledger.batch("b1")
    bad = files[0].sop_instance_uid
    scp.fail_uids[bad] = 0xA900  # refused: failed for good
    runtime = Runtime(ledger.client)
    first = run_batch(ledger, "b1", runtime, task_id="t1")
    assert (first.stored, first.failed) == (3, 1)
    del scp.fail_uids[bad]  # the PACS fixed
    late = run_batch(ledger, "b1", runtime, task_id="t2")
    assert (late.stored, late.failed, scp.stores[bad]) == (0, 0, 0)
    assert ledger.counts()["failed"] == 1
    assert ledger.reopen(ledger.failed_ids()) == 1  # what `migrator retry` does
    again = run_batch(ledger, "b1", runtime, task_id="t3")
    runtime.close_all()
    assert (again.stored, scp.stores[bad], scp.total) == (1, 1, 4)
    assert ledger.counts()["stored"] == 4 and ledger.counts()["failed"] == 0
