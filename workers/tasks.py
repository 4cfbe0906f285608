"""Celery tasks: thin wrappers around plain functions (``migrator.transfer.delivery``).

Task ids are deterministic (``<job>:<batch>``) so enqueuing a batch twice is visible and
Flower shows which batch a task is; a batch with failed files ends in the FAILURE state
(``workers.batchstate``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown

from migrator.transfer import runtime as rt
from migrator.transfer.delivery import deliver
from workers.app import TASK, app
from workers.batchstate import BatchFailed, failure_of
from workers.metrics import DestinationMetrics

log = logging.getLogger(__name__)

#: Seconds before a batch stopped by the soft time limit goes on (see store_batch).
SOFT_LIMIT_PAUSE = 1.0

worker_process_shutdown.connect(rt.shutdown)


def task_id(job_id: str, batch_id: str) -> str:
    return f"{job_id}:{batch_id}"


@app.task(  # type: ignore[untyped-decorator]
    name=TASK,
    bind=True,
    ignore_result=True,
    acks_late=True,
    max_retries=None,
    # Expected: logged as one line, no traceback (workers/batchstate.py)
    throws=(BatchFailed,),
)
def store_batch(self: Any, job_id: str, batch_id: str, failures: int = 0) -> dict[str, Any]:
    """Send one batch of a migration job to its destination.

    ``failures`` counts the earlier deliveries that ended in an error (not the ones that
    found the batch busy), for the backoff and the give-up point.
    """
    runtime = rt.runtime(DestinationMetrics)
    tid = self.request.id or task_id(job_id, batch_id)
    try:
        done = deliver(
            runtime, job_id, batch_id, failures, tid, passthrough=(SoftTimeLimitExceeded,)
        )
    except SoftTimeLimitExceeded:
        # What was sent is recorded; the rest goes on in a fresh delivery. That delivery
        # asks the PACS for the files left on the wire (transfer/takeover.py): a second
        # lets the PACS finish storing them first, so none is sent twice.
        log.warning("batch %s hit the soft time limit; continuing in a new task", batch_id)
        pause = min(SOFT_LIMIT_PAUSE, float(app.conf.migrator_max_wait))
        raise self.retry(countdown=pause) from None
    if done.retry_in is not None:
        # Never longer than the configured wait bound (below the visibility timeout): an
        # ETA message older than that would be delivered a second time.
        countdown = min(done.retry_in, float(app.conf.migrator_max_wait))
        raise self.retry(countdown=countdown, kwargs={"failures": done.failures})
    result = done.result or {}
    failure = failure_of(job_id, result)
    if failure is not None:
        raise BatchFailed(failure)  # FAILURE in Flower (workers/batchstate.py)
    return result
