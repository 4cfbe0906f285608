"""A migration fleet on one machine: Redis, a PACS, worker hosts and a planner, each in its
own network namespace on one bridge (``tests/fleet/netns.py``).

    with Fleet(tmp_path, hosts=3) as fleet:
        fleet.start_workers(concurrency=2)            # `migrator worker -c 2` on every host
        job = fleet.plan(corpus, "--rate-limit", "200")   # `migrator plan`, from the planner
        fleet.wait_done(job, timeout=60)
        fleet.kill_host("h2")                         # every process of h2 at once
        fleet.partition("h1", "redis") / fleet.heal("h1")
        fleet.link("h3", up=False)
        fleet.pacs_log()                              # what the PACS received (PacsLog)

A worker host runs ``migrator worker`` under ``unshare --uts --pid``: its own hostname
(``fleet-h1``: Celery's node name, the tokens of its batch and association leases say which
host holds them) and its own PID namespace, whose first process takes every other with it
when it is killed — a host lost at once, as a reclaimed spot instance. Everything is torn
down on exit, also when the test failed: every process of every namespace is killed, every
namespace deleted (its links go with it); :meth:`Fleet.leftovers` says what remains.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import redis
from redis.connection import Connection

from migrator.ledger import Ledger
from tests.enginehelpers import processes_with_env
from tests.fleet import netns
from tests.fleet.pacs import AE_TITLE
from tests.fleet.pacslog import PacsLog

#: Environment variable naming the fleet in each of its processes: leftovers are found by it.
FLEET_MARK: Final = "MIGRATOR_TEST_FLEET"
REDIS_PORT: Final = 16379  # in a namespace of its own: no other server can hold it
PACS_PORT: Final = 11104
_REPO: Final = Path(__file__).resolve().parents[2]
_serial = itertools.count()


@dataclass
class Host:
    name: str  # "h1", "redis", "pacs", "planner"
    ns: str  # the network namespace
    address: str
    port: str  # its port on the bridge (in the switch namespace)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Fleet:
    def __init__(self, workdir: Path, *, hosts: int = 3, env: dict[str, str] | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        #: unique to this process and fleet: parallel sessions never share a name
        self.prefix = f"fl{os.getpid()}x{next(_serial)}"
        self.switch = f"{self.prefix}-sw"
        roles = ["redis", "pacs", "planner", *(f"h{i}" for i in range(1, hosts + 1))]
        octets = {"redis": 2, "pacs": 3, "planner": 4}
        self.hosts: dict[str, Host] = {}
        for role in roles:
            octet = octets.get(role) or 10 + int(role[1:])
            self.hosts[role] = Host(
                role, f"{self.prefix}-{role}", f"{netns.SUBNET}.{octet}", f"p-{role}"
            )
        self.workers = [h for h in roles if h.startswith("h")]
        #: environment of every migrator process the fleet starts (MIGRATOR_* timings)
        self.env = {
            **os.environ,
            FLEET_MARK: self.prefix,  # every process the fleet starts inherits it
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
            **(env or {}),
        }
        self.events = self.dir / "pacs-events.txt"
        self._logs: list[Any] = []
        self._clients: list[redis.Redis] = []

    # --- addresses -----------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://{self.hosts['redis'].address}:{REDIS_PORT}/0"

    def destination(self) -> list[str]:
        """`--host/--port/--called-ae` of the fleet's PACS."""
        return [
            "--host",
            self.hosts["pacs"].address,
            "--port",
            str(PACS_PORT),
            "--called-ae",
            AE_TITLE,
        ]

    # --- building and tearing down -------------------------------------------------------

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        netns.remove_stale()
        netns.add_switch(self.switch)
        for host in self.hosts.values():
            netns.add_namespace(host.ns)
            netns.plug(self.switch, host.ns, host.port, host.address)
        redis_dir = self.dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        self._spawn(
            "redis",
            [
                "redis-server",
                "--bind",
                self.hosts["redis"].address,
                "--port",
                str(REDIS_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                str(redis_dir),
            ],
        )
        self._spawn(
            "pacs",
            [
                sys.executable,
                "-m",
                "tests.fleet.pacs",
                self.hosts["pacs"].address,
                str(PACS_PORT),
                str(self.events),
            ],
        )
        planner = self.hosts["planner"].ns
        netns.wait_reachable(planner, self.hosts["redis"].address, REDIS_PORT)
        netns.wait_reachable(planner, self.hosts["pacs"].address, PACS_PORT)

    def stop(self) -> None:
        """Kill every process of every namespace, delete them all (links go with them)."""
        errors = []
        for client in self._clients:
            # A socket made in a namespace keeps the (then nameless) namespace alive.
            client.connection_pool.disconnect()
        self._clients = []
        for name in [*(h.ns for h in self.hosts.values()), self.switch]:
            try:
                netns.delete_namespace(name)
            except netns.NetnsError as exc:
                errors.append(str(exc))
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
        for log in self._logs:
            log.close()
        self._logs = []
        if errors:
            raise netns.NetnsError("; ".join(errors))

    def leftovers(self) -> list[str]:
        """Namespaces and processes of this fleet still there (none after :meth:`stop`)."""
        left = netns.names_with(self.prefix)
        for host in self.hosts.values():
            left += [f"{host.name} pid {p.pid}" for p in host.procs if p.poll() is None]
        left += [f"pid {pid}" for pid in processes_with_env(f"{FLEET_MARK}={self.prefix}\0")]
        return left

    # --- processes -----------------------------------------------------------------------

    def _spawn(self, role: str, argv: list[str], *, uts: bool = False) -> subprocess.Popen[bytes]:
        host = self.hosts[role]
        prefix = ["ip", "netns", "exec", host.ns]
        if uts:
            # Its own hostname and PID namespace: a host, as far as its processes can tell.
            prefix += [
                "unshare",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "sh",
                "-c",
                'hostname "$0" && exec "$@"',
                f"fleet-{role}",
            ]
        log = open(self.dir / f"{role}.log", "ab")  # noqa: SIM115 - closed by stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            [*prefix, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(_REPO),
            start_new_session=True,
        )
        host.procs.append(proc)
        return proc

    def start_workers(self, *hosts: str, concurrency: int = 2, verbose: bool = False) -> None:
        """`migrator worker -c N` on each host (all worker hosts when none is named)."""
        for role in hosts or self.workers:
            argv = [
                sys.executable,
                "-m",
                "migrator",
                "worker",
                "--redis-url",
                self.redis_url,
                "-c",
                str(concurrency),
            ]
            self._spawn(role, [*argv, "-v"] if verbose else argv, uts=True)

    def log(self, role: str) -> str:
        path = self.dir / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def migrator(
        self, *args: str | Path, timeout: float = 120, role: str = "planner"
    ) -> subprocess.CompletedProcess[str]:
        """`migrator ARGS` on the planner host (or ``role``), to its end."""
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.hosts[role].ns,
                sys.executable,
                "-m",
                "migrator",
                *map(str, args),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=str(_REPO),
        )

    def plan(self, source: Path, *options: str) -> str:
        """`migrator plan SOURCE` from the planner host; the job id."""
        proc = self.migrator(
            "plan", source, *self.destination(), "--redis-url", self.redis_url, *options
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    # --- faults --------------------------------------------------------------------------

    def kill_host(self, role: str) -> None:
        """Every process of the host at once: SIGKILL to the first process of its PID
        namespace (the kernel then kills all the others), then to anything left."""
        host = self.hosts[role]
        for proc in host.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)  # `--kill-child`: its PID namespace dies
        netns.kill_all(host.ns)
        for proc in host.procs:
            proc.wait(10)

    def partition(self, role: str, peer: str) -> None:
        """Drop everything between host ``role`` and host ``peer`` (both ways)."""
        netns.drop_between(
            self.switch, f"cut_{role}_{peer}", self.hosts[role].address, self.hosts[peer].address
        )

    def heal(self, role: str) -> None:
        """Undo every partition of host ``role`` made by :meth:`partition`."""
        netns.undo(self.switch, f"cut_{role}_")

    def link(self, role: str, *, up: bool) -> None:
        """The host's bridge port down (the host is cut from everyone) or up."""
        netns.set_port(self.switch, self.hosts[role].port, up)

    # --- what happened -------------------------------------------------------------------

    def pacs_log(self) -> PacsLog:
        return PacsLog.read(self.events)

    def client(self) -> redis.Redis:
        """A client of the fleet's Redis for the test process, connected from the planner
        host (a socket made in its namespace)."""
        ns = self.hosts["planner"].ns

        class _InNamespace(Connection):
            def _connect(self) -> Any:
                return netns.run_in(ns, lambda: Connection._connect(self))

        pool = redis.ConnectionPool(
            connection_class=_InNamespace,
            host=self.hosts["redis"].address,
            port=REDIS_PORT,
            socket_connect_timeout=5,
        )
        client = redis.Redis(connection_pool=pool)
        self._clients.append(client)
        return client

    def ledger(self, job: str) -> Ledger:
        return Ledger(self.client(), job)

    def wait_done(self, ledger: Ledger, timeout: float) -> float:
        """Until nothing is in flight; the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            counts = ledger.counts()
            if counts["planned"] and counts["in_flight"] == 0:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise AssertionError(f"job not done after {timeout} s: {counts}\n{self.tails()}")
            time.sleep(0.1)

    def tails(self, lines: int = 15) -> str:
        out = []
        for role in self.hosts:
            text = self.log(role).splitlines()[-lines:]
            if text:
                out.append(f"--- {role}.log\n" + "\n".join(text))
        return "\n".join(out)
