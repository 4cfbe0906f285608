"""The job ledger in Redis: what was planned, and the one outcome of every planned file.

Invariant: ``planned = stored + failed + skipped + in flight``, and at the end of a job
``in flight = 0``. Counters move only inside Lua scripts that look at a file's current state
first, so a batch delivered twice (a killed worker, a visibility timeout) never counts a file
twice, and a stored file is never turned back into a failure by a late duplicate.

Compact, because a job may hold hundreds of millions of files (docs/scale.md has the
measured bytes per file):

* A file's identity in the ledger is its place in a batch, ``"<batch>:<index>"``. The
  batch's files are one zlib-compressed JSON value (URIs and UIDs compress well together).
* The state of every file of a batch is one byte in a string (``.`` in flight, ``s``
  stored, ``f`` failed, ``k`` skipped): checking and setting it costs a GETRANGE/SETRANGE
  on a contiguous range, whatever the number of files.
* Outcomes are appended to one string per batch, one short JSON line per file (the last
  line of a file wins); a stored file's line holds only what is not in the plan.
* "Was this URI planned already?" is answered by 65,536 small hashes keyed by a prefix of
  the URI's hash (Redis keeps small hashes as compact listpacks).
* "Which file was sent first with this SOP Instance UID?" likewise: 65,536 small hashes,
  8 binary bytes of the UID's hash -> the owner's file id (packed into one integer), set
  by the worker just before sending (``claim_uids``; migrator/duplicates.py settles the
  later files).

Keys come from :mod:`migrator.keys`.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import redis

from migrator.keys import JOBS, JobKeys
from migrator.outcomes import FileOutcome, State, StoreResult

#: (file id, outcome, epoch seconds when it finished)
Recorded = tuple[str, FileOutcome, float]

_COUNTERS = ("planned", "stored", "failed", "skipped", "bytes_stored", "warnings", "transcoded")
_CODE = {State.STORED: "s", State.FAILED: "f", State.SKIPPED: "k"}
_STATE = {v: k for k, v in _CODE.items()}
_NAME = {"s": "stored", "f": "failed", "k": "skipped"}
IN_FLIGHT = "."
#: Hex digits of the URI hash that pick the dedup bucket: 16**4 = 65,536 buckets, each a
#: listpack up to ``hash-max-listpack-entries`` (512 by default in Redis 7), so up to ~28
#: million files per job stay compact (~6 million at 128); measured in docs/scale.md.
_BUCKET_DIGITS = 4

# Record the outcomes of a contiguous run of one batch's files.
# KEYS: counts, failures, timeline, timeline_bytes, state string, outcome string
# ARGV: batch id, first index, new state codes (one char per file, '-' = leave alone),
#       outcome lines (one per changed file, '\n'-joined, in order), per-file seconds
#       (space-separated epoch seconds), per-file bytes, per-file warning+transcoded flags
_RECORD = """
local first = tonumber(ARGV[2])
local new = ARGV[3]
local n = #new
local old = redis.call('GETRANGE', KEYS[5], first, first + n - 1)
local lines = {}
for line in string.gmatch(ARGV[4], '[^\\n]+') do lines[#lines + 1] = line end
local secs, sizes, flags = {}, {}, {}
for v in string.gmatch(ARGV[6], '%S+') do secs[#secs + 1] = v end
for v in string.gmatch(ARGV[7], '%S+') do sizes[#sizes + 1] = tonumber(v) end
for v in string.gmatch(ARGV[8], '%S+') do flags[#flags + 1] = v end
local names = {s = 'stored', f = 'failed', k = 'skipped'}
local result, out = {}, {}
local delta = {stored = 0, failed = 0, skipped = 0, bytes_stored = 0, warnings = 0, transcoded = 0}
local per_sec, per_sec_bytes = {}, {}
local changed = 0
for i = 1, n do
  local was = string.sub(old, i, i)
  local now = string.sub(new, i, i)
  if now ~= '-' and was ~= 's' and was ~= '' then
    if was ~= '.' then
      delta[names[was]] = delta[names[was]] - 1
      if was == 'f' then redis.call('SREM', KEYS[2], ARGV[1] .. ':' .. (first + i - 1)) end
    end
    delta[names[now]] = delta[names[now]] + 1
    if now == 'f' then redis.call('SADD', KEYS[2], ARGV[1] .. ':' .. (first + i - 1)) end
    if now == 's' then
      local sec = secs[i]
      per_sec[sec] = (per_sec[sec] or 0) + 1
      per_sec_bytes[sec] = (per_sec_bytes[sec] or 0) + sizes[i]
      delta.bytes_stored = delta.bytes_stored + sizes[i]
      if string.sub(flags[i], 1, 1) == '1' then delta.warnings = delta.warnings + 1 end
      if string.sub(flags[i], 2, 2) == '1' then delta.transcoded = delta.transcoded + 1 end
    end
    result[i] = now
    out[#out + 1] = lines[i]
    changed = changed + 1
  else
    result[i] = was
  end
end
if changed == 0 then return 0 end
redis.call('SETRANGE', KEYS[5], first, table.concat(result))
redis.call('APPEND', KEYS[6], ARGV[5] .. '\\n' .. table.concat(out, '\\n') .. '\\n')
for name, d in pairs(delta) do
  if d ~= 0 then redis.call('HINCRBY', KEYS[1], name, d) end
end
for sec, c in pairs(per_sec) do redis.call('HINCRBY', KEYS[3], sec, c) end
for sec, b in pairs(per_sec_bytes) do redis.call('HINCRBY', KEYS[4], sec, b) end
return changed
"""

# Put failed files of one batch back in flight. KEYS: counts, failures, state string.
# ARGV: batch id, indexes.
_REOPEN = """
local n = 0
for i = 2, #ARGV do
  local idx = tonumber(ARGV[i])
  if redis.call('GETRANGE', KEYS[3], idx, idx) == 'f' then
    redis.call('SETRANGE', KEYS[3], idx, '.')
    redis.call('SREM', KEYS[2], ARGV[1] .. ':' .. idx)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[1], 'failed', -n) end
return n
"""

# Which URI hashes are not planned yet. KEYS: none (bucket keys are built from ARGV[1], a
# prefix sharing the job's hash tag). ARGV: prefix, then hashes. Returns 1 = new, 0 = known.
_UNPLANNED = """
local out = {}
for i = 2, #ARGV do
  local h = ARGV[i]
  local bucket = ARGV[1] .. string.sub(h, 1, DIGITS)
  out[#out + 1] = 1 - redis.call('HEXISTS', bucket, string.sub(h, DIGITS + 1))
end
return out
""".replace("DIGITS", str(_BUCKET_DIGITS))

# Write a batch: dedup marks, the packed files, the state string, the counters. Atomic and
# all-or-nothing: when some URI is planned already, the marks just made are undone and the
# flags returned (1 = new), so the caller writes the batch again without the known ones.
# KEYS: counts, batches, batch blob, state string, enqueued (for refusals)
# ARGV: bucket prefix, batch id, blob, initial states, number planned, enqueued flag, hashes
_ADD = """
local flags, set, known = {}, {}, false
for i = 7, #ARGV do
  local h = ARGV[i]
  local bucket = ARGV[1] .. string.sub(h, 1, DIGITS)
  local field = string.sub(h, DIGITS + 1)
  local new = redis.call('HSETNX', bucket, field, ARGV[2])
  flags[#flags + 1] = new
  if new == 1 then set[#set + 1] = {bucket, field} else known = true end
end
if known then
  for _, bf in ipairs(set) do redis.call('HDEL', bf[1], bf[2]) end
  return flags
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('SET', KEYS[4], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'planned', tonumber(ARGV[5]))
redis.call('SADD', KEYS[2], ARGV[2])
if ARGV[6] == '1' then redis.call('SADD', KEYS[5], ARGV[2]) end
return {}
""".replace("DIGITS", str(_BUCKET_DIGITS))


# Claim SOP Instance UIDs for files about to be sent: the first file to claim a UID owns it.
# KEYS: none (bucket keys are built from ARGV[1], a prefix sharing the job's hash tag).
# ARGV: prefix, then per file its UID key (DIGITS hex digits + the binary field) and its
# file id as stored (``_owner_value``). Returns, per file, the stored id of the owner when
# another file owns the UID, else '' (new, or owned by this very file: a redelivered or
# retried batch).
_CLAIM = """
local out = {}
for i = 2, #ARGV, 2 do
  local h = ARGV[i]
  local bucket = ARGV[1] .. string.sub(h, 1, DIGITS)
  local field = string.sub(h, DIGITS + 1)
  local me = ARGV[i + 1]
  local owner = ''
  if redis.call('HSETNX', bucket, field, me) == 0 then
    owner = redis.call('HGET', bucket, field)
    if owner == me then owner = '' end
  end
  out[#out + 1] = owner
end
return out
""".replace("DIGITS", str(_BUCKET_DIGITS))

# Hand a UID over from its owner (a file that failed) to another file. KEYS: none (the
# bucket is built from ARGV[1] as in _CLAIM). ARGV: prefix, UID key, old owner, new owner.
# Returns 1 when the new file owns the UID now (also when it did already), else 0.
_TAKE_OVER = """
local bucket = ARGV[1] .. string.sub(ARGV[2], 1, DIGITS)
local field = string.sub(ARGV[2], DIGITS + 1)
local now = redis.call('HGET', bucket, field)
if now == ARGV[4] then return 1 end
if now == ARGV[3] or not now then
  redis.call('HSET', bucket, field, ARGV[4])
  return 1
end
return 0
""".replace("DIGITS", str(_BUCKET_DIGITS))

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


def uri_id(uri: str) -> str:
    """Deterministic identity of a listed URI (planning dedup): the same URI is the same file."""
    return hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def uid_key(sop_instance_uid: str) -> bytes:
    """Where a SOP Instance UID sits in the UID index: 4 hex digits naming the bucket, then
    the field, 8 binary bytes (80 bits of BLAKE2b in all: at 10⁹ files in one job, the
    chance that two different UIDs meet is ~4·10⁻⁷; a meeting is caught anyway, by the UIDs
    in the plan or the owner's header, and the file is sent)."""
    digest = hashlib.blake2b(
        sop_instance_uid.encode("utf-8", "surrogateescape"), digest_size=10
    ).digest()
    return digest[:2].hex().encode() + digest[2:]


#: Bits of the index in an owner stored as one integer (batches hold at most 10,000 files).
_INDEX_BITS = 14


def _owner_value(file_id: str) -> str:
    """A file id as the UID index stores it: ``b0000123:17`` (the planner's batches) as the
    integer 123 << 14 | 17, which a listpack keeps in 5 bytes up to 131,071 batches (9
    beyond) instead of 12 for the text; any other id as it is."""
    batch_id, index = split_id(file_id)
    digits = batch_id[1:]
    if (
        batch_id[:1] == "b"
        and digits.isdigit()
        and batch_id == f"b{int(digits):07d}"
        and index < 1 << _INDEX_BITS
    ):
        return str(int(digits) << _INDEX_BITS | index)
    return file_id


def _owner_id(value: str) -> str:
    if value.isdigit():
        n = int(value)
        return f"b{n >> _INDEX_BITS:07d}:{n & ((1 << _INDEX_BITS) - 1)}"
    return value


def split_id(file_id: str) -> tuple[str, int]:
    """``"b0000001:17"`` → (``"b0000001"``, 17)."""
    batch_id, _, index = file_id.rpartition(":")
    return batch_id, int(index)


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """What a worker needs to send one file. ``file_id`` is set when the batch is written."""

    uri: str
    size: int
    version: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str
    file_id: str = ""
    #: Where the dataset starts (after the File Meta) as the planner read it; -1 unknown.
    #: With it a worker sends a file whose size and mtime are unchanged without reading
    #: its header again.
    dataset_offset: int = -1

    def packed(self) -> list[Any]:
        # Not dataclasses.astuple: it deep-copies every field (a third of planning time).
        row: list[Any] = [
            self.uri,
            self.size,
            self.version,
            self.sop_class_uid,
            self.sop_instance_uid,
            self.transfer_syntax,
            self.study_uid,
        ]
        if self.dataset_offset >= 0:
            row.append(self.dataset_offset)
        return row


def _pack(files: Sequence[PlannedFile]) -> bytes:
    return zlib.compress(json.dumps([f.packed() for f in files], separators=(",", ":")).encode(), 6)


def _unpack(batch_id: str, raw: bytes) -> list[PlannedFile]:
    rows = json.loads(zlib.decompress(raw))
    # Rows of 7 fields were planned before the dataset offset was kept (-1: unknown).
    out = []
    for i, row in enumerate(rows):
        uri, size, version, sop_class, sop_instance, ts, study = row[:7]
        offset = row[7] if len(row) > 7 else -1
        out.append(
            PlannedFile(
                uri, size, version, sop_class, sop_instance, ts, study, f"{batch_id}:{i}", offset
            )
        )
    return out


def _line(index: int, outcome: FileOutcome, at: float, planned: PlannedFile | None) -> str:
    """One outcome as a short JSON line: what the plan does not already say."""
    data: dict[str, Any] = {"i": index, "t": round(at, 2)}
    if outcome.state is not State.STORED or outcome.reason:
        data["r"] = outcome.reason
    if outcome.status is not None and outcome.status != 0:
        data["st"] = outcome.status
    elif outcome.status == 0 and outcome.state is not State.STORED:
        data["st"] = 0
    if outcome.attempts != 1:
        data["a"] = outcome.attempts
    if outcome.seconds:
        data["s"] = round(outcome.seconds * 1000, 2)
    # The syntax sent: by default the planned one for a stored file, none otherwise;
    # "=" stands for the planned one.
    same = planned is not None and outcome.ts_sent == planned.transfer_syntax
    default = planned.transfer_syntax if planned and outcome.state is State.STORED else ""
    if outcome.ts_sent != default:
        data["x"] = "=" if same and outcome.ts_sent else outcome.ts_sent
    if outcome.warning:
        data["W"] = 1
    if outcome.transcoded:
        data["T"] = 1
    if planned is None or outcome.bytes != planned.size:
        data["b"] = outcome.bytes
    if planned is None or outcome.uri != planned.uri:
        data["u"] = outcome.uri
    if outcome.cause:
        data["c"] = outcome.cause
    return json.dumps(data, separators=(",", ":"))


def _outcome(data: dict[str, Any], state: State, planned: PlannedFile) -> FileOutcome:
    default = planned.transfer_syntax if state is State.STORED else ""
    ts_sent = data.get("x", default)
    if ts_sent == "=":
        ts_sent = planned.transfer_syntax
    return FileOutcome(
        uri=data.get("u", planned.uri),
        state=state,
        reason=data.get("r", ""),
        status=data.get("st", 0 if state is State.STORED else None),
        sop_class_uid=planned.sop_class_uid,
        sop_instance_uid=planned.sop_instance_uid,
        ts_original=planned.transfer_syntax,
        ts_sent=ts_sent,
        transcoded=bool(data.get("T")),
        warning=bool(data.get("W")),
        bytes=int(data.get("b", planned.size if state is State.STORED else 0)),
        attempts=int(data.get("a", 1)),
        seconds=float(data.get("s", 0.0)) / 1000,
        cause=str(data.get("c", "")),
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
        self._unplanned = client.register_script(_UNPLANNED)
        self._add = client.register_script(_ADD)
        self._claim = client.register_script(_CLAIM)
        self._take_over = client.register_script(_TAKE_OVER)
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
                    _pack(files),
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
        return _unpack(batch_id, cast(bytes, raw))

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
            args += [uid_key(f.sop_instance_uid), _owner_value(f.file_id)]
        owners = cast(list[bytes], self._claim(args=args))
        return [_owner_id(_s(o)) if o else "" for o in owners]

    def take_over_uid(self, new: PlannedFile, old_owner_id: str) -> bool:
        """Make ``new`` the owner of its UID in place of ``old_owner_id`` (a file that was
        not stored); False when a third file took the UID meanwhile."""
        args: list[str | bytes] = [
            self.keys.uid_bucket(""),
            uid_key(new.sop_instance_uid),
            _owner_value(old_owner_id),
            _owner_value(new.file_id),
        ]
        return bool(self._take_over(args=args))

    def uid_owner(self, sop_instance_uid: str) -> str | None:
        """The file id that claimed this UID (or a UID of the same hash), if any."""
        key = uid_key(sop_instance_uid)
        digits = _BUCKET_DIGITS
        raw = self.client.hget(self.keys.uid_bucket(key[:digits].decode()), key[digits:])
        return _owner_id(_s(cast(bytes, raw))) if raw is not None else None

    # -- outcomes -----------------------------------------------------------------------
    def record_many(
        self,
        entries: Iterable[Recorded],
        *,
        worker: str | None = None,
        plan: Sequence[PlannedFile] | None = None,
    ) -> int:
        """Write outcomes (idempotent); one round trip per run of consecutive files of a
        batch. ``plan``: the batch's files when the caller holds them (saves reading them
        back). Returns how many changed a file's state."""
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
                codes.append(_CODE[outcome.state])
                lines.append(_line(index, outcome, at, planned))
                secs.append(str(int(at)))
                sizes.append(str(outcome.bytes))
                flags.append(f"{int(outcome.warning)}{int(outcome.transcoded)}")
            k = self.keys
            changed += int(
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
                        ],
                    ),
                )
            )
        return changed

    def update_plan(self, batch_id: str, files: Sequence[PlannedFile]) -> None:
        """Replace a batch's planned files by what its worker learnt (headers read for files
        planned from a manifest): same files, same order. Only the batch's lease holder
        calls it."""
        self.client.set(self.keys.batch(batch_id), _pack(files))

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
                latest: dict[int, tuple[str, bytes]] = {}
                worker = ""
                for text in raw.splitlines():
                    data = json.loads(text)
                    if "i" not in data:
                        worker = data.get("w", "")
                    else:
                        latest[data["i"]] = (worker, text)
                lines: list[bytes] = []
                current = None
                for index in sorted(latest):
                    w, text = latest[index]
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
            out[fid] = _NAME.get(code)
        return out

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

    def iter_batches(
        self, *, chunk: int = 64
    ) -> Iterator[tuple[str, list[PlannedFile], str, bytes]]:
        """(batch id, planned files, states, outcome lines) for every batch, pipelined."""
        ids = self.batch_ids()
        k = self.keys
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = self.client.pipeline(transaction=False)
            for batch_id in part:
                pipe.get(k.batch(batch_id))
                pipe.get(k.states(batch_id))
                pipe.get(k.outcomes(batch_id))
            rows = pipe.execute()
            for n, batch_id in enumerate(part):
                blob, states, lines = rows[3 * n : 3 * n + 3]
                if blob is None:
                    continue
                yield batch_id, _unpack(batch_id, blob), _s(states or b""), lines or b""

    def iter_outcomes(self) -> Iterator[tuple[str, FileOutcome, dict[str, Any]]]:
        """Every settled file: (file id, outcome, extra fields: worker, at)."""
        for _, plan, states, raw in self.iter_batches():
            latest: dict[int, dict[str, Any]] = {}
            worker = ""
            for text in raw.splitlines():
                data = json.loads(text)
                if "i" not in data:
                    worker = data.get("w", "")
                    continue
                if worker:
                    data["w"] = worker
                latest[data["i"]] = data
            for index, planned in enumerate(plan):
                state = _STATE.get(states[index : index + 1])
                data = latest.get(index)
                if state is None or data is None:
                    continue
                extra = {"at": data["t"]}
                if "w" in data:
                    extra["worker"] = data["w"]
                yield planned.file_id, _outcome(data, state, planned), extra

    def iter_in_flight(self) -> Iterator[PlannedFile]:
        """Every planned file without an outcome yet."""
        for _, plan, states, _ in self.iter_batches():
            for index, planned in enumerate(plan):
                if states[index : index + 1] == IN_FLIGHT:
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
