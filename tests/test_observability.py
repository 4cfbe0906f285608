"""What an operator watches: Flower, the workers' Prometheus metrics, structured logs.

Real redis-server, real Celery worker processes, real Flower; values are checked against
the ledger and the receiver, not against themselves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from migrator import synth
from migrator.netutil import free_port
from tests.enginehelpers import assert_invariant, common_args, finish, only_job, start_run
from tests.peers.counting_scp import counting_scp
from tests.peers.redis import RedisPeer
from tests.storehelpers import sop_uid
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(180)


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_worker_metrics_match_the_ledger(tmp_path: Path, redis_server: RedisPeer) -> None:
    files = synth.write_corpus(tmp_path / "in", count=60, size="tiny", seed=31)
    port = free_port()
    env = {"MIGRATOR_METRICS_PORT": str(port), "MIGRATOR_METRICS_ADDRESS": "127.0.0.1"}
    with (
        counting_scp() as scp,
        LocalWorkers(redis_server.url, 2, env=env, logfile=str(tmp_path / "w.log")),
    ):
        scp.fail_uids = {sop_uid(p): 0xA900 for p in files[:4]}
        dest = common_args(("127.0.0.1", scp.port), "COUNTING")
        code, out = finish(
            start_run(
                tmp_path / "in", *dest, "--redis-url", redis_server.url, "--rate-limit", "100"
            )
        )
        assert code == 1, out
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    ledger = only_job(redis_server.client())
    counts = assert_invariant(ledger)
    assert _metric(text, "migrator_files_total", state="stored") == counts["stored"] == 56
    assert _metric(text, "migrator_files_total", state="failed") == counts["failed"] == 4
    assert _metric(text, "migrator_bytes_sent_total") == counts["bytes_stored"]
    assert _metric(text, "migrator_cstore_status_total", status="0xA900") == 4
    assert _metric(text, "migrator_cstore_status_total", status="0x0000") == 56
    assert _metric(text, "migrator_cstore_seconds_count") == 60
    assert _metric(text, "migrator_associations_opened_total") >= 1
    # 60 files at 100/s after a burst of 10: about half a second of waiting in total.
    assert 0.1 < _metric(text, "migrator_limiter_wait_seconds_total") < 5


def test_flower_lists_workers_and_batches_behind_basic_auth(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    synth.write_corpus(tmp_path / "in", count=30, size="tiny", seed=32)
    port = free_port()
    env = {**os.environ, "MIGRATOR_FLOWER_BASIC_AUTH": "admin:flower-secret"}
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrator",
            "flower",
            "--redis-url",
            redis_server.url,
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "flower.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/healthcheck")
        with (
            counting_scp() as scp,
            LocalWorkers(redis_server.url, 1, logfile=str(tmp_path / "w.log")) as local,
        ):
            dest = common_args(("127.0.0.1", scp.port), "COUNTING")
            code, out = finish(
                start_run(
                    tmp_path / "in", *dest, "--redis-url", redis_server.url, "--batch-files", "10"
                )
            )
            assert code == 0, out
            auth = ("admin", "flower-secret")
            assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
            deadline = time.monotonic() + 20
            while True:
                workers = requests.get(f"{base}/api/workers?refresh=1", auth=auth, timeout=10)
                tasks = requests.get(f"{base}/api/tasks", auth=auth, timeout=10).json()
                done = [t for t in tasks.values() if t["name"] == "migrator.store_batch"]
                # Both, or the deadline: on a busy machine a worker's reply can miss one poll.
                listed = workers.status_code == 200 and local.hostname in workers.json()
                if (len(done) >= 3 and listed) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert workers.status_code == 200
            assert local.hostname in workers.json()
        job = only_job(redis_server.client()).job_id
        assert len(done) == 3
        assert {t["uuid"] for t in done} == {f"{job}:b{n:07d}" for n in (1, 2, 3)}
    finally:
        flower.terminate()
        flower.wait(10)
    assert "flower-secret" not in (tmp_path / "flower.log").read_text()


def test_json_logs_one_line_per_batch_and_no_patient_data(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    synth.write_corpus(tmp_path / "in", count=40, size="tiny", seed=33)
    log = tmp_path / "w.log"
    env = {"MIGRATOR_LOG_FORMAT": "json"}
    with (
        counting_scp() as scp,
        LocalWorkers(redis_server.url, 2, env=env, loglevel="INFO", logfile=str(log)),
    ):
        dest = common_args(("127.0.0.1", scp.port), "COUNTING")
        code, out = finish(
            start_run(
                tmp_path / "in", *dest, "--redis-url", redis_server.url, "--batch-files", "10"
            )
        )
        assert code == 0, out
        time.sleep(0.5)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    batches = [r for r in records if r["logger"] == "workers.tasks" and "stored" in r]
    assert len(batches) == 4 and sum(r["stored"] for r in batches) == 40
    assert all(r["level"] == "INFO" and r["job"] for r in batches)
    # Per-file lines are DEBUG only; patient names and IDs never reach the log.
    text = log.read_text()
    assert not re.search(r"\d{6}\.dcm", text)
    assert "SYNTH" not in text and "^" not in text
