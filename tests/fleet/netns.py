"""Linux network namespaces as "hosts": a switch, links, drop rules, and the clean-up.

One fleet is a set of namespaces whose names start with a prefix unique to the process that
built it (``fl<pid>x<n>``), so parallel test sessions never touch each other's. A *switch*
namespace holds the bridge; every other namespace gets one veth whose far end is a port of
that bridge. Nothing is created in the root namespace: no link, no address, no route — the
addresses (10.231.0.0/24) exist only inside the fleet, and two fleets may use the same ones.

Faults:
- a link down/up: the switch side of a host's veth (the host keeps its address; its packets
  go nowhere, as when a cable is pulled or a switch port dies);
- a partition between two hosts only: nftables drop rules on the bridge (in the switch
  namespace) for the pair of addresses, so that host ↔ Redis can break while host ↔ PACS
  stays up. Drop, not reject: a real partition answers nothing, TCP keeps retransmitting.

The test process reaches the fleet's addresses through :func:`connect_in`: a socket created
by a thread that has entered the namespace (``setns`` applies to the calling thread only,
and a socket stays in the namespace it was created in).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
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


def remove_stale() -> None:
    """Delete the namespaces of fleets whose test process is gone (killed before its
    teardown): named ``fl<pid>x<n>-…``, their pid no longer running. A live session's
    fleets are never touched."""
    for name in names_with("fl"):
        match = re.match(r"fl(\d+)x\d+-", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            delete_namespace(name)


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
    sh(
        "ip",
        "-n",
        switch,
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        host,
    )
    sh("ip", "-n", switch, "link", "set", port, "master", BRIDGE)
    sh("ip", "-n", switch, "link", "set", port, "up")
    sh("ip", "-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", host, "link", "set", "eth0", "up")


def set_port(switch: str, port: str, up: bool) -> None:
    sh("ip", "-n", switch, "link", "set", port, "up" if up else "down")


def _nft(ns: str, *words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, "nft", *words, check=check)


def drop_between(switch: str, name: str, a: str, b: str) -> None:
    """Drop every frame between addresses ``a`` and ``b`` (both ways) on the bridge: the
    packets are lost on the wire, as in a real partition, so TCP sees loss and backs off
    (a drop on a host's own output would be reported to its TCP at once). Other traffic of
    both hosts passes. ``name`` identifies the cut for :func:`undo`."""
    _nft(switch, "add", "table", "bridge", name)
    _nft(
        switch,
        "add",
        "chain",
        "bridge",
        name,
        "cut",
        "{ type filter hook forward priority 0; policy accept; }",
    )
    _nft(switch, "add", "rule", "bridge", name, "cut", "ip", "saddr", a, "ip", "daddr", b, "drop")
    _nft(switch, "add", "rule", "bridge", name, "cut", "ip", "saddr", b, "ip", "daddr", a, "drop")


def undo(switch: str, prefix: str) -> None:
    """Remove every cut whose name starts with ``prefix``."""
    for line in _nft(switch, "list", "tables").stdout.splitlines():
        words = line.split()  # "table bridge NAME"
        if len(words) == 3 and words[1] == "bridge" and words[2].startswith(prefix):
            _nft(switch, "delete", "table", "bridge", words[2])


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
