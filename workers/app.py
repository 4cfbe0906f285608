"""The Celery application: broker settings chosen for correctness under faults.

Why each setting (ARCHITECTURE.md §3, TESTING.md §5):
- ``acks_late`` + ``reject_on_worker_lost``: a batch whose worker dies is delivered again,
  and the ledger makes the second delivery skip what was already stored.
- prefetch 1: a worker never holds batches it is not running (they would wait a visibility
  timeout if it died).
- visibility timeout (VT) set in all three places, above the hard time limit plus the
  longest limiter wait, else Redis re-delivers a batch *while it still runs*.
- soft shutdown: on SIGTERM (remapped to SIGQUIT) running batches get a few seconds, then
  their messages go back to the queue at once instead of after a VT.
- events on, for Flower; results ignored (completion is read from the ledger).

Creating the app connects to nothing; workers and the planner connect on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_ready, worker_shutdown

from migrator import env, logfmt
from migrator.errors import ConfigError
from workers import channelclose, heartbeat, metrics

QUEUE = "migrator.batches"
#: The batch task's name (workers/tasks.py); the control plane sends it by name.
TASK = "migrator.store_batch"

#: Defaults for production (seconds). Tests shorten them through the environment.
VISIBILITY_TIMEOUT = 3600.0
SOFT_TIME_LIMIT = 1500.0
TIME_LIMIT = 1800.0
#: The longest a batch message may wait *outside* a running task: retry countdowns (ETA
#: messages sit unacked in a worker, so the visibility timeout runs on them too).
MAX_LIMITER_WAIT = 600.0


def celery_url(url: str) -> str:
    """Celery spells a unix socket ``redis+socket:///path``; redis-py ``unix:///path``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://") :]
    return url


def validate_timing(
    visibility_timeout: float, soft_limit: float, hard_limit: float, max_wait: float
) -> None:
    """Refuse settings under which Redis would deliver a batch again while it still runs."""
    if not 0 < soft_limit <= hard_limit:
        raise ConfigError(
            f"the soft time limit ({soft_limit:g} s) must be positive and not above the hard "
            f"limit ({hard_limit:g} s)"
        )
    if visibility_timeout <= hard_limit + max_wait:
        raise ConfigError(
            f"visibility timeout {visibility_timeout:g} s must exceed the task time limit "
            f"({hard_limit:g} s) plus the longest limiter wait ({max_wait:g} s); otherwise "
            "Redis re-delivers batches while they still run"
        )


def settings() -> dict[str, Any]:
    vt = env.seconds(env.VISIBILITY_TIMEOUT, VISIBILITY_TIMEOUT)
    soft = env.seconds(env.SOFT_TIME_LIMIT, SOFT_TIME_LIMIT)
    hard = env.seconds(env.TIME_LIMIT, TIME_LIMIT)
    # Checked when the app is made, so a worker with a dangerous setting does not start at
    # all (a failing worker_init signal handler would only be logged).
    max_wait = env.seconds(env.MAX_LIMITER_WAIT, MAX_LIMITER_WAIT)
    validate_timing(vt, soft, hard, max_wait)
    restore = 2.0 if vt < 60 else 10.0  # short VT (tests): sweep often enough to matter
    transport: dict[str, Any] = {
        "visibility_timeout": vt,
        "unacked_restore_interval": restore,
    }
    if vt < 60:
        transport["unacked_restore_throttle"] = 1
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": vt},
        "visibility_timeout": vt,
        "worker_soft_shutdown_timeout": env.seconds(env.SOFT_SHUTDOWN, 60.0),
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_max_tasks_per_child": 500,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "worker_hijack_root_logger": False,
        "broker_heartbeat": 0,
        "migrator_max_wait": max_wait,
    }


def make_app(broker_url: str | None = None) -> Celery:
    channelclose.install()  # Celery 5.7.0 crashes a worker on a Redis restart without it
    url = celery_url(broker_url or env.redis_url())
    celery = Celery("migrator", broker=url, include=["workers.tasks"])
    celery.conf.update(settings())
    return celery


app = make_app()
heartbeat.install(app)  # liveness key in Redis for `migrator check-health` (probes)


# Metrics (off unless MIGRATOR_METRICS_PORT): the endpoint once the worker is up, its
# directory gone at shutdown.
worker_ready.connect(lambda **_: metrics.serve(), weak=False)
worker_shutdown.connect(lambda **_: metrics.cleanup(), weak=False)


def _logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our format (text, or JSON with MIGRATOR_LOG_FORMAT=json) instead of Celery's; one
    line per batch at INFO, one per file only with ``-v`` (MIGRATOR_VERBOSE=1), the
    association negotiation with ``-vv``."""
    logfmt.configure(loglevel or "INFO")
    verbose = env.verbose()
    logging.getLogger("migrator.files").setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:  # -j auto's changes of the number of associations
        logging.getLogger("migrator.concurrency").setLevel(logging.INFO)
    logging.getLogger("migrator.dul").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    # pynetdicom logs every PDU at INFO: noise at our volume.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


setup_logging.connect(_logging, weak=False)


def enqueuer(broker_url: str, job_id: str) -> Callable[[str], None]:
    """A function that enqueues one batch of ``job_id`` (task id ``<job>:<batch>``, so a
    batch enqueued twice is visible)."""
    celery = make_app(broker_url)

    def enqueue(batch_id: str) -> None:
        celery.send_task(TASK, args=[job_id, batch_id], task_id=f"{job_id}:{batch_id}", queue=QUEUE)

    return enqueue
