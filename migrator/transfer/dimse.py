"""The DIMSE destination: C-STORE on the project's own upper layer (``migrator.dul``).

A connection is one association, negotiated for a *profile*: up to 128 presentation
contexts planned from the (SOP class, transfer syntax) pairs of the work at hand
(``migrator.contexts``). It ``covers`` a pair when that pair was proposed on it, so the
PACS's answer for it is known: a file is then streamed as stored when its own syntax was
accepted, re-encoded losslessly into an accepted uncompressed one when it was not (lossy
originals only when allowed), or refused with the PACS's reason. A pair that was never
proposed is never sent here: the pool opens an association that proposes it.

Streaming: a file's dataset goes out as a ``FileSlice`` (os.sendfile or read-and-sendmsg in
``migrator.dul.association``) or from memory, never decoded unless it must be re-encoded.
"""

from __future__ import annotations

import time
from collections.abc import Set
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrator import status as st
from migrator.contexts import Profile, plan_profiles
from migrator.dicomfile import DAMAGED_INPUT_ERRORS, DicomHeader
from migrator.dul.association import Association, FileSlice
from migrator.dul.pdu import CONTEXT_RESULTS
from migrator.errors import ConfigError, ConnectError, PermanentError
from migrator.settings import Settings
from migrator.sources.base import Payload
from migrator.transfer.destination import Pair, SendResult
from migrator.uidnames import name as uid_name

if TYPE_CHECKING:
    import ssl  # loaded only for TLS: ~10 ms of every start otherwise

#: A file that cannot be converted fails alone (see DAMAGED_INPUT_ERRORS)
_CONVERSION_ERRORS: tuple[type[Exception], ...] = (PermanentError, *DAMAGED_INPUT_ERRORS)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A C-STORE request on the wire whose response is still to be read."""

    msg_id: int
    ts_sent: str
    transcoded: bool
    nbytes: int
    started: float
    note: str


class DimseDestination:
    """A PACS reached with C-STORE: ``settings`` give host, port, AE titles, timeouts, TLS
    and the forced transfer syntax."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = settings.destination
        self.name = settings.server
        self._tls: ssl.SSLContext | bool | None = False  # False: not built yet

    def profile_for(self, needed: Pair, wanted: Set[Pair]) -> Profile:
        """The association profile (<= 128 contexts) that carries ``needed``, planned over
        ``wanted`` (and ``needed``): all of ``wanted`` when it fits in one association."""
        forced = self.settings.transfer_syntax
        profiles = plan_profiles(set(wanted) | {needed}, forced_syntax=forced)
        return next(p for p in profiles if needed[0] in p.sop_classes)

    def connect(self, needed: Pair, wanted: Set[Pair]) -> DimseConnection:
        s = self.settings
        profile = self.profile_for(needed, wanted)
        assoc = Association.request(
            s.host,
            s.port,
            s.called_ae,
            s.calling_ae,
            list(profile.contexts),
            max_pdu=s.max_pdu,
            timeouts=s.timeouts,
            tls=self._tls_context(),
        )
        return DimseConnection(assoc, profile, s)

    def _tls_context(self) -> ssl.SSLContext | None:
        """The TLS context (built once per destination), or None for plain TCP.

        The files are this sender's: one that lacks them (or cannot read them) cannot reach
        the PACS, which is a connection failure here (a worker's batch is retried, maybe on
        another worker), not a property of the files being sent. The commands check them at
        start, so a user sees a bad path as a usage error."""
        if self._tls is False:
            tls = self.settings.tls_settings
            try:
                self._tls = tls.client_context() if tls is not None else None
            except ConfigError as exc:
                raise ConnectError(f"TLS on this sender: {exc}") from None
        assert self._tls is not True
        return self._tls


