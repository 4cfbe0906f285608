"""One file -> one C-STORE: context choice, streaming, re-encoding, status classification.

The same function serves ``migrator store`` (threads, one association each) and the Celery
workers (pooled associations). It never retries by itself: it reports what happened and the
caller decides (retry on a fresh association, or record the outcome).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from migrator import status as st
from migrator.dicomfile import DicomHeader
from migrator.dul.association import Association, FileSlice
from migrator.dul.pdu import CONTEXT_RESULTS
from migrator.errors import PermanentError
from migrator.sources.base import Payload


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: st.Outcome
    #: DIMSE status, or None when nothing was answered (refused before sending, or lost)
    status: int | None
    #: Transfer syntax the dataset was sent in ("" when nothing was sent)
    ts_sent: str
    #: True when the dataset was decoded and re-encoded because the PACS refused its syntax
    transcoded: bool
    error: str = ""
    bytes_sent: int = 0
    #: Seconds from the start of the C-STORE request to its response
    seconds: float = 0.0


def send_file(
    assoc: Association,
    header: DicomHeader,
    payload: Payload,
    *,
    allow_lossy: bool = False,
    forced_syntax: str | None = None,
) -> SendResult:
    """Send one file on an established association.

    Raises ``AssociationLost`` (outcome unknown: re-send on a new association) and
    ``SourceError`` (the file cannot be read); everything else becomes a SendResult.
    """
    sop_class, file_ts = header.sop_class_uid, header.transfer_syntax
    target = forced_syntax or file_ts
    ctx = assoc.context_for(sop_class, target) if target == file_ts else None
    if ctx is not None:
        dataset: FileSlice | memoryview
        if payload.path is not None:
            length = header.size - header.dataset_offset
            dataset = FileSlice(payload.path, header.dataset_offset, length)
        else:
            assert payload.data is not None
            dataset = memoryview(payload.data)[header.dataset_offset :]
            length = len(dataset)
        t0 = time.perf_counter()
        response = assoc.c_store(ctx, sop_class, header.sop_instance_uid, dataset)
        seconds = time.perf_counter() - t0
        return _result(response.status, response.error_comment, file_ts, False, length, seconds)

    accepted = assoc.accepted_syntaxes(sop_class)
    if forced_syntax:
        candidates = [forced_syntax] if forced_syntax in accepted else []
    else:
        from migrator.transcode import choose_target

        choice = choose_target(accepted)
        candidates = [choice] if choice else []
    if not candidates:
        return SendResult(
            st.Outcome.PERMANENT,
            None,
            "",
            False,
            _refusal(assoc, sop_class, file_ts, accepted, forced_syntax),
        )
    target = candidates[0]
    from migrator import transcode

    try:
        if payload.path is not None:
            data = transcode.transcode_file(payload.path, target, allow_lossy=allow_lossy)
        else:
            assert payload.data is not None
            data = transcode.transcode_bytes(payload.data, target, allow_lossy=allow_lossy)
    except PermanentError as exc:
        return SendResult(st.Outcome.PERMANENT, None, "", False, str(exc))
    ctx = assoc.context_for(sop_class, target)
    assert ctx is not None
    t0 = time.perf_counter()
    response = assoc.c_store(ctx, sop_class, header.sop_instance_uid, data)
    seconds = time.perf_counter() - t0
    return _result(response.status, response.error_comment, target, True, len(data), seconds)


def _result(
    status: int, comment: str, ts: str, transcoded: bool, nbytes: int, seconds: float
) -> SendResult:
    outcome = st.classify(status)
    error = ""
    if outcome not in (st.Outcome.STORED,):
        error = f"{st.fmt(status)} {st.meaning(status)}"
        if comment:
            error += f": {comment}"
    return SendResult(outcome, status, ts, transcoded, error, nbytes, seconds)


def _refusal(
    assoc: Association,
    sop_class: str,
    file_ts: str,
    accepted: list[str],
    forced: str | None,
) -> str:
    from pydicom.uid import UID

    name = UID(sop_class).name
    if not accepted:
        result = assoc.rejected.get(sop_class)
        why = CONTEXT_RESULTS.get(result, "rejected") if result is not None else "not proposed"
        return f"the PACS does not accept SOP class {name} ({sop_class}): context {why}"
    ts_names = ", ".join(UID(t).name for t in accepted)
    if forced:
        return (
            f"the PACS refused the forced transfer syntax {UID(forced).name} for {name}; "
            f"it accepts {ts_names}"
        )
    return (
        f"the PACS refused {UID(file_ts).name} for {name} and accepts only {ts_names}, "
        "which this file cannot be converted to"
    )
