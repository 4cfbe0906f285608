"""Runs the bench's senders one at a time and reports wall time, CPU and peak RSS of each tree.

Started once per bench by ``bench/measure.py`` (``Spawner``) as ``python -I -S spawner.py``:
standard library only, no ``bench`` or ``migrator`` imports, so that it stays a ~10 MB process.
That matters because a process's ``ru_maxrss`` starts at the RSS of the process it was forked
from (the fork copies the page tables, and exec keeps the old image's peak), so a sender forked
by the bench itself (~55 MB of Python) would never read below that; forked from here, it reads
at least ~10 MB, less than any sender's own (DCMTK storescu: ~13 MB).

It is also the sender's *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``): descendants
whose parent exits without reaping them (``migrator run`` SIGKILLs its idle worker's process
group, pool children included) are re-parented here instead of to init, reaped after the
sender exits, and their usage added. Nothing else is a child of this process, so every child
left after the sender is reaped is one of those orphans. One still running a second after the
sender exited is killed and counted in ``left_running``.

Protocol: a line ``{"ready": true, "subreaper": BOOL}`` at start, then per request line
``{"argv": [...], "env": {...}, "timeout": S, "out": PATH}`` one response line with ``rc``
(null after a timeout), ``seconds``, ``started_at``, ``cpu_user_s``, ``cpu_sys_s``,
``maxrss_kb``, ``orphans``, ``left_running`` and ``error`` (the sender could not be started).
Exits at end of input; on SIGTERM it kills the running sender's process group first.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_GRACE_S = 1.0
_current: dict[str, Any] = {"pid": 0, "timed_out": False}


def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def on_alarm(_signum: int, _frame: object) -> None:
    if _current["pid"]:
        _current["timed_out"] = True
        kill_group(_current["pid"])


def on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def children() -> list[int]:
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2 :].split()[1]) == me:
            found.append(int(name))
    return found


def reap_orphans(resp: dict[str, Any]) -> None:
    deadline = time.monotonic() + ORPHAN_GRACE_S
    killed: set[int] = set()
    while True:
        try:
            pid, _, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no child left
        if pid:
            resp["orphans"] += 1
            resp["cpu_user_s"] += usage.ru_utime
            resp["cpu_sys_s"] += usage.ru_stime
            resp["maxrss_kb"] = max(resp["maxrss_kb"], usage.ru_maxrss)
            continue
        if time.monotonic() >= deadline:
            for child in set(children()) - killed:  # our children: PIDs not reusable yet
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
                killed.add(child)
        time.sleep(0.01)
    resp["left_running"] = len(killed)


def run(req: dict[str, Any]) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "rc": None,
        "seconds": 0.0,
        "started_at": 0.0,
        "cpu_user_s": 0.0,
        "cpu_sys_s": 0.0,
        "maxrss_kb": 0,
        "orphans": 0,
        "left_running": 0,
        "error": None,
    }
    out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, out, 2),
        ]
        resp["started_at"] = time.time()
        t0 = time.perf_counter()
        # Its own session: a timeout kills the sender with everything it forked.
        pid = os.posix_spawnp(
            req["argv"][0], req["argv"], req["env"], file_actions=actions, setsid=True
        )
    except OSError as exc:
        resp["error"] = f"cannot start {req['argv'][0]}: {exc}"
        return resp
    finally:
        os.close(out)
    _current.update(pid=pid, timed_out=False)
    signal.setitimer(signal.ITIMER_REAL, req["timeout"])
    try:
        # Wait for the exit without reaping it (WNOWAIT): until it is reaped, its PID (the
        # process group the timeout kills) cannot be reused.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        resp["seconds"] = time.perf_counter() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _current["pid"] = 0
        if sys.exc_info()[0] is not None:  # SIGTERM: leave no sender behind
            kill_group(pid)
            os.waitpid(pid, 0)
    _, status, usage = os.wait4(pid, 0)
    resp["rc"] = None if _current["timed_out"] else os.waitstatus_to_exitcode(status)
    resp["cpu_user_s"] = usage.ru_utime
    resp["cpu_sys_s"] = usage.ru_stime
    resp["maxrss_kb"] = usage.ru_maxrss
    reap_orphans(resp)
    return resp


def main() -> None:
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(json.dumps({"ready": True, "subreaper": become_subreaper()}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