class DimseConnection:
    """One association; see ``migrator.transfer.destination.Connection``."""

    capacity = 1

    def __init__(self, assoc: Association, profile: Profile, settings: Settings) -> None:
        self.requests = 0
        self.assoc = assoc
        self.profile = profile
        self._forced = settings.transfer_syntax
        self._allow_lossy = settings.allow_lossy
        # Per SOP class, the syntaxes proposed alone in a context of their own: for those
        # the PACS's answer is known (accepted, or refused: then re-encoding is right). A
        # syntax offered only among others (the Explicit/Implicit fallback) may have lost to
        # another, so it is not known to be accepted.
        self._alone: dict[str, set[str]] = {}
        for ctx in profile.contexts:
            alone = self._alone.setdefault(ctx.abstract_syntax, set())
            if len(ctx.transfer_syntaxes) == 1:
                alone.add(ctx.transfer_syntaxes[0])

    @property
    def alive(self) -> bool:
        return self.assoc.is_alive

    def covers(self, pair: Pair) -> bool:
        sop_class, ts = pair
        alone = self._alone.get(sop_class)
        if alone is None:
            return False
        if self._forced is not None:
            return True
        return ts in alone or self.assoc.context_for(sop_class, ts) is not None

    def room(self, size: int) -> bool:
        return False  # one C-STORE in flight per association

    def flush(self) -> None:
        pass  # start() put the C-STORE on the wire

    def fileno(self) -> int:
        return self.assoc.fileno()

    def buffered(self) -> bool:
        return self.assoc.buffered()

    def deadline(self, pending: object) -> float:
        return self.assoc.answer_deadline

    def release(self) -> None:
        self.assoc.release()

    def abort(self) -> None:
        self.assoc.abort()

    def start(self, header: DicomHeader, payload: Payload) -> _Pending | SendResult:
        self.requests += 1
        assoc = self.assoc
        sop_class, file_ts = header.sop_class_uid, header.transfer_syntax
        forced = self._forced
        target = forced or file_ts
        ctx = assoc.context_for(sop_class, target) if target == file_ts else None
        if ctx is not None:
            dataset: FileSlice | memoryview | bytes
            head, start = payload.head, header.dataset_offset
            if head is not None:
                start = payload.resume  # coerced: new elements, then the file from there on
            if payload.path is not None:
                length = header.size - start
                dataset = FileSlice(payload.path, start, length, head or b"")
                length += len(head or b"")
            else:
                assert payload.data is not None
                dataset = memoryview(payload.data)[start:]
                if head is not None:
                    dataset = head + dataset
                length = len(dataset)
            t0 = time.perf_counter()
            msg_id = assoc.send_c_store(ctx, sop_class, header.sop_instance_uid, dataset)
            return _Pending(msg_id, file_ts, False, length, t0, header.note)

        accepted = assoc.accepted_syntaxes(sop_class)
        if forced:
            target = forced if forced in accepted else ""
        else:
            from migrator.transcode import choose_target

            target = choose_target(accepted) or ""
        if not target:
            why = _refusal(assoc, sop_class, file_ts, accepted, forced)
            return SendResult(st.Outcome.PERMANENT, None, "", False, why)
        from migrator import transcode

        try:
            if payload.head is not None:
                from migrator.coerce.splice import spliced

                data = transcode.transcode_bytes(
                    spliced(header, payload), target, allow_lossy=self._allow_lossy
                )
            elif payload.path is not None:
                data = transcode.transcode_file(payload.path, target, allow_lossy=self._allow_lossy)
            else:
                assert payload.data is not None
                data = transcode.transcode_bytes(
                    payload.data, target, allow_lossy=self._allow_lossy
                )
        except _CONVERSION_ERRORS as exc:  # damaged input: fail this file, not the batch
            why = _conversion_failed(exc, sop_class, file_ts, target, forced)
            return SendResult(st.Outcome.PERMANENT, None, "", False, why)
        ctx = assoc.context_for(sop_class, target)
        assert ctx is not None
        t0 = time.perf_counter()
        msg_id = assoc.send_c_store(ctx, sop_class, header.sop_instance_uid, data)
        return _Pending(msg_id, target, True, len(data), t0, header.note)

    def finish(self, pending: object) -> SendResult:
        assert isinstance(pending, _Pending)
        response = self.assoc.wait_c_store(pending.msg_id)
        seconds = time.perf_counter() - pending.started
        status, comment = response.status, response.error_comment
        outcome = st.classify(status)
        error = ""
        if outcome is not st.Outcome.STORED:
            error = f"{st.fmt(status)} {st.meaning(status)}"
            if comment:
                error += f": {comment}"
        if pending.note:
            # Said also for a stored file (sent without File Meta...), so the report says it.
            error = f"{error}; {pending.note}" if error else pending.note
        return SendResult(
            outcome, status, pending.ts_sent, pending.transcoded, error, pending.nbytes, seconds
        )


def sop_name(sop_class: str) -> str:
    name = uid_name(sop_class)
    if name == sop_class:
        return f"SOP class {sop_class} (private, or unknown to this tool)"
    return f"{name} ({sop_class})"


def _conversion_failed(
    exc: Exception, sop_class: str, file_ts: str, target: str, forced: str | None
) -> str:
    why = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
    if forced:
        return f"not sent: converting it to the forced {uid_name(target)} failed: {why}"
    return (
        f"not sent: the PACS does not accept {uid_name(file_ts)} for {sop_name(sop_class)}, "
        f"and converting it to {uid_name(target)} failed: {why}"
    )


def _refusal(
    assoc: Association, sop_class: str, file_ts: str, accepted: list[str], forced: str | None
) -> str:
    if not accepted:
        result = assoc.rejected.get(sop_class)
        if result is None:
            why = "no presentation context was proposed for it"
        else:
            why = f"it rejected the presentation context ({CONTEXT_RESULTS.get(result, '?')})"
        return f"the PACS does not accept {sop_name(sop_class)}: {why}; not sent"
    ts_names = ", ".join(uid_name(t) for t in accepted)
    name = uid_name(sop_class)
    if forced:
        return (
            f"the PACS refused the forced transfer syntax {uid_name(forced)} for {name}; "
            f"it accepts {ts_names}"
        )
    return (
        f"the PACS refused {uid_name(file_ts)} for {name} and accepts only {ts_names}, "
        "which this file cannot be converted to"
    )
