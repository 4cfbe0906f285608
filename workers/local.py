"""Local Celery workers for one ``migrator run``: started, found ready, stopped, never orphaned.

``LocalWorkers`` runs one Celery worker process (``workers.launch``) with ``n`` prefork children
on this machine, for a run without a cluster (the embedded Redis of ``migrator.embedded``) or
with ``--workers``. It must take them down again however the run ends; the rules it shares with
the embedded Redis (own session, ``atexit``, parent-death signal, a zombie counts as gone) are
in ``migrator.childproc``; the worker's options are in ``workers.launch``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
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
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from migrator.childproc import (
    EmbeddedStartError,
    group_members,
    log_tail,
    wait_gone,
    with_parent_death_signal,
)
from migrator.errors import ConfigError
from migrator.keys import heartbeat_key

log = logging.getLogger(__name__)

_worker_seq = itertools.count()


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
        echo: bool = False,
    ) -> None:
        if n < 1:
            raise ConfigError(f"local workers: need at least 1 process, got {n}")
        self.broker_url = broker_url
        self.n = n
        self.env = dict(env or {})
        self.loglevel = loglevel
        self.soft_shutdown = soft_shutdown
        self.startup_timeout = startup_timeout
        #: Copy the worker's output to our stderr too (`run -v`: its per-file lines)
        self.echo = echo
        self._tee: threading.Thread | None = None
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
        self._killed = False  # kill() sent SIGKILL: an exit status of -9 is ours, not a failure
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
        return log_tail(self.logfile)

    def command(self) -> list[str]:
        # Not worker_argv's `celery` command line: the same worker (the same options) without
        # importing Celery's CLI, ~0.3 s sooner ready (workers/launch.py).
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
                    with_parent_death_signal(self.command(), self.parent_death_signal),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if self.echo else logf,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    start_new_session=True,
                )
            if self.echo:
                assert self._proc.stdout is not None
                self._tee = threading.Thread(
                    target=_tee,
                    args=(self._proc.stdout, self.logfile),
                    name="worker-log",
                    daemon=True,
                )
                self._tee.start()
            if wait:
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group now, and return without waiting: for workers known
        to be idle (every file has its outcome, nothing is unacked), so that they die while
        the caller reads the ledger. ``stop()`` (also ``__exit__``) then reaps them and waits
        until none is left, as always."""
        if self._proc is None:
            return
        self._killed = True
        # The group id is the main PID, ours until stop() reaps it (see stop()).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

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
            if proc.poll() is None and graceful and not self._killed:
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
            elif (
                proc.poll() is not None
                and proc.returncode != 0
                and not (self._killed or self._keep_log)
            ):
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
            if not wait_gone(lambda: group_members(pgid), 5.0):
                log.warning("worker processes %s did not exit", group_members(pgid))
            if self._tee is not None:  # the pipe is closed once the group is gone
                self._tee.join(timeout=2.0)
                self._tee = None
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


def _tee(pipe: IO[bytes], logfile: Path) -> None:
    """The worker's output into its log file and onto our stderr (`run -v`), as it comes."""
    out = sys.stderr.buffer
    with open(logfile, "ab") as logf:
        fd = pipe.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            logf.write(chunk)
            logf.flush()
            with contextlib.suppress(OSError, ValueError):
                out.write(chunk)
                out.flush()
