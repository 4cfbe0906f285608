"""One file -> one C-STORE: context choice, streaming, re-encoding, status classification.

The same function serves ``migrator store`` (threads, one association each) and the Celery
workers (pooled associations). It never retries by itself: it reports what happened and the
caller decides (retry on a fresh association, or record the outcome).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from migrator import status as st
from migrator.dicomfile import DAMAGED_INPUT_ERRORS, DicomHeader
from migrator.dul.association import Association, FileSlice
from migrator.dul.pdu import CONTEXT_RESULTS
from migrator.errors import PermanentError
from migrator.sources.base import Payload

#: A file that cannot be converted fails alone (see DAMAGED_INPUT_ERRORS)
_CONVERSION_ERRORS: tuple[type[Exception], ...] = (PermanentError, *DAMAGED_INPUT_ERRORS)


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


@dataclass(frozen=True, slots=True)
class PendingSend:
    """A C-STORE request on the wire whose response is still to be read."""

    msg_id: int
    ts_sent: str
    transcoded: bool
    nbytes: int
    started: float
    note: str


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
    sent = start_send(assoc, header, payload, allow_lossy=allow_lossy, forced_syntax=forced_syntax)
    return sent if isinstance(sent, SendResult) else finish_send(assoc, sent)


def start_send(
    assoc: Association,
    header: DicomHeader,
    payload: Payload,
    *,
    allow_lossy: bool = False,
    forced_syntax: str | None = None,
) -> PendingSend | SendResult:
    """The first half of ``send_file``: the request is sent (the payload is no longer
    needed afterwards); a SendResult when nothing could be sent (no usable context, a
    conversion that failed). Raises as ``send_file``."""
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
        msg_id = assoc.send_c_store(ctx, sop_class, header.sop_instance_uid, dataset)
        return PendingSend(msg_id, file_ts, False, length, t0, header.note)

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
    except _CONVERSION_ERRORS as exc:  # damaged input: fail this file, not the batch
        return SendResult(
            st.Outcome.PERMANENT,
            None,
            "",
            False,
            _conversion_failed(exc, sop_class, file_ts, target, forced_syntax),
        )
    ctx = assoc.context_for(sop_class, target)
    assert ctx is not None
    t0 = time.perf_counter()
    msg_id = assoc.send_c_store(ctx, sop_class, header.sop_instance_uid, data)
    return PendingSend(msg_id, target, True, len(data), t0, header.note)


def finish_send(assoc: Association, pending: PendingSend) -> SendResult:
    """The second half of ``send_file``: read the response. Raises ``AssociationLost``."""
    response = assoc.wait_c_store(pending.msg_id)
    seconds = time.perf_counter() - pending.started
    return _result(
        response.status,
        response.error_comment,
        pending.ts_sent,
        pending.transcoded,
        pending.nbytes,
        seconds,
        pending.note,
    )


def _result(
    status: int,
    comment: str,
    ts: str,
    transcoded: bool,
    nbytes: int,
    seconds: float,
    note: str = "",
) -> SendResult:
    """What the PACS answered; ``note`` (a file sent without File Meta...) is added to the
    reason, so that the report says it also for a stored file."""
    outcome = st.classify(status)
    error = ""
    if outcome not in (st.Outcome.STORED,):
        error = f"{st.fmt(status)} {st.meaning(status)}"
        if comment:
            error += f": {comment}"
    if note:
        error = f"{error}; {note}" if error else note
    return SendResult(outcome, status, ts, transcoded, error, nbytes, seconds)


def _conversion_failed(
    exc: Exception, sop_class: str, file_ts: str, target: str, forced: str | None
) -> str:
    from pydicom.uid import UID

    why = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
    if forced:
        return f"not sent: converting it to the forced {UID(target).name} failed: {why}"
    return (
        f"not sent: the PACS does not accept {UID(file_ts).name} for {_sop_name(sop_class)}, "
        f"and converting it to {UID(target).name} failed: {why}"
    )


def _sop_name(sop_class: str) -> str:
    from pydicom.uid import UID

    name = UID(sop_class).name
    if name == sop_class:
        return f"SOP class {sop_class} (private, or unknown to this tool)"
    return f"{name} ({sop_class})"


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
        if result is None:
            why = "no presentation context was proposed for it"
        else:
            why = f"it rejected the presentation context ({CONTEXT_RESULTS.get(result, '?')})"
        return f"the PACS does not accept {_sop_name(sop_class)}: {why}; not sent"
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
