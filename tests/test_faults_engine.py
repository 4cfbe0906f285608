"""Engine-level faults (issue 7): real `migrator run`, Redis, Celery workers and PACS.

Each test breaks one thing a migration meets (a worker told to stop, Redis losing its data,
the PACS refusing, aborting, going silent or answering errors, S3 throttling or objects
changing under the job) and ends with the same three checks:

* ``planned = stored + failed + skipped`` with nothing left in flight (`assert_invariant`);
* every file the ledger calls stored is at the destination (never a false "stored");
* every instance that should have arrived did (none missing).

Timeouts are short and corpora tiny so the whole file stays within a few minutes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from migrator import synth
from migrator.ledger import Ledger
from migrator.netutil import free_port
from migrator.outcomes import FileOutcome, State
from migrator.sources.base import SourceItem
from tests.enginehelpers import (
    FAST_FAULTS,
    assert_invariant,
    common_args,
    finish,
    only_job,
    start_run,
    wait_until,
)
from tests.peers import orthanc as orthanc_peers
from tests.peers.counting_scp import counting_scp
from tests.peers.http_faults import FaultyHttpProxy
from tests.peers.migrator_scp import RunningScp, start_migrator_scp
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import RedisPeer
from tests.peers.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoS3
from tests.peers.tcp_proxy import TcpProxy
from tests.storehelpers import load_report, sop_uid
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(240)

QUEUE = "migrator.batches"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


# -- helpers ------------------------------------------------------------------------------


def workers(url: str, n: int, logdir: Path, **env: str) -> LocalWorkers:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"worker-{len(list(logdir.glob('worker-*.log')))}.log"
    return LocalWorkers(url, n, env=env, loglevel="INFO", logfile=str(log))


def corpus(folder: Path, count: int, seed: int) -> dict[str, Path]:
    """``count`` tiny files; SOP Instance UID -> path."""
    return {sop_uid(p): p for p in synth.write_corpus(folder, count=count, size="tiny", seed=seed)}


def outcomes(ledger: Ledger) -> list[FileOutcome]:
    return [o for _, o, _ in ledger.iter_outcomes()]


def stored_uids(ledger: Ledger) -> set[str]:
    return {o.sop_instance_uid for o in outcomes(ledger) if o.state is State.STORED}


def received(scp: RunningScp) -> set[str]:
    """SOP Instance UIDs `migrator scp` has on disk (``<study>/<series>/<sop>.dcm``)."""
    return {p.stem for p in scp.output_dir.rglob("*.dcm")}


def assert_accounted(
    ledger: Ledger, at_destination: set[str], expected: set[str]
) -> dict[str, int]:
    """The three end checks: the invariant, no false "stored", nothing missing."""
    counts = assert_invariant(ledger)
    stored = stored_uids(ledger)
    assert stored <= at_destination, (
        f"reported stored, not there: {sorted(stored - at_destination)}"
    )
    assert expected <= at_destination, (
        f"missing at the destination: {sorted(expected - at_destination)}"
    )
    return counts


def queued(client: redis.Redis) -> int:
    """Messages waiting in the batch queue (kombu keeps a Redis list named after it)."""
    return int(client.llen(QUEUE))


def unacked(client: redis.Redis) -> int:
    """Messages delivered to a worker and not acknowledged yet."""
    return int(client.hlen("unacked"))


def wait_exit(pid: int, timeout: float) -> None:
    """Wait for our child ``pid`` to exit, without reaping it (LocalWorkers.stop reaps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} still running {timeout} s after the signal")


