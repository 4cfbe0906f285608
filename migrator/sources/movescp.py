"""Our own Storage SCP for the old PACS's C-MOVE sub-operations (``--retrieve move``).

A C-MOVE asks the source to send instances to a destination AE that it knows by its own
configuration (host and port: ``--move-ae`` on ``--move-port`` here). The instances then
come on associations the source opens to us: this module listens on that port, on the
project's own upper layer (migrator/dul/acceptor.py, as `migrator scp`), only while a move
runs, and writes each C-STORE's dataset as it arrives (in pieces, never whole in memory)
to its own spool file behind a File Meta group, as a C-GET's sub-operation is written.

An instance is matched to the move by its SOP Instance UID: what the move did not ask for
is refused (0xA900) and not kept. Several senders on one host (a job's worker processes,
`store`'s threads) share the port one move at a time: a lock file per port (``flock``)
and a lock per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

from migrator.dul import acceptor
from migrator.dul.acse import AssociateRQ, ContextPolicy
from migrator.errors import ConfigError
from migrator.scp.incoming import meta_bytes

#: How long the associations of a finished move get to release before they are aborted.
LINGER = 5.0

_process_locks: dict[int, threading.Lock] = {}
_process_locks_guard = threading.Lock()


class _Sink:
    def __init__(self, request: acceptor.StoreRequest, path: str, source_ae: str, done: _Done):
        self._request = request
        self._path = path
        self._done = done
        self._out: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 (closed in finish/discard)
        ts = request.context.transfer_syntax
        self._out.write(meta_bytes(request.sop_class, request.sop_instance, ts, source_ae))

    def write(self, data: memoryview) -> None:
        assert self._out is not None
        self._out.write(data)

    def finish(self) -> acceptor.StoreOutcome:
        assert self._out is not None
        size = self._out.tell()
        self._out.close()
        self._out = None
        self._done(self._request.sop_instance, self._path, size)
        return acceptor.StoreOutcome(0x0000)

    def discard(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        with contextlib.suppress(OSError):
            os.unlink(self._path)


_Done = Callable[[str, str, int], None]


class _Refused:
    """The sink of an instance the move did not ask for: read and dropped."""

    def write(self, data: memoryview) -> None:
        pass

    def finish(self) -> acceptor.StoreOutcome:
        return acceptor.StoreOutcome(0xA900, "not asked for by this move")

    def discard(self) -> None:
        pass


class _Handler:
    def __init__(self, wanted: set[str], new_path: Callable[[], str]) -> None:
        self.wanted = wanted
        self.files: dict[str, tuple[str, int]] = {}
        self.active: set[acceptor.Accepted] = set()
        #: associations the source opened to us during the move
        self.connections = 0
        self._new_path = new_path
        self._lock = threading.Lock()

    def admit(self, assoc: acceptor.Accepted, rq: AssociateRQ) -> tuple[int, int, int] | None:
        return None

    def established(self, assoc: acceptor.Accepted) -> None:
        with self._lock:
            self.active.add(assoc)
            self.connections += 1

    def echo(self, assoc: acceptor.Accepted) -> int:
        return 0x0000

    def store(self, assoc: acceptor.Accepted, request: acceptor.StoreRequest) -> acceptor.StoreSink:
        with self._lock:
            if request.sop_instance not in self.wanted or request.sop_instance in self.files:
                return _Refused()
        return _Sink(request, self._new_path(), assoc.calling_ae, self._done)

    def _done(self, sop: str, path: str, size: int) -> None:
        with self._lock:
            self.files[sop] = (path, size)

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
        bind: str = "",
        max_pdu: int = 16384,
        timeout: float = 60.0,
    ) -> None:
        self.port = port
        self._policy = ContextPolicy({}, default=syntaxes)
        self._new_path = new_path
        self._bind = bind
        self._max_pdu = max_pdu
        self._timeout = timeout

    @contextlib.contextmanager
    def receiving(self, wanted: set[str]) -> Iterator[_Handler]:
        """Listen for the instances of one move: its ``files`` fill as they arrive."""
        from migrator.dul.listener import Listener

        handler = _Handler(wanted, self._new_path)

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


@contextlib.contextmanager
def _port_lock(port: int) -> Iterator[None]:
    with _process_locks_guard:
        local = _process_locks.setdefault(port, threading.Lock())
    with local:
        path = os.path.join(tempfile.gettempdir(), f"migrator-move-{port}.lock")
        with open(path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
