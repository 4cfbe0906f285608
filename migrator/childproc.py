"""Child processes that never outlive their owner, and the signals that stop them.

Shared by the embedded Redis (``migrator.embedded``) and the local Celery workers
(``workers.local``) of one ``migrator run`` without a broker. The rules (TESTING.md §1.1, §4, §5):

- Children run in their own session (``start_new_session=True``): Ctrl-C in the terminal reaches
  only the owner, which stops them in order (workers first, then their broker) instead of every
  process getting SIGINT at once.
- Every way out stops them: ``__exit__`` (also on KeyboardInterrupt), ``atexit`` (an exception
  that escaped before ``__exit__`` could run, or a cleanup that was itself interrupted), and on
  Linux a parent-death signal for the direct children (:func:`with_parent_death_signal`: the
  owner was SIGKILLed). SIGTERM and SIGHUP become KeyboardInterrupt through
  :func:`install_signal_handlers`, so they take the same path as Ctrl-C.
- A zombie counts as gone (:func:`pid_alive`), and a process group is watched through /proc
  until none of its members runs (:func:`group_members`, :func:`wait_gone`).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from migrator.errors import MigratorError

#: Characters of a log shown in an error: the end is where the reason is.
_TAIL_CHARS = 4000

# Run by the child between fork and exec of the real program: ask the kernel to signal it when
# the parent dies (PR_SET_PDEATHSIG = 1), so a SIGKILLed ``migrator run`` (OOM killer,
# ``kill -9``) does not leave a Redis or a worker behind: atexit and __exit__ cannot help then.
# A separate interpreter instead of ``preexec_fn``, which may deadlock when the parent has
# threads. If the parent died before prctl took effect, getppid() has changed: exit.
_PDEATHSIG_TRAMPOLINE = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2]), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(70)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


class EmbeddedStartError(MigratorError):
    """The embedded Redis or the local workers did not come up (message has the log tail)."""


def with_parent_death_signal(cmd: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """``cmd`` wrapped so the child gets ``sig`` when we die (Linux, main thread only).

    The kernel sends the signal when the *thread* that forked the child exits, not the process:
    a child started from a short-lived worker thread would be killed when that thread ends.
    Only the main thread lives as long as the process, so other threads start ``cmd`` as is.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return list(cmd)
    exe = shutil.which(cmd[0]) or cmd[0]
    trampoline = [sys.executable, "-I", "-S", "-c", _PDEATHSIG_TRAMPOLINE]
    return [*trampoline, str(os.getpid()), str(int(sig)), exe, *cmd[1:]]


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc/PID/stat, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may itself contain spaces or ")": split after the last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as gone: it holds no socket and no memory, and
    a container whose PID 1 does not reap would otherwise keep it "alive" forever."""
    if Path("/proc/self/stat").exists():
        stat = proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live PIDs in process group ``pgid`` (Linux /proc; empty elsewhere)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def wait_gone(pids: Callable[[], Sequence[int]], timeout: float) -> bool:
    """Poll until ``pids()`` is empty; False on timeout."""
    deadline = time.monotonic() + timeout
    while pids():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def log_tail(path: Path | None) -> str:
    """The end of a child's log, for an error message."""
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return text[-_TAIL_CHARS:].rstrip() or f"({path} is empty)"


def install_signal_handlers(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGHUP),
) -> Callable[[], None]:
    """Make SIGTERM (and SIGHUP: the terminal closed) raise KeyboardInterrupt, like Ctrl-C.

    Python's default for SIGTERM is to die at once, skipping ``__exit__``, ``finally`` and
    ``atexit``: the embedded Redis and the workers would be orphaned. As KeyboardInterrupt,
    the signal unwinds the ``with`` blocks, which stop the workers, then Redis. Only the first
    signal raises; later ones are ignored while that cleanup runs (each stop() is bounded, and
    SIGKILL still works). Call from the main thread; returns a function restoring the handlers.
    """
    previous: dict[signal.Signals, Any] = {}
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")

    for sig in signals:
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def terminate_on_sigterm() -> Callable[[], None]:
    """``install_signal_handlers()`` for SIGTERM and SIGHUP (the name ``migrator run`` uses)."""
    return install_signal_handlers()
