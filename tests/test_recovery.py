"""A run stopped uncleanly is resumed at once by running the same command again (issue 15).

Real processes: `migrator run` on the embedded default (its redis-server, its Celery worker
processes), stopped the ways users and machines stop it — kill -9 of the run, of its Redis,
two Ctrl-C, SIGTERM to every process at once (`systemctl stop`) — then run again. The rerun
must finish in seconds (not after the hour-long visibility timeout), every instance must be
at the receiver, and the receiver's duplicates must stay within the documented re-send
window (docs/reliability.md): per sending process, the files in flight plus at most
FLUSH_FILES outcomes not yet written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from migrator import synth
from migrator.transfer.batch import FLUSH_FILES
from migrator.transfer.policy import TICK
from tests.enginehelpers import (
    children,
    common_args,
    finish,
    processes_with_env,
    start_run,
    wait_until,
)
from tests.peers.counting_scp import CountingScp, counting_scp

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

FILES = 1500
WORKERS = 2
LANES = 2  # run's default -j
#: Sending processes of an embedded run: its workers' pool children and run itself.
SENDERS = WORKERS + 1
#: The documented bound on files sent again after a crash (docs/reliability.md).
RESEND_WINDOW = SENDERS * (FLUSH_FILES + LANES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recovery") / "in"
    synth.write_corpus(folder, count=FILES, size="tiny", seed=1501)
    return folder


def _command(corpus: Path, scp: CountingScp, state: Path) -> list[str]:
    return [
        str(corpus),
        *common_args(("127.0.0.1", scp.port), "COUNTING"),
        "--state-dir",
        str(state),
        "--workers",
        str(WORKERS),
        "--batch-files",
        "50",
    ]


def _run_children(marker: str) -> list[int]:
    return processes_with_env(marker)


def _stop_and_resume(
    corpus: Path,
    tmp_path: Path,
    stop: Callable[[subprocess.Popen[str], str], None],
    *,
    first_exit: set[int],
) -> str:
    marker = f"MIGRATOR_TEST_RUN={uuid.uuid4().hex}"
    key, _, value = marker.partition("=")
    state = tmp_path / "state"
    with counting_scp(response_delay=0.002) as scp:
        args = _command(corpus, scp, state)
        proc = start_run(*args, env={key: value}, log=tmp_path / "first.log")
        wait_until(lambda: scp.total >= FILES // 4, 60, "a quarter of the files at the receiver")
        stop(proc, marker)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the stopped run did not end") from None
        first = (tmp_path / "first.log").read_text()
        assert code in first_exit, (code, first)
        # Whatever it left running winds down (parent-death signals, soft shutdown).
        wait_until(lambda: not _run_children(marker), 30, "the first run's processes to end")
        sent_before = scp.total
        assert sent_before < FILES, "the run finished before it was stopped: stop it sooner"
        t0 = time.monotonic()
        again = start_run(*args)
        code, out = finish(again, timeout=120)
        elapsed = time.monotonic() - t0
        assert code == 0, out
        assert elapsed < 30, (elapsed, out)
        assert scp.distinct == FILES, (scp.distinct, out)
        duplicates = scp.total - scp.distinct
        assert duplicates <= RESEND_WINDOW, (duplicates, RESEND_WINDOW, out)
        print(f"rerun {elapsed:.1f} s, {duplicates} files sent twice (window {RESEND_WINDOW})")
        return out


def _kill_run(proc: subprocess.Popen[str], marker: str) -> None:
    os.kill(proc.pid, signal.SIGKILL)


def _kill_redis(proc: subprocess.Popen[str], marker: str) -> None:
    # (redis-server rewrites its environment with its process title: found as run's child)
    redis_pids = [p for p in children(proc.pid) if b"redis-server" in _cmdline(p)]
    assert redis_pids, "no embedded redis-server found"
    for pid in redis_pids:
        os.kill(pid, signal.SIGKILL)


def _two_ctrl_c(proc: subprocess.Popen[str], marker: str) -> None:
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGINT)


def _sigterm_everything(proc: subprocess.Popen[str], marker: str) -> None:
    for pid in _run_children(marker):  # what `systemctl stop` does to a unit's processes
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_kill_9_of_the_run_is_resumed_at_once(corpus: Path, tmp_path: Path) -> None:
    out = _stop_and_resume(corpus, tmp_path, _kill_run, first_exit={-signal.SIGKILL})
    assert "recovered" in out and "batches left by an interrupted run" in out, out


@pytest.mark.slow
def test_kill_9_of_the_embedded_redis_ends_the_run_at_once_and_is_resumed(
    corpus: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    _stop_and_resume(corpus, tmp_path, _kill_redis, first_exit={6})
    first = (tmp_path / "first.log").read_text()
    assert "embedded Redis stopped" in first, first
    assert "Traceback" not in first, first
    assert time.monotonic() - t0 < 90


@pytest.mark.slow
def test_two_ctrl_c_are_resumed_at_once(corpus: Path, tmp_path: Path) -> None:
    _stop_and_resume(corpus, tmp_path, _two_ctrl_c, first_exit={130})


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_run_is_resumed_at_once(
    corpus: Path, tmp_path: Path
) -> None:
    _stop_and_resume(corpus, tmp_path, _sigterm_everything, first_exit={3, 6, 130, -signal.SIGTERM})


def test_the_resend_window_is_what_the_docs_say() -> None:
    """docs/reliability.md states the window with these numbers: keep them in step."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    assert f"{FLUSH_FILES} files" in doc and f"{TICK:g} s" in doc
