"""Run one sender and measure it: wall time, and CPU time and peak RSS of its whole process tree.

The figures come from the kernel's accounting of *reaped* processes: ``wait4`` on the sender
returns its own usage plus that of every descendant it (or its descendants) waited for. Two
things would spoil them if the bench forked the senders itself, so a small helper process does
it (bench/spawner.py, started once per bench, standard library only):

- **Orphans.** A descendant whose parent dies before reaping it is re-parented, normally to
  init, and its usage is lost. ``migrator run`` does exactly that on its way out: it stops the
  idle Celery worker with ``SIGKILL`` to the worker's process group, so the prefork pool
  children, which did the sending, die together with the main worker process that would have
  reaped them (measured: ~0.3 CPU-s for 1000 tiny files missing). The helper is a *child
  subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``): orphans come to it, and it reaps them after
  the sender exits and adds their usage.
- **Inherited peak RSS.** A process's ``ru_maxrss`` starts at the RSS of the process it was
  forked from (exec keeps the old image's peak): forked by the bench (~55 MB of Python), even
  DCMTK would read 55 MB. Forked by the ~10 MB helper, a reading is at least ~10 MB, below
  any sender's own.

- CPU seconds = user + system time of the sender and all its descendants.
- Peak RSS = the largest ``ru_maxrss`` among them: the peak of the *largest single process* in
  the tree, not of their sum (the kernel keeps no peak of a sum).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPAWNER = Path(__file__).resolve().parent / "spawner.py"


class SetupError(RuntimeError):
    """The bench cannot run at all (receiver, corpus or a required tool)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def sender_env() -> dict[str, str]:
    """The environment of every sender and the receiver.

    ``TCP_NODELAY=1`` makes DCMTK disable Nagle's algorithm (TESTING.md §1.2: otherwise 40–90 ms
    per C-STORE on loopback); the Python senders ignore it. ``MIGRATOR_*`` variables are
    dropped because ``migrator`` reads its options from them (a stray ``MIGRATOR_RATE_LIMIT``
    would silently throttle it, a ``MIGRATOR_REDIS_URL`` would send ``migrator run`` to another
    Redis, a ``MIGRATOR_STATE_DIR`` would resume an old job).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["TCP_NODELAY"] = "1"
    return env


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal the process group we created for ``proc`` (it and its children, nothing else)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM the process group of ``proc``, wait up to ``timeout``, then SIGKILL it; and
    SIGKILL what is left of the group (children that were mid-work)."""
    kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL)
        proc.wait()
    kill_group(proc, signal.SIGKILL)


@dataclass
class ProcResult:
    rc: int | None  # None: killed after the timeout
    seconds: float
    output: str  # stdout and stderr merged
    started_at: float = 0.0  # time.time() at launch
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    maxrss_kb: int = 0
    orphans: int = 0  # descendants re-parented to us and reaped here (their usage is included)
    left_running: int = 0  # of those, still running after the sender exited: killed

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


class Spawner:
    """The helper process that runs every sender (bench/spawner.py); one per bench."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.subreaper = False

    def start(self) -> Spawner:
        # -I -S: no site-packages, no environment: the helper stays small (see above).
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SPAWNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the bench, which stops it in order
        )
        self.subreaper = bool(self._reply().get("subreaper"))
        return self

    def _reply(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise SetupError(f"bench/spawner.py exited ({self._proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, argv: Sequence[str], env: dict[str, str], timeout: float) -> ProcResult:
        """Run ``argv`` to completion: wall time, exit code, output, its tree's CPU and RSS.

        The clock runs from starting the process to its exit, so it includes process start-up:
        that is what a user of each tool pays per invocation (the start-up probe shows how
        much). The sender runs in its own session; a timeout kills it and what it forked.
        """
        assert self._proc is not None and self._proc.stdin is not None
        with tempfile.NamedTemporaryFile(prefix="sender-", suffix=".log") as out:
            request = {"argv": list(argv), "env": env, "timeout": timeout, "out": out.name}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = self._reply()
            text = Path(out.name).read_bytes().decode("utf-8", "replace")
        if reply["error"]:
            return ProcResult(127, 0.0, reply["error"])
        return ProcResult(
            reply["rc"],
            reply["seconds"],
            text,
            reply["started_at"],
            reply["cpu_user_s"],
            reply["cpu_sys_s"],
            reply["maxrss_kb"],
            reply["orphans"],
            reply["left_running"],
        )

    def stop(self) -> None:
        """End of input when idle; SIGTERM (it kills a running sender first) when not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Spawner:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
