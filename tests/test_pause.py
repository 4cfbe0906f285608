"""`migrator pause / resume / cancel` on a real fleet: redis-server, Celery worker processes
started by the test (4 prefork children) and `migrator run` waiting for the job, sending to
an SCP that notes when each C-STORE arrives and how many associations are open."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from migrator import control, synth
from migrator.ledger import Ledger
from migrator.transfer.inline import send_until_ready
from tests.enginehelpers import (
    assert_invariant,
    common_args,
    finish,
    only_job,
    start_run,
    wait_until,
)
from tests.peers.counting_scp import CountingScp
from tests.peers.redis import RedisPeer
from tests.storehelpers import load_report, run_migrator
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(240)

#: Each C-STORE is answered after this long: 4 workers are busy all the time.
DELAY = 0.05


class TimedScp(CountingScp):
    """Also notes the wall-clock time each C-STORE request arrived (before its answer)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.arrivals: list[float] = []
        #: (wall-clock time, associations open) at each C-STORE request
        self.open_at: list[tuple[float, int]] = []

    def _on_store(self, event: Any) -> int:
        now = time.time()
        self.arrivals.append(now)
        self.open_at.append((now, self.open_now))
        return super()._on_store(event)


@contextmanager
def timed_scp(delay: float = DELAY) -> Iterator[TimedScp]:
    scp = TimedScp(response_delay=delay).start()
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pause400")
    synth.write_corpus(folder, count=400, size="tiny", seed=21)
    return folder


def _workers(url: str, tmp: Path) -> LocalWorkers:
    return LocalWorkers(url, 4, loglevel="INFO", logfile=str(tmp / "workers.log"))


