"""A loopback TCP proxy that can stall: the half-open connection of TESTING.md §11.

    with TcpProxy("127.0.0.1", pacs_port) as proxy:   # listens on 127.0.0.1:proxy.port
        ...                                           # clients connect to proxy.port
        proxy.blackhole()   # stop forwarding, both ways, on every connection (old and new)
        ...                 # nothing is closed: senders wait for answers that never come
        proxy.resume()      # forward again, including what was held back
        proxy.reset()       # abort every connection now (RST both ways): a peer that died

While blackholed, new connections are still accepted (the kernel completes the handshake
anyway) and connected upstream, but no byte moves: what a firewall that lost its state, a
frozen peer or a pulled cable looks like to the sender. Bytes read during the stall are held,
not dropped, so a resumed stream is intact. A side that closes is passed on only once
forwarding runs again (a half-open connection stays half-open meanwhile).

Threads only: one accept loop, two pumps per connection. Each pump waits at most
``poll`` seconds in ``recv`` so that ``stop()`` ends everything promptly.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType


class TcpProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        poll: float = 0.1,
        tap: Callable[[bytes], None] | None = None,
        down_tap: Callable[[bytes], None] | None = None,
        tap_each: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        #: Called with every chunk the server sends back (to act at a point of a transfer)
        self.down_tap = down_tap
        self.poll = poll
        #: Called with every chunk a client sends upstream (to check what is on the wire)
        self.tap = tap
        #: Called with the connection's number (1, 2...) and every chunk its client sends
        #: upstream, before it is forwarded (tests/peers/assoc_counter.py reads PDUs so)
        self.tap_each = tap_each
        self.port = 0
        #: Connections accepted so far
        self.accepted = 0
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    # -- control ------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))  # the kernel picks the port: no race (§1.1)
        listener.listen(64)
        listener.settimeout(self.poll)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._spawn(self._accept_loop, "tcp-proxy-accept")
        return self

    def blackhole(self) -> None:
        """Stop forwarding in both directions on every connection; close nothing."""
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def reset(self) -> None:
        """Abort every open connection, both sides, with a RST (SO_LINGER 0): what a peer
        that crashed or was restarted looks like. New connections are accepted as before,
        to ``target`` (which a test may change meanwhile: a peer back on another port)."""
        with self._lock:
            sockets, self._sockets = list(self._sockets), []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    @property
    def forwarding(self) -> bool:
        return self._forwarding.is_set()

    def stop(self) -> None:
        self._stopped.set()
        self._forwarding.set()  # wake the pumps so they see the stop
        with self._lock:
            sockets = list(self._sockets)
            if self._listener is not None:
                sockets.append(self._listener)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------

    def _spawn(self, target: Callable[..., object], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by stop()
            self._track(client)
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._track(upstream)
            for sock in (client, upstream):
                sock.settimeout(self.poll)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            n = self.accepted
            done = _Pair(client, upstream)
            tap = self.tap if self.tap_each is None else functools.partial(self._tap_both, n)
            self._spawn(self._pump, f"tcp-proxy-{n}-up", client, upstream, done, tap)
            self._spawn(self._pump, f"tcp-proxy-{n}-down", upstream, client, done, self.down_tap)

    def _tap_both(self, n: int, data: bytes) -> None:
        if self.tap is not None:
            self.tap(data)
        if self.tap_each is not None:
            self.tap_each(n, data)

    def _wait_forwarding(self) -> bool:
        """Block while blackholed; False once stopped."""
        while not self._forwarding.wait(self.poll):
            if self._stopped.is_set():
                return False
        return not self._stopped.is_set()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        pair: _Pair,
        tap: Callable[[bytes], None] | None = None,
    ) -> None:
        try:
            while self._wait_forwarding():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                # Read while forwarding, but the stall may have begun since: hold the bytes.
                if not self._wait_forwarding():
                    return
                if not data:
                    # The source closed: pass the close on (the other pump sees it too).
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if tap is not None:
                    tap(data)
                if not self._send_all(dst, data):
                    return
        finally:
            pair.one_done()

    def _send_all(self, dst: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if not self._wait_forwarding():
                return False
            try:
                sent = dst.send(view)
            except TimeoutError:
                continue  # the receiver is slow: keep trying while forwarding
            except OSError:
                return False
            view = view[sent:]
        return True


class _Pair:
    """The two sockets of one proxied connection, closed when both pumps have ended."""

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self._sockets = (a, b)
        self._left = 2
        self._lock = threading.Lock()

    def one_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
