"""Running either front end as a user does, for the behaviour tests of issue 14.

``send("store"|"run", inputs, port, called_ae, tmp_path, *extra)`` runs ``migrator store
--dir INPUTS -R`` or ``migrator run INPUTS`` (embedded Redis and local workers, its own
``--state-dir``) with ``--report X.json`` and returns a ``Result``: exit code, output (stdout
and stderr together, in order), the report (its invariant checked by ``load_report``), the
wall time measured around the subprocess, and the PID of the command's process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.enginehelpers import processes_with_env
from tests.storehelpers import load_report, no_traceback

FRONT_ENDS = ["store", "run"]
#: The variable every process of one command inherits (embedded Redis, workers, children).
MARKER_VARIABLE = "MIGRATOR_TEST_MARKER"


@dataclass
class Result:
    """What a user sees of one command: exit code, output, report, wall time."""

    rc: int
    output: str
    report: dict[str, Any] | None
    seconds: float
    command: list[str] = field(default_factory=list)
    #: PID of the process started (the `run` process: its inline sender's worker name is
    #: ``host:PID``; with a ``prefix`` it is the prefix's process)
    pid: int = 0

    def files(self) -> dict[str, dict[str, Any]]:
        """Report entries by file name (names are unique in every corpus here)."""
        assert self.report is not None, f"no report written\n{self.tail()}"
        return {Path(f["uri"]).name: f for f in self.report["files"]}

    def totals(self) -> dict[str, int]:
        assert self.report is not None, f"no report written\n{self.tail()}"
        return dict(self.report["totals"])

    def tail(self, limit: int = 4000) -> str:
        head = f"$ {' '.join(self.command)}\n(exit {self.rc}, {self.seconds:.1f} s)\n"
        return head + self.output[-limit:]


_calls = itertools.count()


def send(
    front_end: str,
    inputs: Path,
    port: int,
    called_ae: str,
    tmp_path: Path,
    *extra: str | Path,
    run_extra: Sequence[str | Path] = (),
    workers: int = 2,
    timeout: float = 240,
    prefix: Sequence[str] = (),
    sample: Callable[[str], None] | None = None,
    dest: Sequence[str] = (),
    sources: Sequence[str] = (),
) -> Result:
    """Send ``inputs`` (a folder) to 127.0.0.1:``port`` through one front end.

    ``extra`` goes to both front ends, ``run_extra`` only to ``run``. ``prefix`` is put
    before ``python -m migrator`` (a wrapper that measures the command). ``sample(marker)``
    is called every ~0.1 s while the command runs; every process the command starts
    inherits ``MIGRATOR_TEST_MARKER=marker`` (see ``enginehelpers.processes_with_env``).
    Processes still carrying the marker once the command has ended are killed here, by PID,
    so that a broken run cannot hold the machine's two cores for the tests after it.
    ``dest`` replaces the DIMSE destination options (``["--dicomweb", URL]``); ``sources``
    (URIs such as ``dicomweb+http://…``) replace ``inputs`` as what is sent.
    """
    n = next(_calls)
    report = tmp_path / f"report-{front_end}-{n}.json"
    if not dest:
        dest = ["--host", "127.0.0.1", "--port", str(port), "--called-ae", called_ae]
    what = list(sources) or [str(inputs)]
    if front_end == "store":
        args = ["store", *(sources or ["--dir", str(inputs), "-R"]), *dest]
    elif front_end == "run":
        args = [
            "run",
            *what,
            *dest,
            "--state-dir",
            str(tmp_path / f"state-{n}"),
            "--workers",
            str(workers),
            *map(str, run_extra),
        ]
    else:
        raise ValueError(front_end)
    args += [*map(str, extra), "--report", str(report)]
    command = [*prefix, sys.executable, "-m", "migrator", *args]
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER_VARIABLE: marker}
    log = tmp_path / f"output-{front_end}-{n}.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = started + timeout
    while proc.poll() is None:
        if sample is not None:
            sample(marker)
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: `run` stops what it started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            kill_leftovers(marker)
            output = log.read_text(errors="replace")
            raise AssertionError(
                f"`migrator {args[0]}` did not finish in {timeout:.0f} s:\n{output[-4000:]}"
            )
        time.sleep(0.1 if sample is not None else 0.02)
    seconds = time.monotonic() - started
    kill_leftovers(marker)
    output = log.read_text(errors="replace")
    no_traceback(output, f"migrator {args[0]}")
    data = load_report(report) if report.exists() else None
    shown = ["migrator", *args] if not prefix else [*prefix, "migrator", *args]
    return Result(proc.returncode, output, data, seconds, shown, proc.pid)


def kill_leftovers(marker: str, wait: float = 10.0) -> None:
    """Wait up to ``wait`` s for the command's processes to end, then SIGKILL the rest."""
    deadline = time.monotonic() + wait
    while processes_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in processes_with_env(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Problems(list[str]):
    """Failed expectations of one behaviour, reported together with the command's output."""

    def check(self, condition: object, message: str) -> bool:
        if not condition:
            self.append(message)
        return bool(condition)

    def done(self, result: Result) -> None:
        assert not self, "; ".join(self) + "\n\n" + result.tail()


def check_senders(p: Problems, variant: str, result: Result) -> None:
    """Test setup for `run` variants: ``"run"`` must have had the run process send (its
    inline sender; the report's ``worker`` is ``host:PID`` of the run process), any other
    ``"run-…"`` variant (a throttle delay set) only worker processes."""
    if not variant.startswith("run") or result.report is None:
        return
    inline = [
        f for f in result.report["files"] if str(f.get("worker", "")).endswith(f":{result.pid}")
    ]
    if variant == "run":
        p.check(inline, "test setup: the run process sent no file itself")
    else:
        p.check(not inline, f"test setup: the run process sent {len(inline)} files itself")
