"""Pausing, resuming and cancelling a job: its state in Redis, next to its ledger.

`migrator pause JOB` sets the job's control key (``keys.JobKeys.control``) to ``paused``.
Every sending process looks at it at most every CHECK_EVERY seconds while it sends (the
transfer core's ``stop()``), so within a second no file starts: the files already on the
wire are answered and recorded, the rest of the batch stays in flight. A worker's task that
finds the job paused is put aside (acked, its batch id kept in the job's ``parked`` set)
rather than coming back every few seconds for weeks; `migrator resume` clears the key and
hands back the parked batches in one script, so no batch can be parked after the resume took
the set (it would never be enqueued again). A process idle between batches closes the
associations it kept for a paused job (transfer/runtime.py): a paused job holds none.

`migrator cancel JOB` sets ``cancelled`` for good: a batch being sent stops as for a pause
and settles what it did not send as ``skipped: cancelled``; the command settles every other
batch itself, each under the batch's lease (never while a worker sends it), so that once it
returns, planned = stored + failed + skipped.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import cast

import redis

from migrator.ledger import Ledger, PlannedFile, Recorded
from migrator.outcomes import FileOutcome, State

PAUSED = "paused"
CANCELLED = "cancelled"
#: The priority class of the files `migrator urgent` named (the report's per-class table).
URGENT = "urgent"
#: The reason of a file a cancel left unsent (state skipped).
CANCELLED_REASON = "cancelled"
#: A sending process reads the control key at most this often (one GET): a pause is seen
#: within this, and the files already started are answered within their DIMSE round trip.
CHECK_EVERY = 0.2
#: A paused batch taken by `run`'s own sender is looked at again this soon (it does not
#: park: its task is still queued for the workers).
PAUSE_RECHECK = 5.0
#: The batch lease `cancel` takes to settle a batch (it holds it for one write).
_LEASE_S = 30.0

# Park the batch only while the job is paused; 1 when parked.
_PARK = """
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# Resume a paused job: {'ok', parked batch ids...}, or {state} when it was not paused.
_RESUME = """
local now = redis.call('GET', KEYS[1])
if now ~= ARGV[1] then return {now or 'running'} end
redis.call('DEL', KEYS[1])
local parked = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
table.insert(parked, 1, 'ok')
return parked
"""
# Set a state unless the job is cancelled (for good); returns the state it had.
_SET = """
local now = redis.call('GET', KEYS[1])
if now == ARGV[2] then return now end
redis.call('SET', KEYS[1], ARGV[1])
return now or 'running'
"""


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def state(client: redis.Redis, job_id: str) -> str | None:
    """``paused``, ``cancelled``, or None while the job runs."""
    raw = client.get(Ledger(client, job_id).keys.control)
    return None if raw is None else _text(raw)


def pause(ledger: Ledger) -> str:
    """Pause the job; returns the state it was in (``running``, ``paused``, ``cancelled``:
    a cancelled job stays so)."""
    k = ledger.keys
    was = _text(ledger.client.eval(_SET, 1, k.control, PAUSED, CANCELLED))
    if was == "running":
        ledger.add_history("pause")
    return was


def resume(ledger: Ledger) -> tuple[str, list[str]]:
    """Resume a paused job: (``ok``, the batches parked meanwhile, to enqueue again), or
    (the state it was in, []) when it was not paused."""
    k = ledger.keys
    raw = cast(list[object], ledger.client.eval(_RESUME, 2, k.control, k.parked, PAUSED))
    head, parked = _text(raw[0]), sorted(_text(b) for b in raw[1:])
    if head == "ok":
        ledger.add_history("resume", parked=len(parked))
    return head, parked


def park(ledger: Ledger, batch_id: str) -> bool:
    """Put the batch aside for `resume`; False when the job is no longer paused (send it)."""
    k = ledger.keys
    return bool(ledger.client.eval(_PARK, 2, k.control, k.parked, batch_id, PAUSED))


