"""How a batch shows in Flower: a batch with failed files ends in Celery's FAILURE state.

Flower knows a task only from its events, and its state filter offers SUCCESS / FAILURE /
…: a task that returns normally is SUCCESS whatever its files became, so a batch whose
files the PACS refused hid among the successful ones. The batch task therefore raises
:class:`BatchFailed` once the batch is over with failed files (or the batch gave up, or
killed its workers): Flower lists it under FAILURE, its exception says how many files
failed and why, and Flower's search finds it by ``BatchFailed`` or by the job id.

Raising is safe here: the ledger already holds every outcome, the message is acked like a
returned task (acks_late acks on failure), and the task declares the exception in
``throws``, so the worker logs one line, not a traceback.
"""

from __future__ import annotations

from typing import Any


class BatchFailed(Exception):
    """A batch ended with failed files (their outcomes are in the ledger)."""


def failure_of(job_id: str, result: dict[str, Any]) -> str | None:
    """What went wrong in a delivered batch (a task's result), or None when nothing did."""
    batch = result.get("batch_id", "?")
    if result.get("gave_up"):
        return f"batch {batch} of {job_id}: gave up: {result['gave_up']}"
    failed = int(result.get("failed", 0))
    if result.get("poison"):
        return f"batch {batch} of {job_id}: failed: poison (it killed its worker three times)"
    if failed:
        sent = int(result.get("sent", 0))
        return (
            f"batch {batch} of {job_id}: {failed} failed files"
            + (f" of {sent} sent" if sent else "")
            + f"; `migrator report {job_id} --format csv` lists them with the reason"
        )
    return None
