"""The environment variables that configure processes rather than a transfer.

A transfer's own settings (host, AE titles, rates...) come from command-line options, each
with its ``MIGRATOR_<NAME>`` variable (``migrator/commands/common.py``); what is read here
configures the processes themselves: where the ledger is, worker time limits, logging,
metrics. Read them through these functions, so that each name is spelled once.
"""

from __future__ import annotations

import os

from migrator.errors import ConfigError

REDIS_URL = "MIGRATOR_REDIS_URL"
#: -v / -vv of a worker (``migrator worker -v``; `run -v` passes its own to local workers)
VERBOSE = "MIGRATOR_VERBOSE"
LOG_FORMAT = "MIGRATOR_LOG_FORMAT"
VISIBILITY_TIMEOUT = "MIGRATOR_VISIBILITY_TIMEOUT"
SOFT_TIME_LIMIT = "MIGRATOR_SOFT_TIME_LIMIT"
TIME_LIMIT = "MIGRATOR_TIME_LIMIT"
MAX_LIMITER_WAIT = "MIGRATOR_MAX_LIMITER_WAIT"
SOFT_SHUTDOWN = "MIGRATOR_SOFT_SHUTDOWN"
#: how long a command or worker keeps retrying a lost Redis (migrator/redis_client.py)
REDIS_RIDE_OUT = "MIGRATOR_REDIS_RIDE_OUT"
#: its upper bound (seconds)
MAX_REDIS_RIDE_OUT_S = 86400.0

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The ledger's (and broker's) Redis."""
    return os.environ.get(REDIS_URL) or DEFAULT_REDIS_URL


def verbose() -> int:
    try:
        return max(0, int(os.environ.get(VERBOSE, "0") or 0))
    except ValueError:
        return 0


def log_format() -> str:
    return (os.environ.get(LOG_FORMAT) or "text").lower()


def seconds(name: str, default: float) -> float:
    """A number of seconds from the environment (a worker time limit...)."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None


def redis_ride_out(default: float) -> float:
    """Seconds of backoff a Redis client spends retrying a lost Redis before it gives up
    (``MIGRATOR_REDIS_RIDE_OUT``; 0: give up at once)."""
    raw = os.environ.get(REDIS_RIDE_OUT)
    value = seconds(REDIS_RIDE_OUT, default)
    # At most a day: longer is a typo (ms for s?), and a worker that waits a day for its
    # Redis is better restarted. Also NaN and inf fail the test.
    if not 0 <= value <= MAX_REDIS_RIDE_OUT_S:
        raise ConfigError(
            f"{REDIS_RIDE_OUT} must be a number of seconds from 0 to "
            f"{MAX_REDIS_RIDE_OUT_S:.0f} (a day) (e.g. {REDIS_RIDE_OUT}=60), got {raw!r}"
        )
    return value
