"""Flower's view of the batches `run` sends itself while its workers boot.

Flower knows tasks only from the events workers send. The batches `run` (and `retry`) send
inline (``migrator.transfer.inline``) run outside any worker, so Flower never showed them,
and a small job could look as if nothing had been sent. For each batch run here to its end
this sends the events a worker would (received, started, succeeded or failed), as the
pseudo-worker ``migrator-run@<host>``, task name ``migrator.store_batch`` and id
``inline:<job>:<batch>`` (not the batch's Celery id: the worker that later receives the same
message finds its files settled and sends its own events under that id). A batch with
failed files is ``task-failed`` with the same text as a worker's (``workers.batchstate``).

Events are a view: any error sending them is logged and the events switched off, never
allowed to stop the job.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from workers.app import TASK, make_app
from workers.batchstate import BatchFailed, failure_of

if TYPE_CHECKING:
    from migrator.transfer.batch import BatchSummary

log = logging.getLogger(__name__)

#: The hostname Flower shows for the batches `run` sent itself
HOSTNAME = f"migrator-run@{socket.gethostname()}"


class InlineEvents:
    """Task events for the batches of ``job_id`` sent by this process, on ``broker_url``."""

    def __init__(self, broker_url: str, job_id: str) -> None:
        self.job_id = job_id
        self._conn: Any = None
        self._dispatcher: Any = None
        try:
            app = make_app(broker_url)
            self._conn = app.connection_for_write()
            self._dispatcher = app.events.Dispatcher(self._conn, hostname=HOSTNAME, enabled=True)
        except Exception as exc:  # a view only: never in the job's way
            log.info("no Flower events for inline batches: %s", exc)
            self.close()

    def batch_done(self, batch_id: str, summary: BatchSummary, seconds: float) -> None:
        """``batch_id`` was run here to its end in ``seconds``: received, started, and its
        outcome, with the times it really had."""
        if self._dispatcher is None:
            return
        uuid = f"inline:{self.job_id}:{batch_id}"
        began = time.time() - seconds
        result = asdict(summary)
        failure = failure_of(self.job_id, result)
        try:
            send = self._dispatcher.send
            send(
                "task-received",
                uuid=uuid,
                name=TASK,
                args=repr([self.job_id, batch_id]),
                kwargs="{}",
                retries=0,
                eta=None,
                expires=None,
                root_id=uuid,
                parent_id=None,
                timestamp=began,
            )
            send("task-started", uuid=uuid, timestamp=began)  # (pid: the dispatcher's)
            if failure is None:
                send("task-succeeded", uuid=uuid, result=repr(result), runtime=seconds)
            else:
                send(
                    "task-failed",
                    uuid=uuid,
                    exception=repr(BatchFailed(failure)),
                    traceback="",
                    runtime=seconds,
                )
        except Exception as exc:
            log.info("Flower events for inline batches switched off: %s", exc)
            self.close()

    def close(self) -> None:
        for thing in (self._dispatcher, self._conn):
            if thing is not None:
                try:
                    thing.close()
                except Exception as exc:  # closing a view: nothing to do about it
                    log.debug("closing inline events: %s", exc)
        self._dispatcher = self._conn = None