def cancel(ledger: Ledger, *, wait: float = 60.0, poll: float = 0.2) -> tuple[int, list[str]]:
    """Cancel the job and settle every file not sent as ``skipped: cancelled``. A batch a
    sender holds is left to it (it sees the cancel within CHECK_EVERY and settles its own
    files once the ones in flight are answered), and looked at again until ``wait`` seconds
    passed. Returns (files settled here, batches still held by a sender at the end)."""
    k = ledger.keys
    was = _text(ledger.client.eval(_SET, 1, k.control, CANCELLED, CANCELLED))
    ledger.client.delete(k.parked)  # settled below, with every other batch
    if was != CANCELLED:
        ledger.add_history("cancel")
    token = f"cancel:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait
    settled = 0
    while True:
        held = []
        for batch_id in ledger.batch_ids():
            if "." not in ledger.batch_states(batch_id):
                continue
            if not ledger.claim_batch(batch_id, token, _LEASE_S):
                held.append(batch_id)
                continue
            try:
                entries = cancelled_entries(ledger.batch_states(batch_id), ledger.batch(batch_id))
                ledger.record_many(entries)
                settled += len(entries)
            finally:
                ledger.release_batch(batch_id, token)
        if not held or time.monotonic() >= deadline:
            return settled, held
        time.sleep(poll)


def cancelled_entries(states: str, files: list[PlannedFile]) -> list[Recorded]:
    """``skipped: cancelled`` for the files of a batch that have no outcome (``states``:
    the batch's state string, ``.`` in flight)."""
    now = time.time()
    return [
        (f.file_id, skipped_cancelled(f), now)
        for i, f in enumerate(files)
        if i >= len(states) or states[i] == "."
    ]


def skipped_cancelled(f: PlannedFile) -> FileOutcome:
    return FileOutcome(
        f.uri,
        State.SKIPPED,
        CANCELLED_REASON,
        sop_class_uid=f.sop_class_uid,
        sop_instance_uid=f.sop_instance_uid,
        ts_original=f.transfer_syntax,
    )


def mark_urgent(ledger: Ledger, named: frozenset[str]) -> tuple[int, list[str]]:
    """Have the batches holding unsent files of the studies ``named`` (Study Instance UIDs
    or Accession Numbers) sent before any other: (files, batch ids) found."""
    files, batches = 0, []
    for batch_id, planned, states, _ in ledger.iter_batches():
        hits = [
            f.file_id
            for i, f in enumerate(planned)
            if (f.study_uid in named or (f.accession and f.accession in named))
            and (i >= len(states) or states[i] == ".")
        ]
        if hits:
            files += len(hits)
            batches.append(batch_id)
            ledger.mark_priority(hits, URGENT)
    if batches:
        ledger.client.rpush(ledger.keys.urgent, *batches)
        ledger.add_history("urgent", batches=len(batches), files=files)
    return files, batches


def next_urgent(ledger: Ledger) -> str | None:
    raw = ledger.client.lpop(ledger.keys.urgent)
    return None if raw is None else _text(raw)


def senders(ledger: Ledger) -> int:
    """How many of the job's batches a sender holds right now (their leases)."""
    ids = ledger.batch_ids()
    pipe = ledger.client.pipeline(transaction=False)
    for batch_id in ids:
        pipe.exists(ledger.keys.running(batch_id))
    return sum(int(n) for n in pipe.execute()) if ids else 0


class Watch:
    """The job's control state as a sender sees it: read at most every CHECK_EVERY
    seconds; a Redis that does not answer keeps the last state (the ledger's own writes
    report the outage)."""

    def __init__(
        self, client: redis.Redis, job_id: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._clock = clock
        self._at = float("-inf")
        self.state: str | None = None

    def __call__(self) -> bool:
        """True once the job is paused or cancelled: stop taking files."""
        now = self._clock()
        if now - self._at >= CHECK_EVERY:
            self._at = now
            with contextlib.suppress(redis.RedisError):
                self.state = state(self._client, self._job_id)
        return self.state is not None
