"""Our own Storage SCP for the old PACS's C-MOVE sub-operations (``--retrieve move``).

A C-MOVE asks the source to send instances to a destination AE that it knows by its own
configuration (host and port: ``--move-ae`` on ``--move-port`` here). The instances then
come on associations the source opens to us: this module listens on that port, on the
project's own upper layer (migrator/dul/acceptor.py, as `migrator scp`), only while a move
runs, and keeps each C-STORE's dataset behind a File Meta group as a C-GET's sub-operation
is kept: a small instance in memory (migrator/sources/held.py: within the source's bound),
a larger one written to its own spool file as it arrives (in pieces, never whole in
memory).

An instance is matched to the move by its SOP Instance UID: what the move did not ask for,
or what already came (or is coming on another association), is refused (0xA900) and not
kept; one that cannot be written to our spool (a full disk) is answered 0xA700 and said as
our own disk's fault. What finishes after the move ended (a sink the abort did not stop
in time) is unlinked, not left in the spool. Several senders on one host (a job's worker
processes, `store`'s threads) share the port one move at a time: a lock file per user and
port (``flock``) and a lock per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

from migrator.dul import acceptor
from migrator.dul.acse import AssociateRQ, ContextPolicy
from migrator.errors import ConfigError
from migrator.scp.incoming import meta_bytes
from migrator.sources.held import MEMORY_ITEM, HeldFiles, Kept
from migrator.sources.retrieve import unwritable

#: How long the associations of a finished move get to release before they are aborted.
LINGER = 5.0

_process_locks: dict[int, threading.Lock] = {}
_process_locks_guard = threading.Lock()


class _Sink:
    """One instance of the move: kept in memory while it is small (when ``to`` may keep
    instances in memory), else written to its spool file as it arrives."""

    def __init__(self, request: acceptor.StoreRequest, source_ae: str, to: _Handler):
        self._request = request
        self._to = to
        self._path = ""
        self._out: IO[bytes] | None = None
        self._error: OSError | None = None
        ts = request.context.transfer_syntax
        meta = meta_bytes(request.sop_class, request.sop_instance, ts, source_ae)
        self._buf: bytearray | None = bytearray(meta) if to.in_memory else None
        if self._buf is None:
            self._spill(memoryview(meta))  # (an error: read and dropped, 0xA700 at the end)

    def write(self, data: memoryview) -> None:
        buf = self._buf
        if buf is not None:
            if len(buf) + len(data) <= MEMORY_ITEM:
                buf += data
                return
            self._buf = None
            self._spill(memoryview(buf))
        if self._out is None:
            return  # a write failed: the rest is read and dropped
        try:
            self._out.write(data)
        except OSError as exc:  # our disk (full): the instance is answered 0xA700
            self._error = exc
            self._close()

    def _spill(self, head: memoryview) -> None:
        """From here on, to a spool file (opened now) that begins with ``head``."""
        try:
            self._path = self._to.new_path()
            self._out = open(self._path, "wb")  # noqa: SIM115 (closed in finish/discard)
            self._out.write(head)
        except OSError as exc:
            self._error = exc
            self._close()

    def finish(self) -> acceptor.StoreOutcome:
        sop = self._request.sop_instance
        buf, self._buf = self._buf, None
        if buf is not None:
            if self._to.reserve(len(buf)):
                self._to.done(sop, bytes(buf), len(buf))
                return acceptor.StoreOutcome(0x0000)
            self._spill(memoryview(buf))  # no room in memory: a spool file after all
        size = 0
        if self._out is not None:
            try:
                size = self._out.tell()
                self._out.close()
            except OSError as exc:  # the last buffered bytes could not be written
                self._error = exc
            self._out = None
        if self._error is not None:
            self._close()
            self._to.unwritten(sop, self._path, self._error)
            return acceptor.StoreOutcome(0xA700, "cannot write it here (out of resources)")
        self._to.done(sop, self._path, size)
        return acceptor.StoreOutcome(0x0000)

    def discard(self) -> None:
        self._buf = None
        self._close()
        self._to.gone(self._request.sop_instance)

    def _close(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        if self._path:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


class _Refused:
    """The sink of an instance not kept: read and dropped."""

    def __init__(self, status: int = 0xA900, why: str = "not asked for by this move") -> None:
        self._outcome = acceptor.StoreOutcome(status, why)

    def write(self, data: memoryview) -> None:
        pass

    def finish(self) -> acceptor.StoreOutcome:
        return self._outcome

    def discard(self) -> None:
        pass


class _Handler:
    def __init__(
        self, wanted: set[str], new_path: Callable[[], str], held: HeldFiles | None = None
    ) -> None:
        self.wanted = wanted
        #: what came: a spool file's path or (small, ``held`` given) the instance's bytes
        self.files: dict[str, tuple[Kept, int]] = {}
        #: being written, on whichever association: a second copy of one is refused
        self.in_flight: set[str] = set()
        self.active: set[acceptor.Accepted] = set()
        #: associations the source opened to us during the move
        self.connections = 0
        #: why an instance that came could not be written to our spool (our disk)
        self.local_error: str | None = None
        #: the move ended: what finishes now is unlinked, not kept
        self.closed = False
        self.new_path = new_path
        self._held = held
        self._lock = threading.Lock()

    @property
    def in_memory(self) -> bool:
        """Whether small instances may be kept in memory (within ``held``'s bound)."""
        return self._held is not None

    def reserve(self, size: int) -> bool:
        return self._held is not None and self._held.reserve(size)

    def discard(self, kept: Kept) -> None:
        if self._held is not None:
            self._held.discard(kept)
        elif isinstance(kept, str):
            with contextlib.suppress(OSError):
                os.unlink(kept)

    def admit(self, assoc: acceptor.Accepted, rq: AssociateRQ) -> tuple[int, int, int] | None:
        return None

    def established(self, assoc: acceptor.Accepted) -> None:
        with self._lock:
            self.active.add(assoc)
            self.connections += 1

    def echo(self, assoc: acceptor.Accepted) -> int:
        return 0x0000

    def store(self, assoc: acceptor.Accepted, request: acceptor.StoreRequest) -> acceptor.StoreSink:
        sop = request.sop_instance
        with self._lock:
            if sop not in self.wanted or sop in self.files or sop in self.in_flight or self.closed:
                return _Refused()
            self.in_flight.add(sop)
        return _Sink(request, assoc.calling_ae, self)

    def done(self, sop: str, kept: Kept, size: int) -> None:
        with self._lock:
            self.in_flight.discard(sop)
            if not self.closed:
                self.files[sop] = (kept, size)
                return
        self.discard(kept)  # after the move: nobody will take it

    def unwritten(self, sop: str, path: str, exc: OSError) -> None:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with self._lock:
            self.in_flight.discard(sop)
            self.local_error = unwritable(os.path.dirname(path) or "the spool", exc)

    def gone(self, sop: str) -> None:
        with self._lock:
            self.in_flight.discard(sop)

    def reached(self) -> bool:
        """Whether the source opened an association to us during the move."""
        return self.connections > 0

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def received_files(self) -> dict[str, tuple[Kept, int]]:
        """What came, copied under the lock (a sink may still be finishing)."""
        with self._lock:
            return dict(self.files)

    def ended(self, assoc: acceptor.Accepted, how: acceptor.End, why: str) -> None:
        with self._lock:
            self.active.discard(assoc)


class MoveReceiver:
    """Listens on ``port`` while ``receiving`` is open (see the module's docstring)."""

    def __init__(
        self,
        port: int,
        syntaxes: tuple[str, ...],
        new_path: Callable[[], str],
        *,
        held: HeldFiles | None = None,
        bind: str = "",
        max_pdu: int = 16384,
        timeout: float = 60.0,
    ) -> None:
        """``new_path``: a new spool file; ``held``: where small instances may be kept in
        memory instead (None: every instance to a spool file)."""
        self.port = port
        self._policy = ContextPolicy({}, default=syntaxes)
        self._new_path = new_path
        self._held = held
        self._bind = bind
        self._max_pdu = max_pdu
        self._timeout = timeout

    @contextlib.contextmanager
    def receiving(self, wanted: set[str]) -> Iterator[_Handler]:
        """Listen for the instances of one move: its ``files`` fill as they arrive."""
        from migrator.dul.listener import Listener

        handler = _Handler(wanted, self._new_path, self._held)

        def connection(sock: socket.socket, address: tuple[str, int], _: object) -> None:
            now = time.monotonic()
            settings = acceptor.Settings(
                policy=self._policy,
                max_pdu=self._max_pdu,
                handshake_deadline=now + self._timeout,
                stall_timeout=self._timeout,
                idle_timeout=self._timeout,
            )
            acceptor.serve(acceptor.Accepted(sock, address[0], address[1]), handler, settings)

        with _port_lock(self.port):
            try:
                listener = Listener(self._bind, self.port, connection)
            except OSError as exc:
                raise ConfigError(
                    f"--move-port {self.port}: cannot listen for the C-MOVE's instances "
                    f"({exc.strerror or exc}); give a free port, registered at the source"
                ) from None
            listener.start()
            try:
                yield handler
            finally:
                listener.stop()
                # The source releases its associations after the move's final answer.
                listener.join(LINGER)
                for assoc in list(handler.active):
                    assoc.abort()
                listener.join(1.0)
                handler.close()


#: Where the move port's lock files are: one directory for every process on the host.
LOCK_DIR = "/tmp"


@contextlib.contextmanager
def _port_lock(port: int) -> Iterator[None]:
    with _process_locks_guard:
        local = _process_locks.setdefault(port, threading.Lock())
    with local:
        # Not tempfile.gettempdir(): `run` gives its local workers a private TMPDIR, and
        # its own sender and the workers must find the same lock (seen: the port already
        # in use for every instance when they moved at the same time).
        # Per user: a lock file another OS user created first cannot be opened here (Debian's
        # fs.protected_regular refuses it even at mode 0666). Two users' processes then do
        # not exclude each other on one port, but they could not both listen on it anyway:
        # the second's bind fails (EADDRINUSE), said as a busy --move-port.
        path = os.path.join(LOCK_DIR, f"migrator-move-{os.getuid()}-{port}.lock")
        try:
            f = open(path, "a+b")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ConfigError(
                f"--move-port {port}: cannot open the lock file {path} "
                f"({exc.strerror or exc}); remove it, or give another port"
            ) from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
