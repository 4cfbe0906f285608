"""When an idle sending process takes a job for finished (migrator/transfer/runtime.py's idle
closer closes its associations then): every planned file settled *and* planning over.

The end-to-end check (workers close their associations once a job is finished) is
tests/test_pause.py::test_workers_close_their_associations_once_the_job_is_finished.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from migrator import engine, synth
from migrator.ledger import Ledger
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources.filesystem import FileSource
from migrator.transfer.runtime import _finished
from tests.peers.redis import RedisPeer


def _store_all(ledger: Ledger, batch_id: str) -> None:
    """What fast workers do with a batch: every file stored."""
    now = time.time()
    ledger.record_many(
        [
            (f.file_id, FileOutcome(f.uri, State.STORED, "", 0, bytes=f.size, attempts=1), now)
            for f in ledger.batch(batch_id)
        ]
    )


def test_a_job_is_finished_for_idle_senders_only_once_its_planning_is_over(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """Between two batches of a listing still going on, nothing is in flight: not finished
    (idle workers would close and reopen their associations for every batch)."""
    synth.write_corpus(tmp_path / "in", count=6, size="tiny", seed=71)
    client = redis_server.client()
    ledger = engine.open_job(client, "idle-closer", Settings("127.0.0.1", 9, "NOBODY"))
    between_batches: list[tuple[int, bool]] = []

    def enqueue(batch_id: str) -> None:
        _store_all(ledger, batch_id)  # sent at once, while the listing goes on
        between_batches.append((ledger.counts()["in_flight"], _finished(client, "idle-closer")))

    engine.plan_job(
        ledger, [FileSource(str(tmp_path / "in"))], enqueue, batch_files=2, batch_bytes=1 << 30
    )
    assert between_batches == [(0, False)] * 3
    assert ledger.counts()["stored"] == 6
    assert _finished(client, "idle-closer")  # planning over: nothing more can come


def test_an_interrupted_planning_never_holds_idle_senders_open(
    redis_server: RedisPeer,
) -> None:
    """The mark goes on every way out of planning; a job planned before the mark existed
    has none and is finished when nothing is in flight, as before."""
    client = redis_server.client()
    ledger = Ledger(client, "idle-closer-2")
    assert ledger.create({"host": "127.0.0.1", "port": 9, "called_ae": "NOBODY"})
    assert _finished(client, ledger.job_id)  # no mark (an older job): as before
    with pytest.raises(KeyboardInterrupt), ledger.planning_now():
        assert not _finished(client, ledger.job_id)
        raise KeyboardInterrupt
    assert not ledger.planning()
    assert _finished(client, ledger.job_id)
    # A planner killed outright leaves the mark: the job's end (every file settled,
    # recorded by `run`) clears it.
    client.hset(ledger.keys.meta, "planning", time.time())
    assert not _finished(client, ledger.job_id)
    ledger.mark_finished(complete=True)
    assert _finished(client, ledger.job_id)
