"""The job ledger in Redis: what was planned, and the one outcome of every planned file.

Invariant: ``planned = stored + failed + skipped + in flight``, and at the end of a job
``in flight = 0``. The counters move only inside Lua scripts that look at the file's current
state first, so a batch delivered twice (a killed worker, a Redis visibility timeout) never
counts a file twice, and a stored file is never turned back into a failure by a late
duplicate.

Keys come from :mod:`migrator.keys`. Outcomes are written in groups (one round trip per
group), each with the second it finished in, which feeds the per-second timeline.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from migrator.keys import JOBS, JobKeys
from migrator.outcomes import FileOutcome, State, StoreResult

#: (file id, outcome, epoch seconds when it finished)
Recorded = tuple[str, FileOutcome, float]

_COUNTERS = ("planned", "stored", "failed", "skipped", "bytes_stored", "warnings", "transcoded")

# KEYS: state, outcome, counts, failures, timeline, timeline_bytes
# ARGV: groups of 7: file id, new state, outcome JSON, second, bytes, warning, transcoded
_RECORD = """
local changed = 0
for i = 1, #ARGV, 7 do
  local fid, new = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[1], fid)
  if old ~= 'stored' then
    if old then
      redis.call('HINCRBY', KEYS[3], old, -1)
      if old == 'failed' then redis.call('SREM', KEYS[4], fid) end
    end
    redis.call('HSET', KEYS[1], fid, new)
    redis.call('HSET', KEYS[2], fid, ARGV[i + 2])
    redis.call('HINCRBY', KEYS[3], new, 1)
    if new == 'failed' then redis.call('SADD', KEYS[4], fid) end
    if new == 'stored' then
      local bytes = tonumber(ARGV[i + 4])
      redis.call('HINCRBY', KEYS[5], ARGV[i + 3], 1)
      redis.call('HINCRBY', KEYS[6], ARGV[i + 3], bytes)
      redis.call('HINCRBY', KEYS[3], 'bytes_stored', bytes)
      if ARGV[i + 5] == '1' then redis.call('HINCRBY', KEYS[3], 'warnings', 1) end
      if ARGV[i + 6] == '1' then redis.call('HINCRBY', KEYS[3], 'transcoded', 1) end
    end
    changed = changed + 1
  end
end
return changed
"""

# Put failed files back in flight (for `retry`). KEYS: state, counts, failures. ARGV: ids.
_REOPEN = """
local n = 0
for _, fid in ipairs(ARGV) do
  if redis.call('HGET', KEYS[1], fid) == 'failed' then
    redis.call('HDEL', KEYS[1], fid)
    redis.call('HINCRBY', KEYS[2], 'failed', -1)
    redis.call('SREM', KEYS[3], fid)
    n = n + 1
  end
