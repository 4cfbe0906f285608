"""`migrator scp --processes N`: N receiving processes on one listening socket.

One Python process receives on about one core (its threads share the GIL), where
``storescp --fork`` gives each association a process of its own. With ``--processes N``
the command binds the port, then forks N receiving processes before it starts any thread;
each runs the same ``StorageSCP`` on the shared socket, and the kernel hands each new
connection to one of them. What must hold for the receiver as a whole lives in memory the
processes share:

* the guard's counts (``--max-conns``, ``--max-conns-per-address``, connections waiting
  for their association request, per address) under one lock shared by the processes:
  the limits are the receiver's, not each process's (``SharedBook``);
* each process's statistics, in cells of its own that the parent adds up for the
  statistics line and the summary.

``--fail-status`` and ``--fail-first`` count C-STOREs across the whole receiver: they need
``--processes 1`` (``--abort-after`` counts per association, ``--response-delay`` and
``--refuse`` count nothing).
The parent only supervises: banner, statistics, and on SIGTERM or Ctrl-C it stops the
children (each aborts the associations it still holds) and prints the summary. A child
that dies on its own (killed) stops the receiver with exit status 1: the slots it held
cannot be given back, and a receiver that silently lost a process would refuse senders
for ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from typing import Any

from migrator.errors import ConfigError
from migrator.scp.network import ListenError, listen_message
from migrator.scp.server import ScpConfig, StorageSCP, context_policy
from migrator.scp.stats import FIELDS, ScpStats

log = logging.getLogger("migrator.scp")

#: Addresses the shared book tells apart at once (slots with no count left are reused).
SLOTS = 1024
_CELLS = 5
_KEY = struct.Struct("<qq")
#: How long the parent waits for the shared lock: a child killed while holding it (the
#: OOM killer) leaves it taken for good, and the parent must still stop and say so.
_LOCK_WAIT = 2.0
_EVENTS = ("expired", "closed_at_accept")
#: Seconds the parent waits for its children to stop before killing them.
_STOP_SECONDS = 5.0
#: How often the parent looks at its children between statistics lines.
_WATCH = 0.5


class SharedBook:
    """``guards.Book`` in shared memory. Per address, a slot of five cells: used, the
    address's 128-bit BLAKE2 digest (two cells: addresses are told apart by the digest,
    which no peer can make collide, not by a hash a peer could aim at another's slot),
    its pending connections, its associations; found by linear probing from the digest.
    Then the totals and the event counters. Made before the fork, used by every process.

    A slot keeps its address while anything is counted on it, so a connection's counts
    stay in one slot from accept to close. When every slot counts something, a connection
    from one more address is closed at accept (``pending`` says None).
    """

    def __init__(self, ctx: Any) -> None:
        self.lock = ctx.Lock()
        self._cells = ctx.RawArray("q", _CELLS * SLOTS + 2 + len(_EVENTS))
        self._totals = _CELLS * SLOTS

    def _slot(self, host: str, make: bool) -> int:
        """The first cell of ``host``'s slot; -1 when it has none (and ``make`` is false,
        or no slot is free)."""
        cells = self._cells
        high: int
        low: int
        high, low = _KEY.unpack(hashlib.blake2b(host.encode(), digest_size=16).digest())
        i = (high & 0x7FFFFFFF) % SLOTS
        free = -1
        for _ in range(SLOTS):
            at = _CELLS * i
            if not cells[at]:  # never used: the address is not further on
                if free < 0:
                    free = at
                break
            if cells[at + 1] == high and cells[at + 2] == low:
                return int(at)
            if free < 0 and cells[at + 3] == 0 and cells[at + 4] == 0:
                free = at  # used before, nothing counted now: its address is gone
            i = (i + 1) % SLOTS
        if not make or free < 0:
            return -1
        cells[free], cells[free + 1], cells[free + 2] = 1, high, low
        return int(free)

    def pending(self, host: str) -> int | None:
        at = self._slot(host, make=True)
        return None if at < 0 else int(self._cells[at + 3])

    def associated(self, host: str) -> int:
        at = self._slot(host, make=False)
        return 0 if at < 0 else int(self._cells[at + 4])

    def totals(self) -> tuple[int, int]:
        return int(self._cells[self._totals]), int(self._cells[self._totals + 1])

    def add(self, host: str, pending: int, associated: int) -> None:
        at, cells = self._slot(host, make=True), self._cells
        if at >= 0:  # always: the connection's slot was made at accept and kept since
            cells[at + 3] += pending
            cells[at + 4] += associated
        cells[self._totals] += pending
        cells[self._totals + 1] += associated

    def bump(self, event: str) -> None:
        self._cells[self._totals + 2 + _EVENTS.index(event)] += 1

    def events(self, event: str) -> int:
        return int(self._cells[self._totals + 2 + _EVENTS.index(event)])


class Receivers:
    """``count`` receiving processes behind one port; the same lifecycle as a
    ``StorageSCP`` for the command (start, log_banner, serve_until, stop, summary_lines)."""

    def __init__(self, config: ScpConfig, count: int) -> None:
        faults = config.faults
        if faults.fail_status is not None or faults.fail_first is not None:
            raise ConfigError(
                "--fail-status and --fail-first count C-STOREs across the whole receiver: "
                "use them with --processes 1"
            )
        self.config = config
        self.count = count
        ctx = multiprocessing.get_context("fork")
        self.book = SharedBook(ctx)
        self._cells = [ctx.RawArray("q", len(FIELDS)) for _ in range(count)]
        # Loads the TLS files now (a ConfigError before anything listens), writes the
        # banner, and reads the shared book through its guard; it never listens itself.
        self._probe = StorageSCP(config, book=self.book)
        self._sock: socket.socket | None = None
        self._children: dict[int, int] = {}  # pid -> index of its statistics cells
        #: why the receiver stopped on its own ("" while it runs as asked)
        self.failed = ""

    def _stats(self) -> ScpStats:
        return ScpStats.sum_of([ScpStats(cells) for cells in self._cells])

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        cfg = self.config
        try:
            sock = socket.create_server((cfg.bind, cfg.port), backlog=128, reuse_port=False)
        except OSError as exc:
            raise ListenError(listen_message(cfg.bind, cfg.port, exc)) from exc
        self._sock = sock
        context_policy(cfg)  # pynetdicom's lists imported once, before the fork
        for index in range(self.count):
            self._fork(index)
        host, port = sock.getsockname()[:2]
        # Only the children accept: the parent's copy closed, so that once they are gone
        # no connection waits in the queue for nobody.
        sock.close()
        self._sock = None
        return str(host), int(port)

    def _fork(self, index: int) -> None:
        assert self._sock is not None
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 1
            try:
                code = _receive(self.config, self._sock, self.book, ScpStats(self._cells[index]))
            except BaseException:
                log.exception("receiving process %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        self._children[pid] = index

    def log_banner(self, host: str, port: int) -> None:
        self._probe.log_banner(host, port)
        log.info(
            "%d receiving processes (pids %s) share the port",
            self.count,
            ", ".join(str(pid) for pid in self._children),
        )

    def serve_until(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set or a child dies, logging statistics every
        ``stats_interval``."""
        last_line = time.monotonic()
        while not stop.wait(min(_WATCH, self.config.stats_interval)):
            if self._reap():
                return
            now = time.monotonic()
            if now - last_line >= self.config.stats_interval:
                last_line = now
                totals = self._probe.guard.counts(wait=_LOCK_WAIT)
                active = sum(totals) if totals is not None else None
                log.info("statistics: %s", self._stats().as_line(active))

    def _reap(self) -> bool:
        """True when a child ended on its own (the receiver must stop)."""
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return False
            self._children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if code == 0:
                # It was told to stop (Ctrl-C and systemd's stop reach every process of
                # the group, perhaps before us): the receiver stops, as asked.
                log.info("receiving process %d stopped: stopping the receiver", pid)
                return True
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            self.failed = f"receiving process {pid} ended on its own ({how})"
            log.error("%s: stopping the receiver", self.failed)
            return True
        return False

    def stop(self) -> None:
        """Stop every child (each aborts the associations it holds) and wait for them."""
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_SECONDS
        while self._children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self._children.pop(pid, None)
            else:
                time.sleep(0.02)
        for pid in list(self._children):
            log.warning("receiving process %d did not stop: killed", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._children.pop(pid, None)

    def summary_lines(self) -> list[str]:
        return [
            *self._stats().summary_lines(),
            self._probe.guard.summary_line(wait=_LOCK_WAIT),
        ]


def _receive(config: ScpConfig, sock: socket.socket, book: SharedBook, stats: ScpStats) -> int:
    """A child's life: receive on ``sock`` until SIGTERM/SIGINT or the parent is gone."""
    parent = os.getppid()
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    scp = StorageSCP(config, book=book, stats=stats)
    scp.start(sock)
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the parent was killed: do not linger
            break
    scp.stop()
    return 0
