"""Linux network namespaces as "hosts": a switch, links, drop rules, and the clean-up.

One fleet is a set of namespaces whose names start with a prefix unique to the process that
built it (``fl<pid>x<n>``), so parallel test sessions never touch each other's. A *switch*
namespace holds the bridge; every other namespace gets one veth whose far end is a port of
that bridge. Nothing is created in the root namespace: no link, no address, no route — the
addresses (10.231.0.0/24) exist only inside the fleet, and two fleets may use the same ones.

Faults:
- a link down/up: the switch side of a host's veth (the host keeps its address; its packets
  go nowhere, as when a cable is pulled or a switch port dies);
- a partition between two hosts only: nftables drop rules inside one host's namespace for
  the other's address (input and output), so that host ↔ Redis can break while host ↔ PACS
  stays up. Drop, not reject: a real partition answers nothing, TCP keeps retransmitting.

The test process reaches the fleet's addresses through :func:`connect_in`: a socket created
by a thread that has entered the namespace (``setns`` applies to the calling thread only,
and a socket stays in the namespace it was created in).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

T = TypeVar("T")

NETNS_DIR: Final = "/var/run/netns"
CLONE_NEWNET: Final = 0x40000000
SUBNET: Final = "10.231.0"
BRIDGE: Final = "br0"


class NetnsError(RuntimeError):
    """A namespace, link or rule could not be made (the command and its error included)."""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def names_with(prefix: str) -> list[str]:
    """The namespaces whose name starts with ``prefix`` (what a clean-up must leave none of)."""
    out = sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[0].startswith(prefix)]


def pids(name: str) -> list[int]:
    """Every process whose network namespace is ``name``."""
    proc = sh("ip", "netns", "pids", name, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_all(name: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in the namespace, again until none is left (a Celery master
    could fork a new pool child between two kills; a killed one cannot)."""
    deadline = time.monotonic() + timeout
    while True:
        found = pids(name)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {found} in namespace {name} survive SIGKILL")
        time.sleep(0.05)


def add_namespace(name: str) -> None:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def delete_namespace(name: str) -> None:
    """Kill what runs in it, then delete it (its veths go with it)."""
    if not exists(name):
        return
    kill_all(name)
    sh("ip", "netns", "del", name)


def add_switch(switch: str) -> None:
    add_namespace(switch)
    sh("ip", "-n", switch, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", switch, "link", "set", BRIDGE, "up")


def plug(switch: str, host: str, port: str, address: str) -> None:
    """A veth from the bridge (``port`` in the switch) to ``eth0`` in ``host``, addressed."""
    sh("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
       "netns", host)
    sh("ip", "-n", switch, "link", "set", port, "master", BRIDGE)
    sh("ip", "-n", switch, "link", "set", port, "up")
    sh("ip", "-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", host, "link", "set", "eth0", "up")


def set_port(switch: str, port: str, up: bool) -> None:
    sh("ip", "-n", switch, "link", "set", port, "up" if up else "down")


def _nft(host: str, *words: str) -> None:
    sh("ip", "netns", "exec", host, "nft", *words)


def drop_peer(host: str, peer_address: str) -> None:
    """Drop every packet between ``host`` and ``peer_address`` (both directions), in the
    host's own namespace; the host's other links stay up."""
    _nft(host, "add", "table", "inet", "fleet")
    for chain, hook, field in (("in", "input", "saddr"), ("out", "output", "daddr")):
        _nft(host, "add", "chain", "inet", "fleet", chain,
             f"{{ type filter hook {hook} priority 0; policy accept; }}")
        _nft(host, "add", "rule", "inet", "fleet", chain, "ip", field, peer_address, "drop")


def heal(host: str) -> None:
    """Remove every drop rule of :func:`drop_peer` in ``host``."""
    sh("ip", "netns", "exec", host, "nft", "delete", "table", "inet", "fleet", check=False)


def wait_reachable(host: str, address: str, port: int, timeout: float = 10.0) -> None:
    """Until a TCP connection from ``host`` to ``address:port`` succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect_in(host, address, port, timeout=1.0).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise NetnsError(f"{address}:{port} unreachable from {host}: {exc}") from exc
            time.sleep(0.05)


_libc = ctypes.CDLL(None, use_errno=True)


def run_in(name: str, call: Callable[[], T]) -> T:
    """``call()`` in a thread that entered the network namespace ``name``; what it makes
    (sockets) stays in that namespace. Python 3.11 has no os.setns: libc's, through ctypes."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            result.append(call())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def connect_in(name: str, address: str, port: int, timeout: float = 5.0) -> socket.socket:
    return run_in(name, lambda: socket.create_connection((address, port), timeout=timeout))
