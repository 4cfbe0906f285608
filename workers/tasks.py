"""Celery tasks: thin wrappers that deserialise arguments and call plain modules.

Task ids are deterministic (``<job>:<batch>``) so enqueuing a batch twice is visible and
Flower shows which batch a task is. Every way a task can end leaves each file of its batch
either settled in the ledger or in a message that will run again: a task that ends by an
exception is acked (acks_late) and never comes back, so exceptions become retries here.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown

from migrator.engine import UNREACHABLE
from migrator.ledger import Ledger
from migrator.outcomes import FileOutcome, State
from workers import runtime as rt
from workers.app import app
from workers.batch import BatchBusy, DestinationUnavailable, JobGone, run_batch

log = logging.getLogger(__name__)

#: Batch-level retries when the PACS cannot be reached or something unexpected broke
#: (each after the per-batch connection retries): 5 s, 10 s, 20 s, 40 s. Countdowns stay
#: well below the visibility timeout (ARCHITECTURE.md §3).
MAX_BATCH_RETRIES = 4
#: A batch held by another live delivery is looked at again after at most this long.
BUSY_RECHECK = 10.0

worker_process_shutdown.connect(rt.shutdown)


def task_id(job_id: str, batch_id: str) -> str:
    return f"{job_id}:{batch_id}"


@app.task(  # type: ignore[untyped-decorator]
    name="migrator.store_batch", bind=True, ignore_result=True, acks_late=True, max_retries=None
)
def store_batch(self: Any, job_id: str, batch_id: str, failures: int = 0) -> dict[str, Any]:
    """Send one batch of a migration job to its destination.

    ``failures`` counts the earlier deliveries that ended in an error (not the ones that
    found the batch busy), for the backoff and the give-up point.
    """
    runtime = rt.runtime()
    ledger = Ledger(runtime.client, job_id)
    from migrator.jobconfig import JobConfig

    tid = self.request.id or task_id(job_id, batch_id)
    t0 = time.monotonic()
    try:
        try:
            config = JobConfig.from_dict(ledger.config())
        except KeyError:
            raise JobGone(job_id) from None
        summary = run_batch(
            ledger, batch_id, pool=runtime.pool, limiter=runtime.limiter(config), task_id=tid
        )
    except JobGone as exc:
        # Nothing to record into and nobody waiting: drop the batch (acked), loudly. The
        # run that waits for this job sees it gone and says how to start again.
        log.error("batch %s dropped: %s", batch_id, exc)
        return {"batch_id": batch_id, "gone": str(exc)}
    except BatchBusy as exc:
        # Not a failure: the same batch runs elsewhere. Look again; if that worker dies,
        # its lease expires and this copy sends the rest.
        raise self.retry(countdown=_capped(min(BUSY_RECHECK, exc.retry_in + 0.5))) from None
    except SoftTimeLimitExceeded:
        # What was sent is recorded; the rest goes on in a fresh delivery.
        log.warning("batch %s hit the soft time limit; continuing in a new task", batch_id)
        raise self.retry(countdown=0) from None
    except Exception as exc:
        reason = (
            f"{UNREACHABLE}: {exc}"
            if isinstance(exc, DestinationUnavailable)
            else f"internal error: {type(exc).__name__}: {exc}"
        )
        if failures < MAX_BATCH_RETRIES:
            log.warning("batch %s: %s; retrying (%d)", batch_id, reason, failures + 1)
            raise self.retry(
                # Jittered, so that batches turned away together do not all return at once.
                countdown=_capped(5 * 2**failures * random.uniform(0.75, 1.25)),
                kwargs={"failures": failures + 1},
            ) from exc
        reason += f" (gave up after {failures + 1} tries of the batch)"
        _fail_rest(ledger, batch_id, reason)
        log.error("batch %s of %s: gave up: %s", batch_id, job_id, reason)
        return {"batch_id": batch_id, "gave_up": reason}
    elapsed = time.monotonic() - t0
    # One line per batch at INFO (per file only at DEBUG): a cluster's logs stay readable.
    log.info(
        "batch %s of %s: %d stored, %d failed, %d already stored",
        batch_id,
        job_id,
        summary.stored,
        summary.failed,
        summary.skipped_already_stored,
        extra={"fields": {"job": job_id, **asdict(summary), "seconds": round(elapsed, 3)}},
    )
    return asdict(summary)


def _capped(countdown: float) -> float:
    """A countdown never longer than the configured wait bound (below the visibility
    timeout): an ETA message older than that would be delivered a second time."""
    return min(countdown, float(app.conf.migrator_max_wait))


def _fail_rest(ledger: Ledger, batch_id: str, reason: str) -> None:
    files = ledger.batch(batch_id)
    stored = ledger.stored_ids([f.file_id for f in files])
    now = time.time()
    ledger.record_many(
        [
            (
                f.file_id,
                FileOutcome(
                    f.uri,
                    State.FAILED,
                    reason,
                    sop_class_uid=f.sop_class_uid,
                    sop_instance_uid=f.sop_instance_uid,
                    ts_original=f.transfer_syntax,
                ),
                now,
            )
            for f in files
            if f.file_id not in stored
        ]
    )
