"""Worker liveness for probes: a heartbeat key in Redis with a TTL.

A Celery consumer bootstep writes ``migrator:heartbeat:<node>`` (JSON: node, pid, time, ttl)
with a TTL of ``MIGRATOR_HEARTBEAT_TTL`` seconds (default 30) and renews it every third of
that. It is driven by the worker's own event-loop timer, like Celery's event heartbeat, so
the key stops being renewed when the main process dies **or** its loop hangs; a thread would
go on beating for a wedged worker. A worker that shuts down cleanly deletes the key; a killed
one lets it expire, so ``migrator check-health`` fails at most one TTL after the worker died.

The key lives in the broker's Redis, which the worker needs anyway: if that Redis is
unreachable the worker cannot work either. Beats are small blocking writes with a short
socket timeout; a failed one is logged (once per outage) and the next one is tried as usual.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from typing import Any

import redis
from celery import bootsteps

from migrator.errors import ConfigError
from migrator.keys import heartbeat_key

log = logging.getLogger(__name__)

TTL_ENV = "MIGRATOR_HEARTBEAT_TTL"
DEFAULT_TTL = 30.0
#: Writes to Redis never hold the worker's event loop longer than this.
SOCKET_TIMEOUT = 2.0


def key(node: str) -> str:
    """The heartbeat key of one worker node (``celery@host``)."""
    return heartbeat_key(node)


def default_node() -> str:
    """Celery's default node name for a worker on this host (what ``migrator worker`` uses):
    in a container or a pod, the probe runs on the same host name as the worker."""
    return f"celery@{socket.gethostname()}"


def ttl_from_env() -> float:
    raw = os.environ.get(TTL_ENV)
    if not raw:
        return DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        raise ConfigError(f"{TTL_ENV} must be a number of seconds, got {raw!r}") from None
    if not 1.0 <= ttl <= 86400.0:
        raise ConfigError(f"{TTL_ENV} must be between 1 and 86400 seconds, got {raw!r}")
    return ttl


def client(url: str) -> redis.Redis:
    """A client that answers quickly or fails: no retries, short timeouts (probes, beats)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from migrator.redis_client import redis_py_url

    return redis.Redis.from_url(
        redis_py_url(url),
        socket_connect_timeout=SOCKET_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),  # redis-py retries 3 times by default
    )


def read(conn: redis.Redis, node: str) -> dict[str, Any] | None:
    """The last beat of ``node`` if it is still within its TTL, else None."""
    raw = conn.get(key(node))
    if raw is None:
        return None
    try:
        beat = json.loads(raw)
    except ValueError:
        return {"node": node}
    return beat if isinstance(beat, dict) else {"node": node}


class Beater:
    """Writes one worker's heartbeat key (no Celery involved: testable on its own)."""

    def __init__(self, conn: redis.Redis, node: str, ttl: float) -> None:
        self.conn = conn
        self.node = node
        self.ttl = ttl
        self.failing = False

    @property
    def interval(self) -> float:
        return self.ttl / 3

    def beat(self) -> bool:
        value = json.dumps(
            {"node": self.node, "pid": os.getpid(), "time": time.time(), "ttl": self.ttl}
        )
        try:
            self.conn.set(key(self.node), value, px=math.ceil(self.ttl * 1000))
        except redis.RedisError as exc:
            if not self.failing:
                log.warning("heartbeat: cannot write %s: %s", key(self.node), exc)
            self.failing = True
            return False
        if self.failing:
            log.info("heartbeat: written again")
        self.failing = False
        return True

    def clear(self) -> None:
        try:
            self.conn.delete(key(self.node))
        except redis.RedisError as exc:
            log.warning("heartbeat: cannot delete %s: %s", key(self.node), exc)


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: beat on the event-loop timer while the consumer runs.

    A consumer restarted after a broker connection loss stops and starts its steps again;
    only the worker's shutdown removes the key.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.beater: Beater | None = None
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        if self.beater is None:
            self.beater = Beater(client(c.app.conf.broker_url), c.hostname, ttl_from_env())
        self.beater.beat()
        self.tref = c.timer.call_repeatedly(self.beater.interval, self.beater.beat)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            c.timer.cancel(self.tref)
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.beater is not None:
            self.beater.clear()


def install(app: Any) -> None:
    """Add the heartbeat to a Celery app's workers (call before the worker starts)."""
    app.steps["consumer"].add(Heartbeat)
