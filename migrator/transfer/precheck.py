"""``--precheck``: before sending, ask the destination which of the files it already holds.

One query per transfer (a `store`, each batch of a `run`), for every file's SOP Instance
UID at once (migrator/verify/held.py: C-FIND at IMAGE level with UID lists, 100 a query,
or QIDO-RS), before the first file goes. Then, as each file is sent, its identity *after
coercion* (PatientID and StudyInstanceUID as the PACS would receive them) is compared with
what the destination holds under the same SOP Instance UID:

* not held: sent;
* held with the same PatientID and StudyInstanceUID: sent as usual (the PACS's answer is
  the outcome: the identity is the same, the content may not be; a PACS that keeps its
  copy answers success, one that refuses a differing copy says so);
* held under another PatientID or study: a **conflict**, not sent (into a rejection, or
  an overwrite of another patient's instance): failed, or skipped with ``--on-conflict
  first-good`` / ``skip`` (the copy at the destination counts as the one stored first).
  The reason names the SOP Instance UID, the studies and, for PatientIDs, their length and
  a token (``masked``).

**The PatientID tokens** are an HMAC-SHA256 under the job's ``precheck_secret`` (a random
key drawn when the job is created, kept in its settings in Redis, read by every sender;
each `store` command draws its own), never an unkeyed hash: a 6-8 digit MRN hashed without
a key (even salted with the SOP Instance UID printed beside it) is found by trying every
number in a minute. Equal IDs show equal tokens within one job's report (the IDs of two
conflicts can be compared), tokens of another job or command differ, and without the key,
which no report, log or output holds, a token cannot be checked against a guess.

The check wraps the transform (migrator/transfer/transform.py): it sees exactly what the
sender would send, and works the same in `store`, `run`'s own sender and every worker.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from migrator.coerce.elements import Encoding, parse_region
from migrator.coerce.errors import CoercionError
from migrator.coerce.vr import ValueProblem, codec_for
from migrator.dicomfile import DicomHeader, NeedMoreBytes
from migrator.errors import (
    AssociationRejected,
    ConfigError,
    ConnectError,
    DestinationUnavailable,
    MigratorError,
    SourceError,
)
from migrator.settings import Settings
from migrator.sources.base import Payload
from migrator.transfer.transform import Transform

if TYPE_CHECKING:  # migrator.verify imports pynetdicom: only a pre-checking sender pays it
    from migrator.verify.held import Held

PATIENT_ID = 0x00100020
SOP_INSTANCE_UID = 0x00080018
_CHARSET = 0x00080005


class DestinationConflict(SourceError):
    """The destination holds this SOP Instance UID under another patient or study."""

    def __init__(self, message: str, *, skip: bool) -> None:
        super().__init__(message)
        #: --on-conflict first-good / skip: skipped rather than failed
        self.skip = skip


class PrecheckFailed(MigratorError):
    """The destination could not be asked (it refused the query): nothing is sent
    unchecked. Retryable as its cause is."""

    def __init__(self, message: str, cause: MigratorError) -> None:
        super().__init__(message)
        self.cause = cause

    @property
    def retryable(self) -> bool:
        return self.cause.retryable


def held(settings: Settings, headers: Iterable[DicomHeader]) -> dict[str, Held]:
    """What the destination holds of these files' instances. Raises ``PrecheckFailed``
    (or, when it cannot be reached or turns the association away, the error a send
    would have met: the transfer treats it as its own)."""
    from migrator.verify.held import held_instances

    wanted = [(h.study_uid, h.sop_instance_uid) for h in headers]
    try:
        return held_instances(settings, wanted)
    except AssociationRejected:
        raise
    except ConnectError as exc:
        raise DestinationUnavailable(f"--precheck: cannot ask the destination: {exc}") from None
    except MigratorError as exc:
        how = "QIDO-RS" if settings.dicomweb else "C-FIND at IMAGE level"
        raise PrecheckFailed(
            f"--precheck: the destination did not answer which instances it holds ({how}): "
            f"{exc}; not sent unchecked (allow our AE the query, or drop --precheck)",
            exc,
        ) from None


class Checked:
    """``transform``, then the file's identity against what the destination holds."""

    def __init__(
        self, transform: Transform, found: dict[str, Held], on_conflict: str, secret: str = ""
    ) -> None:
        """``secret``: the job's ``Settings.precheck_secret`` (hex; empty: this process's
        own key, as for settings made without ``precheck``)."""
        self.transform = transform
        self.found = found
        self.on_conflict = on_conflict
        self.key = bytes.fromhex(secret) if secret else _PROCESS_KEY

    def __call__(self, header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        header, payload = self.transform(header, payload)
        theirs = self.found.get(header.sop_instance_uid)
        if theirs is None:
            return header, payload
        sop = header.sop_instance_uid
        differs = []
        if theirs.study_uid != header.study_uid:
            differs.append(f"StudyInstanceUID {theirs.study_uid} (this file's: {header.study_uid})")
        mine = patient_id(header, payload)
        if theirs.patient_id.strip() != mine:
            differs.append(
                f"PatientID {masked(self.key, theirs.patient_id.strip())} "
                f"(this file's: {masked(self.key, mine)})"
            )
        if not differs:
            return header, payload
        skip = self.on_conflict != "fail"
        what = f"skipped (--on-conflict {self.on_conflict})" if skip else "not sent"
        raise DestinationConflict(
            f"conflict: the destination already holds SOP Instance UID {sop} under "
            f"{' and '.join(differs)}; {what} (--precheck)",
            skip=skip,
        )


#: The key of Checked made without a job's secret: never shown, gone with the process
_PROCESS_KEY = secrets.token_bytes(16)


def masked(key: bytes, value: str) -> str:
    """A PatientID as its length and an 8-hex-digit HMAC-SHA256 under ``key``: two values
    told apart, equal values shown alike, the value itself neither in the report nor
    recoverable from it without the key."""
    if not value:
        return "(empty)"
    digest = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:8]
    return f"<{len(value)} chars #{digest}>"