# -- 3. SIGTERM during a long batch ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("target", ["main", "group"])
def test_sigterm_during_a_long_batch_requeues_it_and_a_new_worker_finishes(
    tmp_path: Path, redis_server: RedisPeer, target: str
) -> None:
    """SIGTERM to the worker's main process (Celery's soft shutdown, SIGTERM remapped to
    SIGQUIT) or to its whole process group (what an init that signals the group does):
    the running batch goes back to the queue at once, not after a visibility timeout (left
    at its default of an hour here, so only an immediate requeue lets the job finish)."""
    files = corpus(tmp_path / "in", 40, seed=31)
    client = redis_server.client()
    with counting_scp() as scp:
        first = workers(redis_server.url, 2, tmp_path).start()
        try:
            proc = start_run(
                tmp_path / "in",
                *common_args(("127.0.0.1", scp.port), "COUNTING"),
                "--redis-url",
                redis_server.url,
                "--rate-limit",
                "10",
                "--burst",
                "1",
                "--batch-files",
                "20",
                log=tmp_path / "run.log",
            )
            ledger = only_job(client)
            wait_until(lambda: ledger.counts()["stored"] >= 5, 30, "the first files")
            if target == "main":
                os.kill(first.pid, signal.SIGTERM)
            else:
                os.killpg(first.pid, signal.SIGTERM)
            wait_exit(first.pid, 20)
        finally:
            first.stop()
        counts = ledger.counts()
        assert counts["in_flight"] > 0, counts
        assert unacked(client) == 0 and queued(client) >= 1, (queued(client), unacked(client))
        with workers(redis_server.url, 2, tmp_path):
            code, _ = finish(proc, timeout=90)
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log
    assert_accounted(ledger, set(scp.stores), set(files))
    assert len(stored_uids(ledger)) == 40


# -- 6. Redis loses its data; Redis down when a worker starts ------------------------------


