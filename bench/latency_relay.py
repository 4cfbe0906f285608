"""A TCP relay that puts distance between a sender and a receiver on one machine.

    python -m bench.latency_relay --to 127.0.0.1:11112 --delay-ms 10 --mbit 1000
    # prints "listening on 127.0.0.1:PORT", then relays until SIGTERM/SIGINT

Every byte that arrives on one side is written to the other ``--delay-ms`` later (one
way: 10 ms makes a 20 ms round trip), in order. ``--mbit`` caps each direction of the link
(shared by all connections, as one WAN link is): a chunk leaves when the link has sent
what came before it, and arrives after its transmission time plus the delay. Kernel netem
would do this too but needs privileges and a qdisc; this runs anywhere, in user space.

Flow control follows TCP's: when more than ``--buffer`` bytes wait for one connection's
other side, the relay stops reading that connection's sending side (so a receiver that
does not keep up slows the sender down, as a full TCP window would, instead of the relay
swallowing the whole corpus). Each connection pays only the delay, not the relay's
scheduling: delivery times are computed on arrival, then awaited with ``call_at``.

One asyncio loop in its own process, so that the relay's CPU is its own and not the
sender's. ``LatencyRelay`` runs it from a benchmark as a context manager.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from types import TracebackType

BUFFER = 4 * 1024 * 1024


class _Link:
    """One direction of the WAN link: when it is free again."""

    def __init__(self, bits_per_second: float | None) -> None:
        self.bps = bits_per_second
        self.free_at = 0.0

    def departure(self, now: float, size: int) -> float:
        """When the last bit of ``size`` bytes offered at ``now`` has left."""
        if self.bps is None:
            return now
        start = max(now, self.free_at)
        self.free_at = start + size * 8 / self.bps
        return self.free_at


class _Side(asyncio.Protocol):
    """One socket of a relayed connection; forwards what it reads to ``peer``."""

    def __init__(self, relay: _Relay, link: _Link) -> None:
        self.relay = relay
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending = 0  # bytes read here, not yet written to the peer
        self.last_delivery = 0.0
        self.closed = False
        self.counted = False  # a client connection, counted in the relay's open_now
        self.eof_in = False  # its FIN passed on to the peer
        self.eof_out = False  # the peer's FIN written to it
        self._early: list[bytes] = []  # read before the peer existed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
            return
        self._forward(data)

    def attach(self, peer: _Side) -> None:
        self.peer = peer
        for data in self._early:
            self._forward(data)
        self._early.clear()

    def _forward(self, data: bytes) -> None:
        loop = self.relay.loop
        now = loop.time()
        at = self.link.departure(now, len(data)) + self.relay.delay
        at = max(at, self.last_delivery)  # in order, whatever the clock
        self.last_delivery = at
        self.pending += len(data)
        if self.pending > self.relay.buffer and self.transport is not None:
            self.transport.pause_reading()
        loop.call_at(at, self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        self.pending -= len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.write(data)
        if self.pending <= self.relay.buffer // 2 and self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    def eof_received(self) -> bool:
        self._uncount()  # the sender closed it: no longer an association it holds
        # The close travels like data: after everything sent before it.
        at = max(self.relay.loop.time() + self.relay.delay, self.last_delivery)
        self.relay.loop.call_at(at, self._pass_close)
        return True

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.relay.open_now -= 1

    def _pass_close(self) -> None:
        # Half-closes are passed on; a socket closed both ways (it sent its FIN, and the
        # other side's FIN was written to it) is closed, or it would stay open for good.
        self.eof_in = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            try:
                peer.transport.write_eof()
                peer.eof_out = True
                if peer.eof_in:
                    peer.transport.close()
            except (OSError, NotImplementedError):  # already gone: close it
                peer.transport.close()
        if self.eof_out and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._uncount()
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            at = max(self.relay.loop.time() + self.relay.delay, self.last_delivery)
            self.relay.loop.call_at(at, peer.transport.close)


class _Relay:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: tuple[str, int],
        delay: float,
        mbit: float | None,
        buffer: int,
    ) -> None:
        self.loop = loop
        self.target = target
        self.delay = delay
        self.buffer = buffer
        bps = mbit * 1e6 if mbit else None
        self.up, self.down = _Link(bps), _Link(bps)
        self.connections = 0
        self.open_now = 0
        self.most_open = 0  # connections open at once, at most (associations, for DICOM)

    def accept(self) -> _Side:
        side = _Side(self, self.up)
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        side.counted = True
        self.loop.create_task(self._connect(side))
        return side

    async def _connect(self, client: _Side) -> None:
        # The handshake itself crosses the link: one round trip before the first byte.
        await asyncio.sleep(2 * self.delay)
        try:
            _, upstream = await self.loop.create_connection(
                lambda: _Side(self, self.down), *self.target
            )
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.attach(upstream)
        upstream.attach(client)


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    host, _, port = args.to.rpartition(":")
    relay = _Relay(loop, (host, int(port)), args.delay_ms / 1000, args.mbit, args.buffer)
    server = await loop.create_server(relay.accept, "127.0.0.1", args.port, backlog=256)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(f"relayed {relay.connections} connections, at most {relay.most_open} at once", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency_relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--to", required=True, help="HOST:PORT of the receiver")
    parser.add_argument("--port", type=int, default=0, help="where to listen (0: a free port)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    parser.add_argument("--mbit", type=float, default=None, help="each direction's cap")
    parser.add_argument("--buffer", type=int, default=BUFFER, help="bytes held per side")
    asyncio.run(_serve(parser.parse_args(argv)))


class LatencyRelay:
    """``python -m bench.latency_relay`` in a child process, for a benchmark."""

    def __init__(
        self,
        target_port: int,
        delay_ms: float,
        mbit: float | None = None,
        target_host: str = "127.0.0.1",
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "bench.latency_relay",
            "--to",
            f"{target_host}:{target_port}",
            "--delay-ms",
            str(delay_ms),
        ]
        if mbit:
            self.argv += ["--mbit", str(mbit)]
        self.port = 0
        self.most_open: int | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LatencyRelay:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("listening on"):
            self._proc.kill()
            raise RuntimeError(f"the latency relay did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop it; ``most_open`` is then the most connections it had open at once."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return
        m = re.search(r"at most (\d+) at once", out or "")
        self.most_open = int(m.group(1)) if m else None


if __name__ == "__main__":
    main()
