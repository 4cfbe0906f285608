"""`migrator run` sends batches itself while its workers boot (migrator/transfer/inline.py):
from the end of the plan, under the batch leases, never twice, and never waiting for a retry."""

from __future__ import annotations

import time
from pathlib import Path

from migrator import synth
from migrator.netutil import free_port
from migrator.transfer.inline import send_until_ready
from tests.enginehelpers import assert_invariant, only_job, wait_until
from tests.peers.counting_scp import counting_scp
from tests.peers.redis import RedisPeer
from tests.storehelpers import run_migrator
from workers.local import LocalWorkers


def _plan(folder: Path, port: int, url: str) -> None:
    proc = run_migrator(
        "plan", folder, "--host", "127.0.0.1", "--port", port, "--called-ae", "COUNTING",
        "--redis-url", url, "--batch-files", "5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_batches_sent_here_from_the_end_are_not_sent_again_by_the_workers(
    redis_server: RedisPeer, tmp_path: Path
) -> None:
    synth.write_corpus(tmp_path / "in", count=15, size="tiny", seed=5)
    with counting_scp() as scp:
        _plan(tmp_path / "in", scp.port, redis_server.url)
        ledger = only_job(redis_server.client())
        batches = ledger.batch_ids()
        assert len(batches) == 3
        def stop() -> bool:
            return ledger.counts()["stored"] >= 10  # after two batches: "the workers are ready"

        assert send_until_ready(ledger, stop) == 2
        # The last two batches of the plan, not the first (the workers start there).
        states = {b: ledger.batch_states(b) for b in batches}
        assert "." in states[batches[0]] and "." not in states[batches[1]] + states[batches[2]]
        assert ledger.counts()["stored"] == 10 and scp.total == 10
        # The workers get all three Celery messages: they send the first batch only.
        with LocalWorkers(redis_server.url, 1, logfile=str(tmp_path / "w.log")):
            wait_until(lambda: ledger.counts()["in_flight"] == 0, 60, "the job to end")
        assert scp.total == 15 and scp.distinct == 15
        counts = assert_invariant(ledger)
        assert counts["stored"] == 15


def test_a_batch_that_would_need_a_retry_is_left_to_the_workers_at_once(
    redis_server: RedisPeer, tmp_path: Path
) -> None:
    """PACS down: no connection retries here (the workers do them with their backoff), and
    nothing is recorded as failed by this process."""
    synth.write_corpus(tmp_path / "in", count=10, size="tiny", seed=6)
    _plan(tmp_path / "in", free_port(), redis_server.url)  # nothing listens there
    ledger = only_job(redis_server.client())
    t0 = time.monotonic()
    assert send_until_ready(ledger, lambda: False) == 0
    assert time.monotonic() - t0 < 2  # retrying the connection would take ~3.5 s
    counts = ledger.counts()
    assert counts["in_flight"] == 10 and counts["failed"] == 0
