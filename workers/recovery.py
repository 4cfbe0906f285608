"""Batches left behind by an interrupted run, put back in the queue at once.

A Celery worker over Redis takes a batch's message off the queue into kombu's ``unacked``
hash and removes it only when the batch ends (``acks_late``). A worker killed mid-batch,
every process of a `run` stopped at once (kill -9 of the parent, two Ctrl-C, ``systemctl
stop``), or a Redis killed under them leaves the message there, and kombu gives it back
only after the visibility timeout: an hour by default, during which the rerun the tool
advises waits with nothing to do and says nothing.

``recover`` gives such messages back now (kombu's own restore, so they are requeued as
kombu would), and enqueues again a batch whose files are in flight but whose message is
gone altogether (a broker that lost it). It never takes a batch from a live worker: on the
embedded default no worker is running yet when `run` calls it; on a cluster (``retry
--in-flight``) a message is given back only when its batch holds no lease, and a worker
sending a batch refreshes its lease with every outcome it records. A batch given back twice
is harmless: a delivery finds it held (and waits) or finds its files stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from migrator.ledger import IN_FLIGHT, Ledger
from workers.app import QUEUES, celery_url

#: kombu's Redis transport keys (kombu.transport.redis.Channel: no global key prefix)
UNACKED = "unacked"


@dataclass(frozen=True, slots=True)
class Recovered:
    #: Messages taken by workers that are gone, given back to the queue
    restored: int
    #: Batches with files in flight and no message anywhere, enqueued again
    requeued: int

    @property
    def batches(self) -> int:
        return self.restored + self.requeued


def recover(
    broker_url: str,
    ledger: Ledger,
    enqueue: Callable[[str], None],
    *,
    workers_gone: bool,
) -> Recovered:
    """Give back the job's batches left unacked by workers that are gone, and enqueue the
    job's batches that have files in flight but no message. ``workers_gone``: no worker
    can be running (the embedded default, before its workers start): every unacked message
    of the job is given back; otherwise only those of batches without a lease."""
    from kombu.connection import Connection

    client = ledger.client
    restored = 0
    unacked_batches: set[str] = set()
    with Connection(celery_url(broker_url)) as conn:  # type: ignore[no-untyped-call]
        qos = cast(Any, conn.default_channel).qos
        for tag, raw in _unacked(client):
            task = _task_id(raw)
            if task is None or task[0] != ledger.job_id:
                continue
            batch_id = task[1]
            if not workers_gone and ledger.batch_holder(batch_id) is not None:
                unacked_batches.add(batch_id)  # a live worker is sending it
                continue
            qos.restore_by_tag(tag, leftmost=True)
            restored += 1
            unacked_batches.add(batch_id)
    queued = _queued_batches(client, ledger.job_id) | unacked_batches
    requeued = 0
    for batch_id, _, states, _ in ledger.iter_batches():
        if IN_FLIGHT in states and batch_id not in queued:
            enqueue(batch_id)
            requeued += 1
    return Recovered(restored, requeued)


def _unacked(client: Any) -> Iterator[tuple[bytes, bytes]]:
    yield from client.hscan_iter(UNACKED, count=1000)


def _task_id(raw: bytes) -> tuple[str, str] | None:
    """(job, batch) of an unacked entry (``[message, exchange, routing key]``)."""
    try:
        message = json.loads(raw)[0]
        return _split(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _split(task_id: Any) -> tuple[str, str] | None:
    if not isinstance(task_id, str) or ":" not in task_id:
        return None
    job, _, batch = task_id.rpartition(":")
    return job, batch


def _queued_batches(client: Any, job_id: str, chunk: int = 1000) -> set[str]:
    """The job's batches with a message waiting in a queue (any priority's)."""
    found: set[str] = set()
    for queue in QUEUES.values():
        start = 0
        while True:
            raws = cast(list[bytes], client.lrange(queue, start, start + chunk - 1))
            for raw in raws:
                try:
                    task = _split(json.loads(raw)["headers"]["id"])
                except (ValueError, KeyError, TypeError):
                    continue
                if task is not None and task[0] == job_id:
                    found.add(task[1])
            if len(raws) < chunk:
                break
            start += chunk
    return found