def patient_id(header: DicomHeader, payload: Payload) -> str:
    """The PatientID the destination would receive: from the rewritten elements of a
    coerced file, else from the file (a few KB read; only for instances the destination
    holds)."""
    try:
        enc = Encoding.of(header.transfer_syntax)
    except CoercionError:  # deflated: the rare file read whole
        return _deflated_patient_id(payload)
    n = 4096
    while True:
        data, at_end = _dataset_bytes(header, payload, n)
        try:
            ds, _ = parse_region(data, enc, PATIENT_ID, at_end=at_end)
            break
        except NeedMoreBytes:
            n *= 4
        except CoercionError as exc:
            raise SourceError(f"--precheck: cannot read the PatientID: {exc}") from None
    element = ds.get(PATIENT_ID)
    if element is None:
        return ""
    charset = ds.get(_CHARSET)
    try:
        codec = codec_for(charset.value.decode("ascii", "replace").strip(" \0") if charset else "")
    except ValueProblem:
        codec = "latin_1"  # ISO 2022: compared as bytes would be, near enough for IDs
    return str(element.value.rstrip(b"\0 ").decode(codec, "replace").strip())


def _deflated_patient_id(payload: Payload) -> str:
    import pydicom

    if payload.data is not None:
        found = pydicom.dcmread(io.BytesIO(payload.data), stop_before_pixels=True, force=True)
    else:
        assert payload.path is not None
        found = pydicom.dcmread(payload.path, stop_before_pixels=True, force=True)
    return str(found.get("PatientID", "") or "").strip()


def _dataset_bytes(header: DicomHeader, payload: Payload, n: int) -> tuple[bytes, bool]:
    """The first ``n`` bytes of the dataset as sent (a coerced file: its new head, then the
    file from ``resume``), and whether the dataset ends there."""
    head = payload.head or b""
    start = payload.resume if payload.head is not None else header.dataset_offset
    want = max(0, n - len(head))
    if payload.data is not None:
        rest = payload.data[start : start + want]
        size = len(payload.data)
    else:
        assert payload.path is not None
        fd = os.open(payload.path, os.O_RDONLY)
        try:
            rest = os.pread(fd, want, start)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    return head + rest, start + want >= size


def check_rules(settings: Settings) -> None:
    """``--precheck`` asks for the SOP Instance UIDs the files have: rules that change them
    would make it ask for the wrong ones. Raises ConfigError naming the rule."""
    if not settings.coerce:
        return
    from migrator.coerce.rules import CHECKED, load_rules

    rules = CHECKED.get((settings.coerce, settings.coerce_digest)) or load_rules(settings.coerce)
    for rule in rules.rules:
        written = [rule.target] if rule.target is not None else []
        if rule.table is not None:
            written += list(rule.table.write)
        if any(p.tag == SOP_INSTANCE_UID and not p.nested for p in written):
            raise ConfigError(
                f"--precheck: rule {rule.name} (line {rule.line}) changes SOPInstanceUID; the "
                "pre-check asks the destination for the UIDs the files have: drop one of them"
            )
