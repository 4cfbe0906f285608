"""A real redis-server on a free port, in its own directory (TESTING.md §4.1).

Identity is proven before use: the pidfile's PID must be the process we started **and** the
server must report that PID (`INFO server` → process_id), because `--daemonize yes` exits 0
even when the port was busy and a foreign server would answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from migrator.netutil import free_port


def _running(pid: int) -> bool:
    """Alive and not a zombie: a daemonized redis-server is reaped by PID 1, which in some
    sandboxes takes seconds; a zombie has released its port and files already."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class RedisStartError(RuntimeError):
    pass


class RedisPeer:
    def __init__(
        self,
        workdir: Path | None = None,
        *,
        appendonly: bool = False,
        password: str | None = None,
    ) -> None:
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        #: ``--requirepass`` (the URL and the client then carry it); None: no auth
        self.password = password
        self.port = 0
        self.pid: int | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=False
        )

    def start(self, port: int | None = None) -> RedisPeer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RedisStartError("redis-server not installed (bash scripts/bootstrap.sh)")
        self.port = port or free_port()
        pidfile = self.dir / "redis.pid"
        pidfile.unlink(missing_ok=True)
        cmd = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(self.dir / "redis.log"),
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                self.pid = int(pidfile.read_text().strip())
                try:
                    info = self.client().info("server")
                except redis.ConnectionError:
                    time.sleep(0.02)
                    continue
                if int(info["process_id"]) != self.pid:
                    raise RedisStartError(
                        f"port {self.port} answered by another redis:\n" + self.log()
                    )
                return self
            if "Address already in use" in self.log():
                raise RedisStartError(f"port {self.port} busy:\n{self.log()}")
            time.sleep(0.02)
        raise RedisStartError(f"redis-server not ready:\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, *, save: bool = False) -> None:
        """Stop (SIGTERM; SIGKILL after 5 s). ``save`` keeps AOF/RDB state for a restart."""
        if self.pid is None:
            return
        try:
            if save:
                self.client().shutdown(save=True)
            else:
                os.kill(self.pid, signal.SIGTERM)
        except (ProcessLookupError, redis.ConnectionError):
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not _running(self.pid):
                break
            time.sleep(0.02)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def restart(self) -> RedisPeer:
        """Stop and start again on the same port and directory (AOF replays if enabled)."""
        port = self.port
        self.stop(save=self.appendonly)
        return self.start(port)


@contextmanager
def redis_peer(workdir: Path | None = None, **options: Any) -> Iterator[RedisPeer]:
    peer = RedisPeer(workdir, **options).start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisPeer]:
    """A fresh redis-server on a free port for one test."""
    with redis_peer(tmp_path / "redis") as peer:
        yield peer