@pytest.mark.slow
def test_redis_restart_without_persistence_is_detected_and_a_rerun_completes(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """Redis restarted without AOF/RDB: the queue and the ledger are gone. The run must not
    take the empty counters for a finished job ("no input files", exit 5): it says the job
    was lost and how to go on (exit 1); the same command then plans it anew and completes."""
    files = corpus(tmp_path / "in", 60, seed=61)
    with counting_scp() as scp, workers(redis_server.url, 2, tmp_path) as local:
        args: list[str | Path] = [
            tmp_path / "in",
            *common_args(("127.0.0.1", scp.port), "COUNTING"),
            "--redis-url",
            redis_server.url,
            "--batch-files",
            "20",
        ]
        proc = start_run(*args, "--rate-limit", "15", "--burst", "1", log=tmp_path / "run.log")
        ledger = only_job(redis_server.client())
        wait_until(lambda: ledger.counts()["stored"] >= 10, 30, "the first files")
        redis_server.restart()  # no AOF, no RDB: the queue and the ledger are gone
        code, _ = finish(proc, timeout=60)
        out = (tmp_path / "run.log").read_text()
        assert code == 1, out
        assert f"job {ledger.job_id} is gone from Redis" in out, out
        assert "Run the same command again" in out, out
        assert not ledger.exists()
        # The batches that were running may still be at it: the re-run must not mix their
        # outcomes into its new plan (test_a_batch_of_a_lost_job_writes_nothing_...).
        code, out = finish(start_run(*args), timeout=60)  # the same command again
    assert local.logfile is not None
    worker_log = Path(local.logfile).read_text()
    assert code == 0, out + worker_log[-3000:]
    counts = assert_accounted(ledger, set(scp.stores), set(files))
    assert counts["planned"] == counts["stored"] == 60
    # The old deliveries stopped: dropped by us at their next flush ("the job is gone"), or
    # terminated by Celery first (worker_cancel_long_running_tasks_on_connection_loss).
    assert "dropped: job" in worker_log or "Terminating it instead" in worker_log, worker_log


@pytest.mark.parametrize("replanned", [False, True])
def test_a_batch_of_a_lost_job_writes_nothing_into_an_empty_or_replanned_ledger(
    tmp_path: Path, redis_server: RedisPeer, replanned: bool
) -> None:
    """The batch runner itself (no Celery): Redis loses the job while a batch is being sent,
    and (``replanned``) the same command plans it again at once, with the same batch ids.
    The running batch stops with JobGone at its next write and records nothing: its files
    stay in flight in the new plan, which sends them itself."""
    from migrator.dicomfile import inspect_file
    from migrator.errors import JobGone
    from migrator.ledger import PlannedFile
    from migrator.settings import Settings
    from migrator.transfer.batch import run_batch
    from migrator.transfer.runtime import Runtime

    client = redis_server.client()
    paths = synth.write_corpus(tmp_path / "in", count=10, size="tiny", seed=64)
    files = []
    for path in paths:
        h = inspect_file(str(path))
        files.append(
            PlannedFile(
                str(path), h.size, "", h.sop_class_uid, h.sop_instance_uid, h.transfer_syntax, ""
            )
        )

    with counting_scp() as scp:
        # burst 2: the batch reserves from the limiter 2 files at a time
        # (migrator/transfer/leases.py), so the limiter is called before files 1, 3, 5, 7, 9.
        config = Settings("127.0.0.1", scp.port, "COUNTING", burst=2).to_dict()

        def plan() -> Ledger:
            ledger = Ledger(client, "job-lost")
            ledger.create(config)
            ledger.add_batch("b1", files)
            return ledger

        ledger = plan()

        class LoseTheJob:
            """A limiter that, before the 7th file, has Redis lose everything."""

            calls = 0

            def acquire(self, files: int = 1, nbytes: int = 0) -> float:
                self.calls += 1
                if self.calls == 4:
                    client.flushall()
                    if replanned:
                        time.sleep(0.01)  # another creation time
                        plan()
                return 0.0

        runtime = Runtime(client)
        lose = LoseTheJob()
        runtime.limiter = lambda settings: lose  # type: ignore[method-assign]
        with pytest.raises(JobGone):
            run_batch(ledger, "b1", runtime, task_id="t1")
        runtime.close_all()
    assert ledger.exists() is replanned
    if replanned:
        assert ledger.batch_states("b1") == "." * 10  # nothing recorded into the new plan
        assert ledger.counts()["in_flight"] == 10
    else:
        # nothing at all: "or not ledger.exists()" here could not fail (asserted above)
        assert client.dbsize() == 0, sorted(client.keys("*"))


def test_redis_lost_while_planning_stops_the_plan_and_the_rerun_strands_nothing(
    tmp_path: Path, redis_server: RedisPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis loses everything half-way through planning (in-process, no workers). The plan
    stops with JobLost; the batch written into the empty Redis after the loss is not
    enqueued, so the same plan run again enqueues it with the rest: every planned batch is
    in the queue, no file is left planned and never sent."""
    import json

    from migrator import engine, planner
    from migrator.settings import Settings
    from migrator.sources.filesystem import FileSource

    corpus(tmp_path / "in", 30, seed=63)
    client = redis_server.client()
    monkeypatch.setattr(planner, "CHUNK", 5)  # small read-ahead: the loss lands mid-plan

    class LosingRedis(FileSource):
        def iter_items(self) -> Iterator[SourceItem]:
            for n, item in enumerate(super().iter_items()):
                if n == 15:
                    client.flushall()  # what a restart without persistence leaves
                yield item

    config = Settings("127.0.0.1", 11112, "NOBODY")
    ledger = engine.open_job(client, "job-lost", config)
    from migrator.errors import JobGone
    from workers.app import enqueuer

    with pytest.raises(JobGone, match="job job-lost is gone from Redis"):
        engine.plan_job(
            ledger,
            [LosingRedis(str(tmp_path / "in"))],
            enqueuer(redis_server.url, "job-lost"),
            batch_files=10,
            batch_bytes=1 << 30,
        )

    ledger = engine.open_job(client, "job-lost", config)  # the same command again
    engine.plan_job(
        ledger,
        [FileSource(str(tmp_path / "in"))],
        enqueuer(redis_server.url, ledger.job_id),
        batch_files=10,
        batch_bytes=1 << 30,
    )
    counts = ledger.counts()
    assert counts["planned"] == counts["in_flight"] == 30, counts
    messages = [json.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)]
    assert sorted(messages) == [f"job-lost:{b}" for b in ledger.batch_ids()], messages


@pytest.mark.slow
def test_worker_started_while_redis_is_down_connects_when_it_comes_up(tmp_path: Path) -> None:
    port = free_port()
    peer = RedisPeer(tmp_path / "redis")
    url = f"redis://127.0.0.1:{port}/0"
    local = workers(url, 1, tmp_path)
    started: list[BaseException | None] = []
    # start() returns once the worker answers a ping, i.e. once it reached Redis.
    thread = threading.Thread(target=lambda: started.append(_start(local)), daemon=True)
    thread.start()
    try:
        wait_until(lambda: "Cannot connect to redis" in local.log_tail(), 20, "a refused connect")
        assert local.alive() and thread.is_alive()
        peer.start(port)
        thread.join(30)
        assert started == [None], started
        files = corpus(tmp_path / "in", 20, seed=62)
        with counting_scp() as scp:
            code, out = finish(
                start_run(
                    tmp_path / "in",
                    *common_args(("127.0.0.1", scp.port), "COUNTING"),
                    "--redis-url",
                    url,
                ),
                timeout=60,
            )
        assert code == 0, out
        assert_accounted(only_job(peer.client()), set(scp.stores), set(files))
    finally:
        local.stop()
        peer.stop()


def _start(local: LocalWorkers) -> BaseException | None:
    try:
        local.start()
    except BaseException as exc:
        return exc
    return None


# -- 7. PACS down at start; Orthanc stopped mid-job and restarted --------------------------


@pytest.mark.slow
def test_pacs_down_at_start_fails_every_file_with_the_reason_and_exit_3(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    files = corpus(tmp_path / "in", 20, seed=71)
    port = free_port()  # nothing listens: connection refused at once
    report = tmp_path / "report.json"
    # Batch retries back off 5, 10, 20, 40 s in production; capped at 1 s here.
    with workers(
        redis_server.url, 2, tmp_path, **{**FAST_FAULTS, "MIGRATOR_MAX_LIMITER_WAIT": "1"}
    ):
        t0 = time.monotonic()
        code, out = finish(
            start_run(
                tmp_path / "in",
                *common_args(("127.0.0.1", port), "NOBODY"),
                "--redis-url",
                redis_server.url,
                # The workers' path (a PACS gone after the preflight's C-ECHO): see
                # test_cli_exit_codes.py for the preflight's own exit 3.
                "--no-preflight",
                "--batch-files",
                "10",
                "--retries",
                "1",
                "--report",
                report,
            ),
            timeout=90,
        )
        elapsed = time.monotonic() - t0
    assert code == 3, out
    ledger = only_job(redis_server.client())
    assert_accounted(ledger, set(), set())
    refused = f"cannot reach the PACS: connection refused by 127.0.0.1:{port}"
    assert all(o.state is State.FAILED and refused in o.reason for o in outcomes(ledger))
    assert f"nothing was stored. Once fixed: migrator retry {ledger.job_id}" in out
    data = load_report(report)
    assert data["totals"]["failed"] == len(files) and data["exit_status"] == 3, data["totals"]
    # Each batch was tried 5 times, backing off in between, before its files were failed:
    # not at the first refusal.
    assert "(gave up after 5 tries of the batch)" in outcomes(ledger)[0].reason
    assert elapsed > 4 * 1


def restart_on_same_ports(pacs: OrthancPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start a stopped Orthanc again with its ports, name and storage (a PACS reboot)."""
    ports = iter([pacs.dicom_port, pacs.http_port])
    with monkeypatch.context() as m:
        m.setattr(orthanc_peers, "free_port_all_interfaces", lambda: next(ports))
        # The old connections linger in TIME_WAIT: free for a listener with SO_REUSEADDR
        # (as Orthanc binds), not for the fixture's plain bind check.
        m.setattr(orthanc_peers, "port_free_on_all_interfaces", _free_for_a_listener)
        pacs.start()


def _free_for_a_listener(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


@pytest.mark.slow
def test_orthanc_stopped_mid_job_and_restarted_on_the_same_port(
    tmp_path: Path, redis_server: RedisPeer, orthanc: OrthancPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = corpus(tmp_path / "in", 100, seed=72)
    with workers(redis_server.url, 2, tmp_path, **FAST_FAULTS):
        proc = start_run(
            tmp_path / "in",
            *common_args(("127.0.0.1", orthanc.dicom_port), "ORTHANC"),
            "--redis-url",
            redis_server.url,
            "--rate-limit",
            "40",
            "--batch-files",
            "25",
            log=tmp_path / "run.log",
        )
        ledger = only_job(redis_server.client())
        wait_until(lambda: ledger.counts()["stored"] >= 20, 30, "the first files")
        # SIGKILL: a SIGTERM would not interrupt anything, Orthanc's clean stop waits for
        # the open associations to end, and the workers keep theirs open while they send.
        assert orthanc.pid is not None
        os.kill(orthanc.pid, signal.SIGKILL)
        orthanc.stop()  # reaps it
        stopped = ledger.counts()["stored"]
        time.sleep(2)  # down for a while: connections refused
        restart_on_same_ports(orthanc, monkeypatch)
        code, _ = finish(proc, timeout=120)
    out = (tmp_path / "run.log").read_text()
    assert code == 0, out
    assert stopped < len(files)
    assert_accounted(ledger, orthanc.all_sop_instance_uids(), set(files))
    assert orthanc.count_instances() == len(files)


# -- 8. PACS statuses and rejected associations ------------------------------------------


@pytest.mark.slow
def test_transient_a700_for_a_while_is_retried_and_everything_is_stored(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """The first 3 C-STOREs answer 0xA700 (out of resources): each is re-sent on a fresh
    association after a backoff, and every file ends stored, once."""
    files = corpus(tmp_path / "in", 40, seed=81)
    with start_migrator_scp(tmp_path / "scp", "--fail-status", "A700", "--fail-first", "3") as scp:
        with workers(redis_server.url, 2, tmp_path):
            code, out = finish(
                start_run(
                    tmp_path / "in",
                    *common_args(("127.0.0.1", scp.port), scp.ae_title),
                    "--redis-url",
                    redis_server.url,
                    "--batch-files",
                    "10",
                    "--retries",
                    "3",
                ),
                timeout=60,
            )
        summary = scp.stop()
    assert code == 0, out
    ledger = only_job(redis_server.client())
    counts = assert_accounted(ledger, received(scp), set(files))
    assert counts["stored"] == 40
    assert sum(o.attempts for o in outcomes(ledger)) == 40 + 3
    assert "Successful stores: 40" in summary and "fault injection: 3" in summary, summary


@pytest.mark.slow
def test_permanent_statuses_fail_at_once_and_a700_when_its_retries_run_out(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """0xA900, 0xC000 and 0x0122 are permanent: failed at the first answer, the status in
    the ledger and the report. 0xA700 is retried, but a PACS that keeps answering it (a full
    store, Orthanc without Study UID) ends the file as failed with that status too."""
    files = corpus(tmp_path / "in", 30, seed=82)
    uids = sorted(files)
    statuses = {uids[0]: 0xA900, uids[1]: 0xC000, uids[2]: 0x0122, uids[3]: 0xA700}
    report = tmp_path / "report.json"
    with counting_scp() as scp, workers(redis_server.url, 2, tmp_path):
        scp.fail_uids = dict(statuses)
        code, out = finish(
            start_run(
                tmp_path / "in",
                *common_args(("127.0.0.1", scp.port), "COUNTING"),
                "--redis-url",
                redis_server.url,
                "--batch-files",
                "10",
                "--retries",
                "1",
                "--report",
                report,
            ),
            timeout=60,
        )
    assert code == 1, out
    ledger = only_job(redis_server.client())
    counts = assert_accounted(ledger, set(scp.stores), set(files) - set(statuses))
    assert (counts["stored"], counts["failed"]) == (26, 4)
    failed = {o.sop_instance_uid: o for o in outcomes(ledger) if o.state is State.FAILED}
    assert {u: o.status for u, o in failed.items()} == statuses
    # Permanent: never sent again. Transient: sent again, then given up.
    assert {u: o.attempts for u, o in failed.items()} == {u: 1 for u in uids[:3]} | {uids[3]: 2}
    assert failed[uids[3]].reason.endswith("(gave up after 2 attempts)"), failed[uids[3]]
    rows = {f["sop_instance_uid"]: f for f in load_report(report)["files"]}
    for uid, status in statuses.items():
        text = f"0x{status:04X}"
        assert rows[uid]["state"] == "failed"
        assert rows[uid]["status"] == text and text in rows[uid]["reason"], rows[uid]
        assert text in out, out


@pytest.mark.slow
def test_wrong_called_ae_is_rejected_and_the_run_exits_4(
    tmp_path: Path, redis_server: RedisPeer, orthanc_factory: Any
) -> None:
    pacs: OrthancPeer = orthanc_factory(check_called_aet=True)
    files = corpus(tmp_path / "in", 20, seed=83)
    with workers(redis_server.url, 2, tmp_path):
        t0 = time.monotonic()
        code, out = finish(
            start_run(
                tmp_path / "in",
                *common_args(("127.0.0.1", pacs.dicom_port), "WRONGAET"),
                "--redis-url",
                redis_server.url,
                "--no-preflight",  # the workers' path; the preflight's exit 4 is tested apart
                "--batch-files",
                "10",
            ),
            timeout=60,
        )
        elapsed = time.monotonic() - t0
    assert code == 4, out
    ledger = only_job(redis_server.client())
    counts = assert_accounted(ledger, pacs.all_sop_instance_uids(), set())
    assert counts["failed"] == len(files) and pacs.count_instances() == 0
    reasons = {o.reason for o in outcomes(ledger)}
    assert len(reasons) == 1 and "called AE title not recognized" in reasons.pop()
    assert elapsed < 20  # permanent: no backoff, no batch retries
    assert f"Once fixed: migrator retry {ledger.job_id}" in out


@pytest.mark.slow
def test_more_workers_than_the_pacs_accepts_associations(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """`migrator scp --max-conns 1` rejects a second association as busy (2, 3, 2) while
    three worker processes want one each."""
    files = corpus(tmp_path / "in", 60, seed=84)
    with start_migrator_scp(tmp_path / "scp", "--max-conns", "1") as scp:
        with workers(redis_server.url, 3, tmp_path):
            code, out = finish(
                start_run(
                    tmp_path / "in",
                    *common_args(("127.0.0.1", scp.port), scp.ae_title),
                    "--redis-url",
                    redis_server.url,
                    "--batch-files",
                    "10",
                ),
                timeout=120,
            )
        summary = scp.stop()
    # Every worker gives its association back at the end of each batch once the PACS has
    # turned one away as busy, so the workers take turns instead of one idle worker
    # keeping the only association while the others' batches give up.
    assert code == 0, out
    ledger = only_job(redis_server.client())
    counts = assert_accounted(ledger, received(scp), set(files))
    assert counts["stored"] == len(files)
    rejected = re.search(r"Associations: (\d+) accepted, (\d+) rejected", summary)
    assert rejected and int(rejected[2]) > 0, summary
    assert "Successful stores: 60" in summary, summary


# -- 9. Aborts, silence, half-open connections -------------------------------------------


@pytest.mark.slow
def test_pacs_aborting_mid_stream_gets_the_lost_files_again_each_stored_once(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """The first 3 associations to reach their 6th C-STORE are aborted there (that instance
    is not stored, no response): the sender cannot know the outcome, re-sends it on a new
    association, and every instance ends stored exactly once."""
    files = corpus(tmp_path / "in", 40, seed=91)
    # -v: the per-file lines, which say when a file replaced one stored before
    with start_migrator_scp(
        tmp_path / "scp", "--abort-after", "5", "--fail-first", "3", "-v"
    ) as scp:
        with workers(redis_server.url, 2, tmp_path):
            code, out = finish(
                start_run(
                    tmp_path / "in",
                    *common_args(("127.0.0.1", scp.port), scp.ae_title),
                    "--redis-url",
                    redis_server.url,
                    "--batch-files",
                    "10",
                ),
                timeout=60,
            )
        summary = scp.stop()
    assert code == 0, out
    ledger = only_job(redis_server.client())
    counts = assert_accounted(ledger, received(scp), set(files))
    assert counts["stored"] == 40
    assert "Successful stores: 40" in summary and "fault injection: 3" in summary, summary
    log_text = scp.log_text()
    assert log_text.count(" stored as ") == 40, log_text[-2000:]
    assert "replaced an existing file" not in log_text  # nothing was stored twice
    resent = [o for o in outcomes(ledger) if o.attempts > 1]
    assert len(resent) == 3 and all(o.attempts == 2 for o in resent), resent


@pytest.mark.slow
def test_pacs_that_stops_answering_hits_the_dimse_timeout_and_fails_with_the_reason(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """Every response comes 2 s late, after a 1 s DIMSE timeout: each attempt is aborted at
    1 s, re-sent once (--retries 1), then failed with the reason; nothing hangs. The
    receiver did store the instances (it answers late, after storing): "failed" here means
    "not confirmed", never a false "stored"."""
    corpus(tmp_path / "in", 2, seed=92)
    report = tmp_path / "report.json"
    with (
        start_migrator_scp(tmp_path / "scp", "--response-delay", "2000") as scp,
        workers(redis_server.url, 2, tmp_path),
    ):
        t0 = time.monotonic()
        code, out = finish(
            start_run(
                tmp_path / "in",
                *common_args(("127.0.0.1", scp.port), scp.ae_title),
                "--redis-url",
                redis_server.url,
                "--batch-files",
                "1",
                "--dimse-timeout",
                "1s",
                "--retries",
                "1",
                "--report",
                report,
            ),
            timeout=60,
        )
        elapsed = time.monotonic() - t0
    assert code == 1, out
    ledger = only_job(redis_server.client())
    counts = assert_accounted(ledger, received(scp), set())
    assert counts["failed"] == 2
    for o in outcomes(ledger):
        assert o.attempts == 2
        assert "no response within 1s (DIMSE timeout)" in o.reason, o.reason
        assert "gave up after 2 attempts" in o.reason, o.reason
    assert all(f["reason"] for f in load_report(report)["files"])
    # One file per worker x 2 attempts x 1 s, plus backoff and start-up: well under 20 s.
    assert elapsed < 20


@pytest.mark.slow
def test_half_open_connection_times_out_and_the_job_ends_accounted_for(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """A proxy between workers and PACS stops forwarding (nothing closed, nothing answered)
    for 4.5 s mid-job: the waiting C-STOREs hit the DIMSE timeout, new associations the ACSE
    timeout; the workers retry, and once traffic flows again every file ends stored."""
    files = corpus(tmp_path / "in", 60, seed=93)
    with (
        counting_scp() as scp,
        TcpProxy("127.0.0.1", scp.port) as proxy,
        workers(redis_server.url, 2, tmp_path) as local,
    ):
        proc = start_run(
            tmp_path / "in",
            *common_args(("127.0.0.1", proxy.port), "COUNTING"),
            "--redis-url",
            redis_server.url,
            "--batch-files",
            "15",
            "--rate-limit",
            "20",
            "--dimse-timeout",
            "1.5s",
            "--acse-timeout",
            "1.5s",
            "--network-timeout",
            "1.5s",
            log=tmp_path / "run.log",
        )
        ledger = only_job(redis_server.client())
        wait_until(lambda: ledger.counts()["stored"] >= 15, 30, "the first files")
        proxy.blackhole()
        time.sleep(4.5)
        during = ledger.counts()
        proxy.resume()
        code, _ = finish(proc, timeout=90)
        assert local.logfile is not None
        worker_log = Path(local.logfile).read_text()
    out = (tmp_path / "run.log").read_text()
    assert code == 0, out
    assert during["in_flight"] > 0, during
    counts = assert_accounted(ledger, set(scp.stores), set(files))
    assert counts["stored"] == 60
    # Both timeouts fired: the C-STOREs waiting when the link stalled, then new associations.
    assert "no response within 1.5s (DIMSE timeout); sending the file again" in worker_log
    assert "within 1.5s (ACSE timeout)" in worker_log, worker_log[-3000:]
    assert any(o.attempts > 1 for o in outcomes(ledger))
    assert proxy.accepted > 2  # the workers reconnected


# -- 10. S3 throttling and objects that change after planning ------------------------------


def s3_corpus(moto: MotoS3, tmp: Path, count: int, seed: int) -> tuple[str, dict[str, str]]:
    """``count`` tiny files under s3://<bucket>/archive/; returns (bucket, SOP UID -> key)."""
    bucket = moto.create_bucket()
    keys = {}
    for uid, path in corpus(tmp, count, seed).items():
        keys[uid] = f"archive/{path.name}"
        moto.put(bucket, keys[uid], path.read_bytes())
    return bucket, keys


@pytest.mark.slow
def test_s3_slowdown_and_internal_errors_for_a_while_are_retried(
    tmp_path: Path, redis_server: RedisPeer, moto_s3: MotoS3
) -> None:
    """The workers' first object GETs answer 503 SlowDown, 503 SlowDown, 500 InternalError
    (a proxy in front of moto: the workers are other processes, out of reach of a botocore
    hook): retried, and every object is stored."""
    bucket, keys = s3_corpus(moto_s3, tmp_path / "src", 20, seed=101)
    errors = [(503, "SlowDown"), (503, "SlowDown"), (500, "InternalError")]
    with (
        FaultyHttpProxy(moto_s3.endpoint, errors) as proxy,
        counting_scp() as scp,
        workers(redis_server.url, 2, tmp_path, **AWS_ENV),
    ):
        code, out = finish(
            start_run(
                f"s3://{bucket}/archive/",
                *common_args(("127.0.0.1", scp.port), "COUNTING"),
                "--redis-url",
                redis_server.url,
                "--s3-endpoint",
                proxy.endpoint,
                "--s3-region",
                REGION,
                "--batch-files",
                "10",
                env=AWS_ENV,
            ),
            timeout=90,
        )
    assert code == 0, out
    assert proxy.injected == 3, proxy.requests
    ledger = only_job(redis_server.client())
    counts = assert_accounted(ledger, set(scp.stores), set(keys))
    assert counts["stored"] == 20


@pytest.mark.slow
def test_s3_objects_deleted_or_changed_after_planning_fail_with_the_reason(
    tmp_path: Path, redis_server: RedisPeer, moto_s3: MotoS3
) -> None:
    bucket, keys = s3_corpus(moto_s3, tmp_path / "src", 10, seed=102)
    uids = sorted(keys)
    gone, changed = uids[0], uids[1]
    with counting_scp() as scp:
        # Planned with no worker running: the batches wait in the queue.
        proc = start_run(
            f"s3://{bucket}/archive/",
            *common_args(("127.0.0.1", scp.port), "COUNTING"),
            "--redis-url",
            redis_server.url,
            "--s3-endpoint",
            moto_s3.endpoint,
            "--s3-region",
            REGION,
            "--batch-files",
            "5",
            env=AWS_ENV,
            log=tmp_path / "run.log",
        )
        ledger = only_job(redis_server.client())
        wait_until(lambda: queued(redis_server.client()) == 2, 30, "the plan")
        assert ledger.counts()["planned"] == 10
        moto_s3.delete(bucket, keys[gone])
        other = synth.write_corpus(tmp_path / "other", count=1, size="tiny", seed=103)[0]
        moto_s3.put(bucket, keys[changed], other.read_bytes())  # another instance now
        with workers(redis_server.url, 2, tmp_path, **AWS_ENV):
            code, _ = finish(proc, timeout=60)
    out = (tmp_path / "run.log").read_text()
    assert code == 1, out
    counts = assert_accounted(ledger, set(scp.stores), set(uids[2:]))
    assert (counts["stored"], counts["failed"]) == (8, 2)
    failed = {o.sop_instance_uid: o.reason for o in outcomes(ledger) if o.state is State.FAILED}
    assert failed[gone] == f"s3://{bucket}/{keys[gone]} vanished: the object no longer exists"
    assert "changed since it was listed" in failed[changed], failed[changed]
    assert gone not in scp.stores and changed not in scp.stores
