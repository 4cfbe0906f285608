"""`migrator run` sends the first batches itself while its local workers boot.

A Celery worker needs ~0.5 s to start (imports, pool forks); a small job is planned long
before that. Meanwhile the `run` process runs batches with the very code the workers run
(``run_batch``: the batch lease, the fleet-wide limiter and association slots, the ledger),
taking them from the end of the plan while the workers will start from its head. It stops
as soon as a worker is ready (or has died: then `run` reports why).

Safe by construction: a batch runs under its lease, so a worker that receives the same
batch meanwhile waits (BatchBusy) and later finds its files stored, sending nothing twice;
a batch this process could not finish keeps its Celery message, and a worker sends the rest
with its usual retries. This process does not retry at all: at the first wait a retry would
need (the PACS unreachable or busy, a transient status) it leaves the batch to the workers
(``may_wait=False``), so that an unusable PACS costs `run` no extra time.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import redis

from migrator.errors import BatchBusy, MigratorError
from migrator.ledger import Ledger
from migrator.settings import Settings
from migrator.transfer.batch import BatchSummary, run_batch
from migrator.transfer.runtime import Runtime

log = logging.getLogger(__name__)

#: Seconds between two looks at ``stop`` (it reads Redis: the workers' heartbeat).
STOP_CHECK = 0.1


def every(seconds: float, check: Callable[[], bool]) -> Callable[[], bool]:
    """``check``, asked at most every ``seconds`` (its last answer in between); once true,
    true for good."""
    state = {"at": float("-inf"), "value": False}

    def throttled() -> bool:
        now = time.monotonic()
        if not state["value"] and now - state["at"] >= seconds:
            state["value"] = bool(check())
            state["at"] = now
        return bool(state["value"])

    return throttled


def send_until_ready(
    ledger: Ledger,
    stop: Callable[[], bool],
    abandon: Callable[[], bool] | None = None,
    on_batch: Callable[[str, BatchSummary, float], None] | None = None,
) -> int:
    """Run the job's unsettled batches here, last planned first, until ``stop()`` is true
    (looked at before each batch: a batch begun here is sent here, on one association).
    ``abandon()`` ends even a batch half-way (looked at every STOP_CHECK seconds: `run`'s
    --timeout); what this process did not send stays in flight for the workers.
    ``on_batch(batch_id, summary, seconds)`` is told of each batch run to its end (Flower's
    events: workers/inline_events.py). Returns how many batches were run to their end."""
    within = every(STOP_CHECK, abandon) if abandon is not None else None
    settings = Settings.from_dict(ledger.config())
    if settings.throttle_delay:
        return 0  # every file would wait: the workers pace the job
    runtime = Runtime(ledger.client)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    done = 0
    try:
        ids = ledger.batch_ids()
        # From the end, where the workers are not (they start at the head); an ordered plan
        # (--order) from its head: what goes first is what was asked for first.
        for batch_id in ids if settings.order != "listing" else reversed(ids):
            if stop() or (abandon is not None and abandon()):
                break
            if "." not in ledger.batch_states(batch_id):
                continue  # settled already (a re-run of the same job)
            t0 = time.monotonic()
            try:
                summary = run_batch(
                    ledger,
                    batch_id,
                    runtime,
                    task_id=f"inline:{batch_id}",
                    worker=worker,
                    may_wait=False,
                    stop=within,
                )
            except BatchBusy:
                continue  # a worker has it
            except (MigratorError, redis.RedisError) as exc:
                # A retry, a busy or unreachable PACS...: the workers deal with it properly.
                log.info("leaving batch %s to the workers: %s", batch_id, exc)
                break
            if "." in ledger.batch_states(batch_id):
                break  # stopped half-way: its workers finish it
            if on_batch is not None:
                on_batch(batch_id, summary, time.monotonic() - t0)
            done += 1
    finally:
        runtime.close_all()
    return done
