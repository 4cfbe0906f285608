"""Running distributed jobs in tests: real redis-server, real Celery worker processes.

Workers are `workers.local.LocalWorkers` (one Celery worker, N prefork children, its own
process group); the job is started with the `migrator run` CLI in a subprocess, as users do.
Fault tests shorten the visibility timeout so a killed worker's batch comes back within the
test (TESTING.md §5.2 case B, §5.3).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from migrator.ledger import Ledger, list_jobs
from tests.storehelpers import no_traceback

#: Short timings for fault tests: VT 12 s > hard limit 8 s + limiter wait 2 s.
FAST_FAULTS = {
    "MIGRATOR_VISIBILITY_TIMEOUT": "12",
    "MIGRATOR_SOFT_TIME_LIMIT": "7",
    "MIGRATOR_TIME_LIMIT": "8",
    "MIGRATOR_MAX_LIMITER_WAIT": "2",
}


def start_run(
    *args: str | Path, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """`migrator run ...` in the background; its output goes to ``log`` (or a pipe)."""
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed by the child's end
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", "run", *map(str, args)],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"migrator run did not finish in {timeout} s:\n{out}") from None
    no_traceback(out or "", "migrator run")
    return proc.returncode, out or ""


def only_job(client: redis.Redis, timeout: float = 30) -> Ledger:
    """The one job in this Redis, once the run has created it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = list_jobs(client)
        if jobs:
            assert len(jobs) == 1, jobs
            return Ledger(client, jobs[0])
        time.sleep(0.05)
    raise AssertionError("no job appeared in Redis")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_invariant(ledger: Ledger) -> dict[str, int]:
    counts = ledger.counts()
    settled = counts["stored"] + counts["failed"] + counts["skipped"]
    assert counts["in_flight"] == 0, counts
    assert counts["planned"] == settled, counts
    return counts


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the prefork pool of a Celery worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return found


def processes_with_env(marker: str) -> list[int]:
    """PIDs whose environment holds ``marker`` (everything a run started inherits it)."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(entry))
    return found


def common_args(host_port: tuple[str, int], called_ae: str, *extra: str) -> Sequence[str]:
    return ["--host", host_port[0], "--port", str(host_port[1]), "--called-ae", called_ae, *extra]
