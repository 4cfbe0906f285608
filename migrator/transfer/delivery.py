"""One delivery of a batch task: run the batch, and decide what the task does next.

The Celery task (``workers/tasks.py``) is a few lines around ``deliver``: it turns the
returned ``Delivery`` into ``self.retry(countdown=…)`` or a result. Every way a delivery can
end leaves each file of its batch either settled in the ledger or in a message that will
run again: a task that ends by an exception is acked (acks_late) and never comes back, so
failures become retries here, decided by the error tree (``migrator.errors``):

* another delivery holds the batch, or files wait for another batch's copy: look again soon;
* a retryable failure (PACS unreachable or busy, a Redis outage) or an unexpected error:
  retried with jittered backoff (5, 10, 20, 40 s), then the batch's unsettled files fail
  with the reason;
* a permanent failure: the unsettled files fail at once;
* the job left Redis: nothing to record into; the batch is dropped, loudly;
* the job is paused: the batch is parked (acked) until `migrator resume` enqueues it again.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from migrator import control
from migrator.errors import (
    BatchBusy,
    Deferred,
    DestinationUnavailable,
    JobGone,
    JobPaused,
    MigratorError,
    is_retryable,
)
from migrator.ledger import Ledger
from migrator.transfer.batch import REJECTED, UNREACHABLE, fail_unsettled, run_batch
from migrator.transfer.runtime import Runtime

log = logging.getLogger("workers.tasks")

#: Batch-level retries when the PACS cannot be reached or something unexpected broke
#: (each after the per-batch connection retries): 5 s, 10 s, 20 s, 40 s. Countdowns stay
#: well below the visibility timeout (ARCHITECTURE.md §3).
MAX_BATCH_RETRIES = 4
#: A batch held by another live delivery is looked at again after at most this long.
BUSY_RECHECK = 10.0
#: A delivery sends urgent batches (`migrator urgent`) first for at most this long.
URGENT_SECONDS = 120.0
#: How the files of a batch that could not reach the PACS at all are said to have failed.
CANNOT_REACH = "cannot reach the PACS"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the task does next: return ``result``, or retry after ``retry_in`` seconds
    with ``failures`` deliveries counted as failed so far."""

    result: dict[str, Any] | None = None
    retry_in: float | None = None
    failures: int = 0


def deliver(
    runtime: Runtime,
    job_id: str,
    batch_id: str,
    failures: int,
    task_id: str,
    *,
    passthrough: tuple[type[BaseException], ...] = (),
) -> Delivery:
    """``passthrough``: exceptions to let through to the caller (Celery's soft time limit:
    the task continues the batch in a fresh delivery)."""
    ledger = Ledger(runtime.client, job_id)
    _serve_urgent(runtime, ledger)
    t0 = time.monotonic()
    try:
        summary = run_batch(ledger, batch_id, runtime, task_id=task_id)
    except JobGone as exc:
        # Nothing to record into and nobody waiting: drop the batch (acked), loudly. The
        # run that waits for this job sees it gone and says how to start again.
        log.error("batch %s dropped: %s", batch_id, exc)
        return Delivery({"batch_id": batch_id, "gone": str(exc)})
    except BatchBusy as exc:
        # Not a failure: the same batch runs elsewhere. Look again; if that worker dies,
        # its lease expires and this copy sends the rest.
        return Delivery(retry_in=min(BUSY_RECHECK, exc.retry_in + 0.5), failures=failures)
    except JobPaused:
        if control.park(ledger, batch_id):
            log.info("batch %s: job %s is paused; parked until `migrator resume`", batch_id, job_id)
            return Delivery({"batch_id": batch_id, "paused": True})
        return Delivery(retry_in=0.0, failures=failures)  # resumed meanwhile: go on
    except Deferred as exc:
        log.info("batch %s: %s; back in %g s", batch_id, exc, exc.retry_in)
        return Delivery(retry_in=exc.retry_in, failures=failures)
    except Exception as exc:
        if isinstance(exc, passthrough):
            raise
        return _failed_delivery(ledger, batch_id, failures, exc)
    # One line per batch at INFO (per file only with -v): a cluster's logs stay readable.
    log.info(
        "batch %s of %s: %d stored, %d failed, %d already stored",
        batch_id,
        job_id,
        summary.stored,
        summary.failed,
        summary.skipped_already_stored,
        extra={
            "fields": {
                "job": job_id,
                **asdict(summary),
                "seconds": round(time.monotonic() - t0, 3),
            }
        },
    )
    return Delivery(asdict(summary))


def _serve_urgent(runtime: Runtime, ledger: Ledger) -> None:
    """Batches `migrator urgent` named go before this one (each worker takes them at its
    next delivery, so the whole fleet serves them next). Their own task, still queued,
    later finds their files stored. Whatever stops one here (busy, paused, an error) is
    left to that task."""
    deadline = time.monotonic() + URGENT_SECONDS
    while time.monotonic() < deadline:
        try:
            urgent = control.next_urgent(ledger)
            if urgent is None:
                return
            run_batch(ledger, urgent, runtime, task_id=f"urgent:{urgent}")
            log.info("urgent batch %s of %s sent first", urgent, ledger.job_id)
        except BatchBusy:
            continue  # another worker sends it
        except Exception as exc:
            log.info("urgent batch left to its own task: %s", exc)
            return


def _failed_delivery(ledger: Ledger, batch_id: str, failures: int, exc: Exception) -> Delivery:
    cause = ""
    if isinstance(exc, DestinationUnavailable):
        reason = f"{CANNOT_REACH}: {exc}"
        cause = REJECTED if exc.rejected else UNREACHABLE
    elif isinstance(exc, MigratorError):
        reason = str(exc)
    else:  # a bug, or an outage of something we do not classify (Redis...)
        reason = f"internal error: {type(exc).__name__}: {exc}"
    retry = is_retryable(exc) or not isinstance(exc, MigratorError)
    if retry and failures < MAX_BATCH_RETRIES:
        log.warning("batch %s: %s; retrying (%d)", batch_id, reason, failures + 1)
        # Jittered, so that batches turned away together do not all return at once.
        countdown = 5 * 2**failures * random.uniform(0.75, 1.25)
        return Delivery(retry_in=countdown, failures=failures + 1)
    if retry:
        reason += f" (gave up after {failures + 1} tries of the batch)"
    fail_unsettled(ledger, batch_id, reason, cause=cause)
    log.error("batch %s of %s: gave up: %s", batch_id, ledger.job_id, reason)
    return Delivery({"batch_id": batch_id, "gave_up": reason})
