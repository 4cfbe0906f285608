"""The Ledger: one job's plan and outcomes in Redis (see the package's docstring)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, cast

import redis

from migrator.errors import JobGone
from migrator.keys import JOBS, JobKeys
from migrator.ledger import scripts
from migrator.ledger.encoding import (
    CODE,
    COUNTERS,
    IN_FLIGHT,
    NAME,
    PlannedFile,
    Recorded,
    latest_lines,
    outcome_line,
    owner_id,
    owner_value,
    pack,
    split_id,
    uid_key,
    unpack,
    uri_id,
)
from migrator.ledger.readahead import ReadAhead, Row, file_rows
from migrator.ledger.scripts import BUCKET_DIGITS
from migrator.ledger.sessions import Sessions, active_seconds
from migrator.outcomes import FileOutcome, State, StoreResult

_DELIVERY_TTL = 7 * 24 * 3600


def list_jobs(client: redis.Redis) -> list[str]:
    return sorted(_s(j) for j in cast(set[bytes], client.smembers(JOBS)))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Ledger(Sessions):
    """One job's plan and outcomes. Cheap to create; holds no state but the client."""

    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.keys = JobKeys(job_id)
        self._record = client.register_script(scripts.RECORD)
        self._reopen = client.register_script(scripts.REOPEN)
        self._reopen_stored = client.register_script(scripts.REOPEN_STORED)
        self._unplanned = client.register_script(scripts.UNPLANNED)
        #: Settled batches read while the job ran (`run`'s wait); None: read all at the end
        self.ahead: ReadAhead | None = None
        self._add = client.register_script(scripts.ADD)
        self._claim = client.register_script(scripts.CLAIM)
        self._take_over = client.register_script(scripts.TAKE_OVER)
        self._refresh = client.register_script(scripts.REFRESH)
        self._release = client.register_script(scripts.RELEASE)

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

    def meta(self) -> dict[str, float]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.meta))
        return {_s(k): float(v) for k, v in raw.items()}

    # -- planning -----------------------------------------------------------------------
    def filter_unplanned(self, uris: Sequence[str]) -> list[bool]:
        """For each URI, True when it was never planned in this job (one round trip)."""
        if not uris:
            return []
        hashes = [uri_id(u) for u in uris]
        flags = cast(list[int], self._unplanned(args=[self.keys.plan_bucket(""), *hashes]))
        return [bool(f) for f in flags]

    def next_batch_number(self) -> int:
        return int(self.client.incr(self.keys.batch_seq))

    def add_batch(self, batch_id: str, files: Sequence[PlannedFile]) -> list[PlannedFile]:
        """Write the batch's files that were never planned, atomically (one round trip
        when all are new); returns them with their file ids. A URI planned before (a
        re-plan, a manifest that repeats a line) is left out: [] when none is new."""
        todo = list(files)
        while todo:
            known = self._write(batch_id, todo, IN_FLIGHT * len(todo), enqueued=False)
            if not known:
                return [replace(f, file_id=f"{batch_id}:{i}") for i, f in enumerate(todo)]
            todo = [f for f, new in zip(todo, known, strict=True) if new]
        return []

    def mark_priority(self, file_ids: Sequence[str], name: str) -> None:
        """Note ``file_ids`` as files of the priority class ``name`` (for the report)."""
        if file_ids:
            self.client.hset(self.keys.priority_files, mapping=dict.fromkeys(file_ids, name))

    def priority_files(self) -> dict[str, str]:
        """File id -> priority class, of the files a priority list or `urgent` named."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.priority_files))
        return {_s(k): _s(v) for k, v in raw.items()}

    def add_refused(self, refused: Sequence[tuple[str, State, str]]) -> int:
        """Files refused at planning (not DICOM, unreadable): planned and settled at once,
        as one batch that is never enqueued. ``refused``: (uri, state, reason). Returns how
        many were new."""
        todo = list(refused)
        batch_id = ""
        while todo:
            batch_id = batch_id or f"p{self.next_batch_number():07d}"
            files = [PlannedFile(uri, 0, "", "", "", "", "") for uri, _, _ in todo]
            known = self._write(batch_id, files, IN_FLIGHT * len(files), enqueued=True)
            if not known:
                break
            todo = [r for r, new in zip(todo, known, strict=True) if new]
        if not todo:
            return 0
        now = time.time()
        self.record_many(
            (f"{batch_id}:{i}", FileOutcome(uri, state, reason, attempts=0), now)
            for i, (uri, state, reason) in enumerate(todo)
        )
        return len(todo)

    def _write(
        self, batch_id: str, files: Sequence[PlannedFile], states: str, *, enqueued: bool
    ) -> list[int]:
        """[] when written; else one flag per file (1 = new) and nothing was written."""
        k = self.keys
        return cast(
            list[int],
            self._add(
                keys=[k.counts, k.batches, k.batch(batch_id), k.states(batch_id), k.enqueued],
                args=[
                    k.plan_bucket(""),
                    batch_id,
                    pack(files),
                    states,
                    len(files),
                    int(enqueued),
                    *(uri_id(f.uri) for f in files),
                ],
            ),
        )

    def mark_enqueued(self, batch_id: str) -> None:
        self.client.sadd(self.keys.enqueued, batch_id)

    def unenqueued_batches(self) -> list[str]:
        """Batches written but never handed to the broker (the planner died in between)."""
        raw = cast(set[bytes], self.client.sdiff([self.keys.batches, self.keys.enqueued]))
        return sorted(_s(b) for b in raw)

    def batch_ids(self) -> list[str]:
        return sorted(_s(b) for b in cast(set[bytes], self.client.smembers(self.keys.batches)))

    def batch(self, batch_id: str) -> list[PlannedFile]:
        raw = self.client.get(self.keys.batch(batch_id))
        if raw is None:
            raise KeyError(f"no batch {batch_id!r} in job {self.job_id!r}")
        return unpack(batch_id, cast(bytes, raw))

    def batch_states(self, batch_id: str) -> str:
        """One character per file of the batch: ``.`` in flight, ``s``/``f``/``k``."""
        return _s(cast(bytes, self.client.get(self.keys.states(batch_id)) or b""))

    def files(self, ids: Sequence[str]) -> list[PlannedFile]:
        """The planned files with these ids, in the order given (unknown ids left out)."""
        by_batch: dict[str, list[PlannedFile]] = {}
        out = []
        for fid in ids:
            batch_id, index = split_id(fid)
            if batch_id not in by_batch:
                try:
                    by_batch[batch_id] = self.batch(batch_id)
                except KeyError:
                    by_batch[batch_id] = []
            files = by_batch[batch_id]
            if 0 <= index < len(files):
                out.append(files[index])
        return out

    # -- SOP Instance UIDs ---------------------------------------------------------------
    def claim_uids(self, files: Sequence[PlannedFile]) -> list[str]:
        """Claim the SOP Instance UIDs of files about to be sent, in one round trip. Per
        file: ``""`` when the file owns its UID (first to claim it, or claimed it before),
        else the file id of the owner (an earlier file, maybe of the same batch), which may
        also be a different UID whose hash met this one's (the caller checks)."""
        if not files:
            return []
        args: list[str | bytes] = [self.keys.uid_bucket("")]
        for f in files:
            args.append(uid_key(f.sop_instance_uid))
            args.append(owner_value(f.file_id))
        owners = cast(list[bytes], self._claim(args=args))
        return [owner_id(_s(o)) if o else "" for o in owners]

    def take_over_uid(self, new: PlannedFile, old_owner_id: str) -> bool:
        """Make ``new`` the owner of its UID in place of ``old_owner_id`` (a file that was
        not stored); False when a third file took the UID meanwhile."""
        args: list[str | bytes] = [
            self.keys.uid_bucket(""),
            uid_key(new.sop_instance_uid),
            owner_value(old_owner_id),
            owner_value(new.file_id),
        ]
        return bool(self._take_over(args=args))

    def uid_owner(self, sop_instance_uid: str) -> str | None:
        """The file id that claimed this UID (or a UID of the same hash), if any."""
        key = uid_key(sop_instance_uid)
        digits = BUCKET_DIGITS
        raw = self.client.hget(self.keys.uid_bucket(key[:digits].decode()), key[digits:])
        return owner_id(_s(cast(bytes, raw))) if raw is not None else None

    # -- outcomes -----------------------------------------------------------------------
    def record_many(
        self,
        entries: Iterable[Recorded],
        *,
        worker: str | None = None,
        plan: Sequence[PlannedFile] | None = None,
        created: float | None = None,
    ) -> int:
        """Write outcomes (idempotent); one round trip per run of consecutive files of a
        batch. ``plan``: the batch's files when the caller holds them (saves reading them
        back). ``created``: the job's creation stamp the caller read; when the job now has
        another (lost and planned anew), nothing is written and JobGone is raised. Returns
        how many changed a file's state."""
        groups: dict[str, dict[int, tuple[FileOutcome, float]]] = defaultdict(dict)
        for fid, outcome, at in entries:
            batch_id, index = split_id(fid)
            groups[batch_id][index] = (outcome, at)
        changed = 0
        for batch_id, by_index in groups.items():
            if plan and plan[0].file_id.rpartition(":")[0] == batch_id:
                files: Sequence[PlannedFile] = plan
            else:
                files = self._plan_of(batch_id)
            indexes = sorted(by_index)
            first, last = indexes[0], indexes[-1]
            codes, lines, secs, sizes, flags = [], [], [], [], []
            for index in range(first, last + 1):
                if index not in by_index:
                    codes.append("-")
                    lines.append("-")
                    secs.append("0")
                    sizes.append("0")
                    flags.append("00")
                    continue
                outcome, at = by_index[index]
                planned = files[index] if index < len(files) else None
                codes.append(CODE[outcome.state])
                lines.append(outcome_line(index, outcome, at, planned))
                secs.append(str(int(at)))
                sizes.append(str(outcome.bytes))
                flags.append(f"{int(outcome.warning)}{int(outcome.transcoded)}")
            k = self.keys
            written = int(
                cast(
                    int,
                    self._record(
                        keys=[
                            k.counts,
                            k.failures,
                            k.timeline,
                            k.timeline_bytes,
                            k.states(batch_id),
                            k.outcomes(batch_id),
                            k.meta,
                        ],
                        args=[
                            batch_id,
                            first,
                            "".join(codes),
                            "\n".join(lines),
                            # The worker once per group, not per line: a line of its own
                            # that sets it for the lines after it.
                            json.dumps({"w": worker or ""}, separators=(",", ":")),
                            " ".join(secs),
                            " ".join(sizes),
                            " ".join(flags),
                            # As redis-py wrote it (repr of the float): compared as text.
                            "" if created is None else repr(float(created)),
                        ],
                    ),
                )
            )
            if written < 0:
                raise JobGone(self.job_id)
            changed += written
        return changed

    def update_plan(self, batch_id: str, files: Sequence[PlannedFile]) -> None:
        """Replace a batch's planned files by what its worker learnt (headers read for files
        planned from a manifest): same files, same order. Only the batch's lease holder
        calls it."""
        self.client.set(self.keys.batch(batch_id), pack(files))

    def compact_outcomes(self, batch_id: str) -> bool:
        """Rewrite a settled batch's outcome string with one line per file (see the module
        docstring). Skipped if the batch is not settled or changes meanwhile."""
        key = self.keys.outcomes(batch_id)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key, self.keys.states(batch_id))  # type: ignore[no-untyped-call]
                states = _s(cast(bytes, pipe.get(self.keys.states(batch_id)) or b""))
                if not states or IN_FLIGHT in states:
                    return False
                raw = cast(bytes, pipe.get(key) or b"")
                latest = latest_lines(raw)
                lines: list[bytes] = []
                current = None
                for index in sorted(latest):
                    w, _, text = latest[index]
                    if w != current:
                        lines.append(json.dumps({"w": w}, separators=(",", ":")).encode())
                        current = w
                    lines.append(text)
                pipe.multi()
                pipe.set(key, b"\n".join(lines) + b"\n")
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def _plan_of(self, batch_id: str) -> list[PlannedFile]:
        try:
            return self.batch(batch_id)
        except KeyError:
            return []

    def stored_ids(self, ids: Sequence[str]) -> set[str]:
        return {fid for fid, s in self.states(ids).items() if s == "stored"}

    def states(self, ids: Sequence[str]) -> dict[str, str | None]:
        """``stored``/``failed``/``skipped``, or None while in flight."""
        cache: dict[str, str] = {}
        out: dict[str, str | None] = {}
        for fid in ids:
            batch_id, index = split_id(fid)
            if batch_id not in cache:
                cache[batch_id] = self.batch_states(batch_id)
            code = cache[batch_id][index : index + 1]
            out[fid] = NAME.get(code)
        return out

    def counts(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.counts))
        counts = {name: 0 for name in COUNTERS}
        counts.update({_s(k): int(v) for k, v in raw.items()})
        settled = counts["stored"] + counts["failed"] + counts["skipped"]
        counts["in_flight"] = counts["planned"] - settled
        return counts

    def failed_ids(self) -> list[str]:
        return sorted(_s(f) for f in cast(set[bytes], self.client.smembers(self.keys.failures)))

    def reopen(self, ids: Sequence[str]) -> int:
        """Put failed files back in flight (``retry``); their batches can then run again."""
        by_batch: dict[str, list[int]] = defaultdict(list)
        for fid in ids:
            batch_id, index = split_id(fid)
            by_batch[batch_id].append(index)
        k = self.keys
        n = 0
        for batch_id, indexes in by_batch.items():
            n += int(
                cast(
                    int,
                    self._reopen(
                        keys=[k.counts, k.failures, k.states(batch_id)], args=[batch_id, *indexes]
                    ),
                )
            )
        return n

    def reopen_stored(self, ids: Sequence[str]) -> int:
        """Put stored files back in flight: the destination does not hold them after all
        (`retry --missing`). Their stored count, bytes and timeline second are taken back,
        so that sending them again counts them once. Returns how many were stored."""
        wanted = set(ids)
        if not wanted:
            return 0
        by_batch: dict[str, list[str]] = defaultdict(list)
        # One pass over the job for the outcomes' seconds and bytes (a few files a time).
        for fid, outcome, extra in self.iter_outcomes():
            if fid in wanted and outcome.state is State.STORED:
                batch_id, index = split_id(fid)
                by_batch[batch_id] += [
                    str(index),
                    str(int(extra["at"])),  # the second RECORD counted it in
                    str(outcome.bytes),
                    str(int(outcome.warning)),
                    str(int(outcome.transcoded)),
                ]
        k = self.keys
        n = 0
        for batch_id, args in by_batch.items():
            keys = [k.counts, k.states(batch_id), k.timeline, k.timeline_bytes]
            n += int(cast(int, self._reopen_stored(keys=keys, args=args)))
        return n

    def iter_batches(
        self, *, chunk: int = 64, atomic: bool = False
    ) -> Iterator[tuple[str, list[PlannedFile], str, bytes]]:
        """(batch id, planned files, states, outcome lines) for every batch, pipelined;
        ``atomic``: each chunk read in one MULTI (states and outcomes of the same moment)."""
        ids = self.batch_ids()
        k = self.keys
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = self.client.pipeline(transaction=atomic)
            for batch_id in part:
                pipe.get(k.batch(batch_id))
                pipe.get(k.states(batch_id))
                pipe.get(k.outcomes(batch_id))
            rows = pipe.execute()
            for n, batch_id in enumerate(part):
                blob, states, lines = rows[3 * n : 3 * n + 3]
                if blob is None:
                    continue
                yield batch_id, unpack(batch_id, blob), _s(states or b""), lines or b""

    def iter_files(self) -> Iterator[Row]:
        """Every planned file: (planned, its outcome or None while in flight, extra fields:
        worker, at, planned: the PlannedFile again, for the per-study table), states and
        outcomes of each batch read in one MULTI.

        One pass for both, so that a report of a job whose workers are still sending counts
        each file once: read in two passes, a file settled between them was in neither
        (a run stopped by --timeout showed planned 395 for 400 files).

        Batches in ``self.ahead`` (read while the job ran, ``migrator.ledger.readahead``)
        are taken from there when their states and outcome log are unchanged: only those
        two are read for them, in the same MULTI.
        """
        ahead = self.ahead.batches if self.ahead is not None else {}
        ids = self.batch_ids()
        k = self.keys
        for start in range(0, len(ids), 64):
            part = ids[start : start + 64]
            pipe = self.client.pipeline(transaction=True)
            for batch_id in part:
                if batch_id in ahead:
                    pipe.get(k.states(batch_id))
                    pipe.strlen(k.outcomes(batch_id))
                else:
                    pipe.get(k.batch(batch_id))
                    pipe.get(k.states(batch_id))
                    pipe.get(k.outcomes(batch_id))
            got = pipe.execute()
            i = 0
            for batch_id in part:
                known = ahead.get(batch_id)
                if known is not None:
                    states, log_len = got[i : i + 2]
                    i += 2
                    if _s(states or b"") == known.states and int(log_len) == known.log_len:
                        yield from known.rows
                        continue
                    # Changed since it was read ahead (reopened): this batch read again whole.
                    pipe = self.client.pipeline(transaction=True)
                    pipe.get(k.batch(batch_id))
                    pipe.get(k.states(batch_id))
                    pipe.get(k.outcomes(batch_id))
                    blob, states, raw = pipe.execute()
                else:
                    blob, states, raw = got[i : i + 3]
                    i += 3
                if blob is None:
                    continue
                yield from file_rows(unpack(batch_id, blob), _s(states or b""), raw or b"")

    def iter_outcomes(self) -> Iterator[tuple[str, FileOutcome, dict[str, Any]]]:
        """Every settled file: (file id, outcome, extra fields: worker, at, planned)."""
        for planned, outcome, extra in self.iter_files():
            if outcome is not None:
                yield planned.file_id, outcome, extra

    def iter_in_flight(self) -> Iterator[PlannedFile]:
        """Every planned file without an outcome yet."""
        for planned, outcome, _ in self.iter_files():
            if outcome is None:
                yield planned

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
        result.active = active_seconds(meta, result.finished)
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

    def open_delivery(self, batch_id: str, token: str) -> list[str]:
        """Note that delivery ``token`` of the batch began; returns the tokens of earlier
        deliveries that began and never ended in good order (lost with their process, or
        cut from Redis): what they sent and did not record is unknown."""
        key = self.keys.opened(batch_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.smembers(key)
        pipe.sadd(key, token)
        pipe.expire(key, _DELIVERY_TTL)
        before = cast(set[bytes], pipe.execute()[0])
        return sorted(t for t in map(_s, before) if t != token)

    def close_deliveries(self, batch_id: str, tokens: Sequence[str]) -> None:
        """These deliveries ended, or what they left unknown was looked up."""
        if tokens:
            self.client.srem(self.keys.opened(batch_id), *tokens)

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
