"""How the ledger encodes a job: planned files packed per batch, file ids, UID index keys,
and one short JSON line per outcome (what the plan does not already say)."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from migrator.outcomes import FileOutcome, State

Recorded = tuple[str, FileOutcome, float]

COUNTERS = ("planned", "stored", "failed", "skipped", "bytes_stored", "warnings", "transcoded")
CODE = {State.STORED: "s", State.FAILED: "f", State.SKIPPED: "k"}
STATE = {v: k for k, v in CODE.items()}
NAME = {"s": "stored", "f": "failed", "k": "skipped"}
IN_FLIGHT = "."


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
INDEX_BITS = 14


def owner_value(file_id: str) -> str:
    """A file id as the UID index stores it: ``b0000123:17`` (the planner's batches) as the
    integer 123 << 14 | 17, which a listpack keeps in 5 bytes up to 131,071 batches (9
    beyond) instead of 12 for the text; any other id as it is."""
    batch_id, index = split_id(file_id)
    digits = batch_id[1:]
    if (
        batch_id[:1] == "b"
        and digits.isdigit()
        and batch_id == f"b{int(digits):07d}"
        and index < 1 << INDEX_BITS
    ):
        return str(int(digits) << INDEX_BITS | index)
    return file_id


def owner_id(value: str) -> str:
    if value.isdigit():
        n = int(value)
        return f"b{n >> INDEX_BITS:07d}:{n & ((1 << INDEX_BITS) - 1)}"
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
    #: Accession Number and Modality as the planner read them ("": none, or not read)
    accession: str = ""
    modality: str = ""

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
        if self.dataset_offset >= 0 or self.modality or self.accession:
            row.append(self.dataset_offset)
        if self.modality or self.accession:
            row.append(self.modality)
            if self.accession:
                row.append(self.accession)
        return row


def pack(files: Sequence[PlannedFile]) -> bytes:
    return zlib.compress(json.dumps([f.packed() for f in files], separators=(",", ":")).encode(), 6)


def unpack(batch_id: str, raw: bytes) -> list[PlannedFile]:
    rows = json.loads(zlib.decompress(raw))
    # Rows of 7 fields were planned before the dataset offset was kept (-1: unknown), rows
    # of 8 before the modality and the accession number were.
    out = []
    for i, row in enumerate(rows):
        uri, size, version, sop_class, sop_instance, ts, study = row[:7]
        n = len(row)
        out.append(
            PlannedFile(
                uri,
                size,
                version,
                sop_class,
                sop_instance,
                ts,
                study,
                f"{batch_id}:{i}",
                row[7] if n > 7 else -1,
                row[9] if n > 9 else "",
                row[8] if n > 8 else "",
            )
        )
    return out


def outcome_line(index: int, outcome: FileOutcome, at: float, planned: PlannedFile | None) -> str:
    """One outcome as a short JSON line: what the plan does not already say."""
    if (
        planned is not None
        and outcome.state is State.STORED
        and not outcome.reason
        and not outcome.status
        and outcome.attempts == 1
        and outcome.ts_sent == planned.transfer_syntax
        and not outcome.warning
        and not outcome.transcoded
        and outcome.bytes == planned.size
        and outcome.uri == planned.uri
        and not outcome.cause
    ):
        # Most files, written by the million: the same JSON as below, without building a
        # dict for json.dumps (~4 us a line).
        if outcome.seconds:
            return f'{{"i":{index},"t":{round(at, 2)!r},"s":{round(outcome.seconds * 1000, 2)!r}}}'
        return f'{{"i":{index},"t":{round(at, 2)!r}}}'
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


def latest_lines(raw: bytes) -> dict[int, tuple[str, dict[str, Any], bytes]]:
    """A batch's outcome log, the last line of each file: index -> (the worker that wrote
    it, from the ``{"w": ...}`` line before it; the line decoded; the line as stored)."""
    latest: dict[int, tuple[str, dict[str, Any], bytes]] = {}
    worker = ""
    for text in raw.splitlines():
        data = json.loads(text)
        if "i" not in data:
            worker = data.get("w", "")
        else:
            latest[data["i"]] = (worker, data, text)
    return latest


def outcome_from_line(data: dict[str, Any], state: State, planned: PlannedFile) -> FileOutcome:
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