def _migrator(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _control_at(ledger: Ledger, wanted: str, proc: subprocess.Popen[str]) -> float:
    """When (wall clock, ±5 ms) the command ``proc`` put the job into ``wanted``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if control.state(ledger.client, ledger.job_id) == wanted:
            return time.time()
        time.sleep(0.005)
    raise AssertionError(f"the job never became {wanted}: {proc.communicate()}")


def _start(folder: Path, scp: CountingScp, url: str) -> subprocess.Popen[str]:
    dest = common_args(("127.0.0.1", scp.port), "COUNTING")
    return start_run(folder, *dest, "--redis-url", url, "--batch-files", "20", "--no-preflight")


def test_pause_stops_four_busy_workers_within_a_second_and_resume_completes(
    tmp_path: Path, redis_server: RedisPeer, corpus: Path
) -> None:
    url = redis_server.url
    with timed_scp() as scp, _workers(url, tmp_path):
        proc = _start(corpus, scp, url)
        ledger = only_job(redis_server.client())
        wait_until(lambda: ledger.counts()["stored"] >= 60, 60, "the first files")
        assert scp.open_now >= 2  # the workers are busy, each on its association
        pausing = _migrator("pause", ledger.job_id, "--redis-url", url, "--wait")
        paused_at = _control_at(ledger, control.PAUSED, pausing)
        out, err = pausing.communicate(timeout=30)
        assert pausing.returncode == 0 and "paused" in out, out + err
        # In-flight files settle, then the PACS sees no association of the job.
        wait_until(lambda: scp.open_now == 0, 5, "the associations to close")
        time.sleep(3)  # a paused job stays quiet
        late = [t - paused_at for t in scp.arrivals if t > paused_at + 1.0]
        assert not late, f"files started {late} s after the pause"
        assert scp.open_now == 0
        counts = ledger.counts()
        assert counts["stored"] == scp.distinct  # what was on the wire was recorded
        assert 0 < counts["in_flight"] < 400
        status = run_migrator("status", ledger.job_id, "--redis-url", url, "--json")
        assert json.loads(status.stdout)["control"] == "paused", status.stdout
        text = run_migrator("status", ledger.job_id, "--redis-url", url)
        assert "PAUSED" in text.stdout, text.stdout
        assert proc.poll() is None  # `run` waits for the paused job
        resumed = run_migrator("resume", ledger.job_id, "--redis-url", url)
        assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
        code, out = finish(proc, timeout=120)
    assert code == 0, out
    assert scp.distinct == 400
    counts = assert_invariant(ledger)
    assert counts["stored"] == 400
    assert control.state(ledger.client, ledger.job_id) is None
    kinds = [h["kind"] for h in ledger.history()]
    assert "pause" in kinds and "resume" in kinds


def _cancelled_accounts(
    ledger: Ledger, scp: CountingScp, tmp_path: Path, url: str
) -> dict[str, int]:
    counts = assert_invariant(ledger)
    assert counts["stored"] == scp.distinct and counts["failed"] == 0
    assert counts["skipped"] > 0 and counts["stored"] + counts["skipped"] == 400
    report = tmp_path / "report.json"
    made = run_migrator(
        "report", ledger.job_id, "--redis-url", url, "--format", "json", "-o", report
    )
    assert made.returncode == 0, made.stderr
    files = load_report(report)["files"]
    assert len(files) == 400
    skipped = [f for f in files if f["state"] == "skipped"]
    assert {f["reason"] for f in skipped} == {control.CANCELLED_REASON}
    return counts


def test_cancel_while_four_workers_send_accounts_for_every_file(
    tmp_path: Path, redis_server: RedisPeer, corpus: Path
) -> None:
    url = redis_server.url
    with timed_scp() as scp, _workers(url, tmp_path):
        proc = _start(corpus, scp, url)
        ledger = only_job(redis_server.client())
        wait_until(lambda: ledger.counts()["stored"] >= 60, 60, "the first files")
        cancelling = _migrator("cancel", ledger.job_id, "--redis-url", url)
        cancelled_at = _control_at(ledger, control.CANCELLED, cancelling)
        out, err = cancelling.communicate(timeout=60)
        assert cancelling.returncode == 0 and "cancelled" in out, out + err
        code, run_out = finish(proc, timeout=60)  # every file has its outcome: run ends
        wait_until(lambda: scp.open_now == 0, 5, "the associations to close")
    assert code == 0, run_out
    assert not [t for t in scp.arrivals if t > cancelled_at + 1.0]
    _cancelled_accounts(ledger, scp, tmp_path, url)
    again = run_migrator("resume", ledger.job_id, "--redis-url", url)
    assert again.returncode == 2 and "cancelled" in again.stderr


def test_workers_close_their_associations_once_the_job_is_finished(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """Idle workers do not keep a finished job's associations (nor their fleet-wide slots):
    on a PACS that serves open associations in turn on a few threads (Orthanc), idle ones
    held up every `verify` C-FIND after the job by up to a second (bench/cfind_bench.py)."""
    synth.write_corpus(tmp_path / "in", count=40, size="tiny", seed=24)
    url = redis_server.url
    with timed_scp(0.0) as scp, _workers(url, tmp_path) as workers:
        code, out = finish(_start(tmp_path / "in", scp, url), timeout=120)
        assert code == 0, out
        assert scp.distinct == 40 and scp.max_open >= 2  # the workers sent, side by side
        wait_until(lambda: scp.open_now == 0, 5, "the finished job's associations to close")
        assert workers.alive(), "the workers stopped: their associations closed with them"


def test_cancel_of_a_paused_job_settles_its_parked_batches(
    tmp_path: Path, redis_server: RedisPeer, corpus: Path
) -> None:
    url = redis_server.url
    with timed_scp() as scp, _workers(url, tmp_path):
        proc = _start(corpus, scp, url)
        ledger = only_job(redis_server.client())
        wait_until(lambda: ledger.counts()["stored"] >= 40, 60, "the first files")
        paused = run_migrator("pause", ledger.job_id, "--redis-url", url, "--wait")
        assert paused.returncode == 0, paused.stderr
        # Every queued batch is delivered, finds the job paused and is put aside.
        wait_until(lambda: ledger.client.scard(ledger.keys.parked) > 0, 30, "parked batches")
        cancelled = run_migrator("cancel", ledger.job_id, "--redis-url", url)
        assert cancelled.returncode == 0, cancelled.stderr
        code, out = finish(proc, timeout=60)
    assert code == 0, out
    _cancelled_accounts(ledger, scp, tmp_path, url)


def test_pause_stops_runs_own_inline_sender_and_closes_its_associations(
    tmp_path: Path, redis_server: RedisPeer, corpus: Path
) -> None:
    """`run` sends batches itself while its workers boot (transfer/inline.py): a pause stops
    it as it stops a worker."""
    url = redis_server.url
    with timed_scp() as scp:
        plan = run_migrator(
            "plan", corpus, *common_args(("127.0.0.1", scp.port), "COUNTING"),
            "--redis-url", url, "--batch-files", "20", "--no-preflight", "-j", "4",
        )  # fmt: skip
        assert plan.returncode == 0, plan.stdout + plan.stderr
        ledger = only_job(redis_server.client())
        done: list[int] = []
        sender = threading.Thread(
            target=lambda: done.append(send_until_ready(ledger, lambda: False)), daemon=True
        )
        sender.start()
        wait_until(lambda: ledger.counts()["stored"] >= 40, 60, "the first files")
        control.pause(ledger)
        paused_at = time.time()
        sender.join(timeout=10)
        assert not sender.is_alive() and done, "the inline sender did not stop"
        time.sleep(1.5)
        assert not [t for t in scp.arrivals if t > paused_at + 1.0]
        assert scp.open_now == 0
        assert ledger.counts()["stored"] == scp.distinct < 400
        # Resumed, the workers send the rest (the inline sender parks nothing).
        state, parked = control.resume(ledger)
        assert state == "ok" and parked == []
        with LocalWorkers(url, 2, logfile=str(tmp_path / "w.log")):
            wait_until(lambda: ledger.counts()["in_flight"] == 0, 90, "the job to end")
    assert scp.distinct == 400
    assert_invariant(ledger)


def test_pause_holds_back_a_file_the_rate_limit_was_holding(
    tmp_path: Path, redis_server: RedisPeer, corpus: Path
) -> None:
    """At 8 files/s a sender waits up to a second and more for its next lease of files: a
    pause that comes meanwhile keeps them from starting."""
    url = redis_server.url
    with timed_scp() as scp, _workers(url, tmp_path):
        dest = common_args(("127.0.0.1", scp.port), "COUNTING")
        proc = start_run(
            corpus, *dest, "--redis-url", url, "--batch-files", "20", "--no-preflight",
            "--rate-limit", "8",
        )  # fmt: skip
        ledger = only_job(redis_server.client())
        wait_until(lambda: ledger.counts()["stored"] >= 30, 60, "the first files")
        control.pause(ledger)
        paused_at = time.time()
        time.sleep(3)
        late = [t - paused_at for t in scp.arrivals if t > paused_at + 1.0]
        assert not late, f"files started {late} s after the pause"
        cancelled = run_migrator("cancel", ledger.job_id, "--redis-url", url)
        assert cancelled.returncode == 0, cancelled.stderr
        code, out = finish(proc, timeout=60)
    assert code == 0, out
    counts = assert_invariant(ledger)
    assert counts["stored"] == scp.distinct and counts["skipped"] == 400 - scp.distinct


def test_cancel_settles_a_planned_job_without_any_worker(
    tmp_path: Path, redis_server: RedisPeer, corpus: Path
) -> None:
    url = redis_server.url
    plan = run_migrator(
        "plan", corpus, "--host", "127.0.0.1", "--port", "9", "--called-ae", "X",
        "--redis-url", url, "--batch-files", "50", "--no-preflight",
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    ledger = only_job(redis_server.client())
    paused = run_migrator("pause", ledger.job_id, "--redis-url", url)
    assert paused.returncode == 0 and "400 files not sent yet" in paused.stdout, paused.stdout
    cancelled = run_migrator("cancel", ledger.job_id, "--redis-url", url)
    assert cancelled.returncode == 0 and "400 skipped" in cancelled.stdout, cancelled.stdout
    counts = assert_invariant(ledger)
    assert counts["skipped"] == 400
    status = run_migrator("status", ledger.job_id, "--redis-url", url)
    assert "CANCELLED" in status.stdout and "400 skipped" in status.stdout, status.stdout
    listed = run_migrator("jobs", "--redis-url", url)
    assert "[cancelled, created" in listed.stdout, listed.stdout
    again = run_migrator("pause", ledger.job_id, "--redis-url", url)
    assert again.returncode == 2 and "cancelled" in again.stderr