end
return n
"""

# Token-checked lease operations. KEYS: lease key. ARGV: token, ttl ms.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Delivery counters outlive any sane batch, then go away by themselves.
_DELIVERY_TTL = 7 * 24 * 3600


def file_id(uri: str) -> str:
    """Deterministic identity of a planned file: the same URI is the same file."""
    return hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """What a worker needs to send one file, as written at planning time."""

    file_id: str
    uri: str
    size: int
    version: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PlannedFile:
        return cls(**json.loads(raw))


def outcome_from_json(raw: str | bytes) -> FileOutcome:
    data = json.loads(raw)
    status = data.get("status")
    return FileOutcome(
        uri=data["uri"],
        state=State(data["state"]),
        reason=data.get("reason", ""),
        status=int(status, 16) if status else None,
        sop_class_uid=data.get("sop_class_uid", ""),
        sop_instance_uid=data.get("sop_instance_uid", ""),
        ts_original=data.get("ts_original", ""),
        ts_sent=data.get("ts_sent", ""),
        transcoded=bool(data.get("transcoded", False)),
        warning=bool(data.get("warning", False)),
        bytes=int(data.get("bytes", 0)),
        attempts=int(data.get("attempts", 0)),
        seconds=float(data.get("seconds", 0.0)),
    )


def list_jobs(client: redis.Redis) -> list[str]:
    return sorted(_s(j) for j in cast(set[bytes], client.smembers(JOBS)))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Ledger:
    """One job's plan and outcomes. Cheap to create; holds no state but the client."""

    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.keys = JobKeys(job_id)
        self._record = client.register_script(_RECORD)
        self._reopen = client.register_script(_REOPEN)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)

    # -- the job ------------------------------------------------------------------------
    def create(self, config: dict[str, Any]) -> bool:
        """Store the job's config; False when the job already exists (it is kept)."""
        created = bool(self.client.set(self.keys.config, json.dumps(config), nx=True))
        if created:
            self.client.hset(self.keys.meta, "created", time.time())
            self.client.sadd(JOBS, self.job_id)
        return created

    def exists(self) -> bool:
        return bool(self.client.exists(self.keys.config))

    def config(self) -> dict[str, Any]:
        raw = self.client.get(self.keys.config)
        if raw is None:
            raise KeyError(f"no job {self.job_id!r} in this Redis")
        return cast(dict[str, Any], json.loads(cast(bytes, raw)))

    def mark_started(self) -> None:
        self.client.hsetnx(self.keys.meta, "started", time.time())
        self.client.hdel(self.keys.meta, "finished")

    def mark_finished(self) -> None:
        self.client.hset(self.keys.meta, "finished", time.time())

    def meta(self) -> dict[str, float]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.meta))
        return {_s(k): float(v) for k, v in raw.items()}

    # -- planning -----------------------------------------------------------------------
    def filter_unplanned(self, ids: Sequence[str]) -> list[bool]:
        """For each id, True when it was never planned in this job."""
        if not ids:
            return []
        known = cast(list[int], self.client.smismember(self.keys.planned, list(ids)))
        return [not k for k in known]

    def next_batch_number(self) -> int:
        return int(self.client.incr(self.keys.batch_seq))

    def add_batch(
        self, batch_id: str, files: Sequence[PlannedFile], *, new_files: bool = True
    ) -> None:
        """Write a batch (and, when ``new_files``, its files as planned) in one transaction.

        ``new_files=False``: a batch of files planned before (``retry``)."""
        ids = [f.file_id for f in files]
        pipe = self.client.pipeline(transaction=True)
        if new_files:
            pipe.hset(self.keys.files, mapping={f.file_id: f.to_json() for f in files})
            pipe.sadd(self.keys.planned, *ids)
            pipe.hincrby(self.keys.counts, "planned", len(ids))
        pipe.set(self.keys.batch(batch_id), json.dumps(ids))
        pipe.sadd(self.keys.batches, batch_id)
        pipe.execute()

    def mark_enqueued(self, batch_id: str) -> None:
        self.client.sadd(self.keys.enqueued, batch_id)

    def unenqueued_batches(self) -> list[str]:
        """Batches written but never handed to the broker (the planner died in between)."""
        raw = cast(set[bytes], self.client.sdiff([self.keys.batches, self.keys.enqueued]))
        return sorted(_s(b) for b in raw)

    def record_skipped_at_plan(self, uri: str, reason: str, state: State) -> bool:
        """A file refused at planning (not DICOM, unreadable): planned and settled at once.

        Returns False when that file was already planned (a re-plan adds nothing)."""
        fid = file_id(uri)
        if not self.client.sadd(self.keys.planned, fid):
            return False
        self.client.hincrby(self.keys.counts, "planned", 1)
        self.record_many([(fid, FileOutcome(uri, state, reason), time.time())])
        return True

    def batch_ids(self) -> list[str]:
        return sorted(_s(b) for b in cast(set[bytes], self.client.smembers(self.keys.batches)))

    def batch(self, batch_id: str) -> list[PlannedFile]:
        raw = self.client.get(self.keys.batch(batch_id))
        if raw is None:
            raise KeyError(f"no batch {batch_id!r} in job {self.job_id!r}")
        return self.files(json.loads(cast(bytes, raw)))

    def files(self, ids: Sequence[str]) -> list[PlannedFile]:
        if not ids:
            return []
        rows = cast(list[bytes | None], self.client.hmget(self.keys.files, list(ids)))
        return [PlannedFile.from_json(r) for r in rows if r is not None]

    # -- outcomes -----------------------------------------------------------------------
    def record_many(self, entries: Iterable[Recorded], *, worker: str | None = None) -> int:
        """Write outcomes; idempotent. Returns how many changed a file's state."""
        argv: list[str | int] = []
        for fid, outcome, at in entries:
            data = outcome.to_json()
            data["at"] = round(at, 3)
            if worker:
                data["worker"] = worker
            argv += [
                fid,
                str(outcome.state),
                json.dumps(data, separators=(",", ":")),
                int(at),
                outcome.bytes,
                int(outcome.warning),
                int(outcome.transcoded),
            ]
        if not argv:
            return 0
        k = self.keys
        keys = [k.state, k.outcome, k.counts, k.failures, k.timeline, k.timeline_bytes]
        return int(cast(int, self._record(keys=keys, args=argv)))

    def stored_ids(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        states = cast(list[bytes | None], self.client.hmget(self.keys.state, list(ids)))
        return {fid for fid, s in zip(ids, states, strict=True) if s == b"stored"}

    def states(self, ids: Sequence[str]) -> dict[str, str | None]:
        if not ids:
            return {}
        states = cast(list[bytes | None], self.client.hmget(self.keys.state, list(ids)))
        return {fid: _s(s) if s else None for fid, s in zip(ids, states, strict=True)}

    def counts(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.counts))
        counts = {name: 0 for name in _COUNTERS}
        counts.update({_s(k): int(v) for k, v in raw.items()})
        settled = counts["stored"] + counts["failed"] + counts["skipped"]
        counts["in_flight"] = counts["planned"] - settled
        return counts

    def failed_ids(self) -> list[str]:
        return sorted(_s(f) for f in cast(set[bytes], self.client.smembers(self.keys.failures)))

    def reopen(self, ids: Sequence[str]) -> int:
        """Put failed files back in flight so a new batch can send them again."""
        if not ids:
            return 0
        k = self.keys
        return int(cast(int, self._reopen(keys=[k.state, k.counts, k.failures], args=list(ids))))

    def iter_outcomes(self) -> Iterator[tuple[str, FileOutcome, dict[str, Any]]]:
        """Every recorded outcome: (file id, outcome, extra fields such as worker and at)."""
        for fid, raw in self.client.hscan_iter(self.keys.outcome, count=1000):
            data = json.loads(raw)
            extra = {k: data[k] for k in ("worker", "at") if k in data}
            yield _s(fid), outcome_from_json(raw), extra

    def timeline(self) -> dict[int, tuple[int, int]]:
        """Epoch second -> (files stored, bytes stored) in that second."""
        files = cast(dict[bytes, bytes], self.client.hgetall(self.keys.timeline))
        nbytes = cast(dict[bytes, bytes], self.client.hgetall(self.keys.timeline_bytes))
        return {int(sec): (int(n), int(nbytes.get(sec, b"0"))) for sec, n in sorted(files.items())}

    def to_store_result(self, server: str) -> StoreResult:
        result = StoreResult(server)
        result.outcomes = [o for _, o, _ in self.iter_outcomes()]
        meta = self.meta()
        result.started = meta.get("started", meta.get("created", 0.0))
        result.finished = meta.get("finished", time.time())
        return result

    # -- deliveries and batch leases ------------------------------------------------------
    def deliveries(self, task_id: str) -> int:
        """Count one more start of ``task_id``; returns the starts not yet finished."""
        key = self.keys.deliveries(task_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, _DELIVERY_TTL)
        return int(pipe.execute()[0])

    def delivery_done(self, task_id: str) -> None:
        """The task ran to its end: earlier deaths were not the batch's fault."""
        self.client.delete(self.keys.deliveries(task_id))

    def claim_batch(self, batch_id: str, token: str, ttl: float) -> bool:
        """Take the batch's running lease; False while another live delivery holds it."""
        return bool(self.client.set(self.keys.running(batch_id), token, nx=True, px=int(ttl * 1e3)))

    def refresh_batch(self, batch_id: str, token: str, ttl: float) -> bool:
        key = self.keys.running(batch_id)
        return bool(self._refresh(keys=[key], args=[token, int(ttl * 1e3)]))

    def release_batch(self, batch_id: str, token: str) -> None:
        self._release(keys=[self.keys.running(batch_id)], args=[token])

    def batch_lease_ttl(self, batch_id: str) -> float:
        ms = int(self.client.pttl(self.keys.running(batch_id)))
        return max(0.0, ms / 1e3)

    def batch_holder(self, batch_id: str) -> str | None:
        raw = self.client.get(self.keys.running(batch_id))
        return _s(cast(bytes, raw)) if raw is not None else None
