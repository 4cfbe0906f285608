"""``verify``: ask the destination what it holds, and compare with what the ledger says it stored.

A C-STORE answered ``0x0000`` does not prove storage: Orthanc answers it for a duplicate it
keeps the old copy of and for an instance a Lua filter discards (TESTING.md §2.3). So after a
migration we ask the PACS itself, in three steps of increasing cost:

1. **C-FIND at STUDY level**, one query per study in the ledger, for
   NumberOfStudyRelatedInstances (PS3.4 C.3.4), compared with the number of distinct SOP
   Instance UIDs the ledger stored in that study.
2. **C-FIND at SERIES then IMAGE level** (hierarchical, PS3.4 C.4.1.2.2: every level above the
   query level gets its unique key) for every study whose count differs, which names the
   missing SOP Instance UIDs exactly, and for a sample of the studies whose count matches (a
   foreign instance in the PACS could hide a missing one of ours).
3. Optionally **Storage Commitment** (Push Model, PS3.4 Annex J): N-ACTION with the SOP
   Class/Instance UIDs in batches, then the N-EVENT-REPORT, on the same association or on a
   reverse association the PACS opens to us. Orthanc 1.10.1 always uses a reverse association,
   sent by a job after the N-ACTION response, to the host and port it has registered for our
   calling AE in ``DicomModalities``; from an AE not registered there it aborts the association
   on the N-ACTION (and on C-FIND too, unless ``DicomAlwaysAllowFind``).

Identifiers carry only UIDs and counts, so no patient data is requested, logged or stored.

The result goes into the ledger, for ``status`` and reports (all keys in :class:`JobKeys`):

- ``verify`` (hash): ``checked_at``, ``destination``, ``method``, ``stored``, ``instances``,
  ``studies``, ``studies_mismatched``, ``studies_listed``, ``confirmed``, ``missing``,
  ``unconfirmed``, ``committed``, ``in_flight``; read it with :func:`load_summary`.
- ``verify_missing`` (hash): file id → why the PACS lacks it (:func:`load_missing`).
- ``verify_unconfirmed`` (hash): file id → why it could not be confirmed either way (a storage
  commitment without an answer, a file without a Study Instance UID).

Each :func:`save_result` replaces the previous verification of the job.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
)

from migrator.errors import AssociationRejected, ConnectError, PermanentError
from migrator.exitcodes import ExitStatus
from migrator.ledger import Ledger
from migrator.netutil import patch_pynetdicom_nodelay
from migrator.outcomes import State
from migrator.settings import Settings
from migrator.status import fmt, meaning

log = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Failure Reason (0008,1197) values of a commitment report (PS3.4 J.3.3.1.2).
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}
_FILES_CHUNK = 1000


class PacsQueryError(PermanentError):
    """The PACS answered, but refused the query or the commitment request."""


@dataclass(frozen=True, slots=True)
class StudyCount:
    """A study whose instance count at the PACS differs from the ledger's."""

    study_uid: str
    ledger: int
    pacs: int


@dataclass(frozen=True, slots=True)
class FileProblem:
    """One stored-per-ledger file the PACS lacks (or did not confirm), and why."""

    file_id: str
    uri: str
    sop_instance_uid: str
    study_uid: str
    reason: str


@dataclass(frozen=True, slots=True)
class CommitmentSettings:
    """Storage commitment: where the PACS's reverse association reaches us, and the pace.

    ``listen_port`` None: accept the N-EVENT-REPORT only on the requesting association.
    ``timeout``: give up after that many seconds without a new report.
    ``window``: N-ACTIONs waiting for their report at once (bounds memory and PACS load).
    """

    listen_host: str = "0.0.0.0"
    listen_port: int | None = None
    batch: int = 1000
    timeout: float = 120.0
    window: int = 4


@dataclass(slots=True)
class VerifyResult:
    """Stored per ledger against confirmed by the PACS."""

    job_id: str
    destination: str
    stored: int = 0  #: files the ledger says are stored
    instances: int = 0  #: distinct SOP Instance UIDs among them
    studies: int = 0
    in_flight: int = 0
    studies_listed: int = 0  #: studies compared instance by instance
    mismatched: list[StudyCount] = field(default_factory=list)
    missing: list[FileProblem] = field(default_factory=list)
    unconfirmed: list[FileProblem] = field(default_factory=list)
    commitment: bool = False
    committed: int = 0  #: instances the PACS committed to (storage commitment only)
    checked_at: float = 0.0
    seconds: float = 0.0

    @property
    def confirmed(self) -> int:
        return self.stored - len(self.missing) - len(self.unconfirmed)

    @property
    def method(self) -> str:
        return "c-find+commitment" if self.commitment else "c-find"

    @property
    def exit_status(self) -> ExitStatus:
        ok = not self.missing and not self.unconfirmed
        return ExitStatus.OK if ok else ExitStatus.PARTIAL_FAILURE

    def summary(self) -> dict[str, str | int | float]:
        return {
            "checked_at": round(self.checked_at, 3),
            "destination": self.destination,
            "method": self.method,
            "stored": self.stored,
            "instances": self.instances,
            "studies": self.studies,
            "studies_mismatched": len(self.mismatched),
            "studies_listed": self.studies_listed,
            "confirmed": self.confirmed,
            "missing": len(self.missing),
            "unconfirmed": len(self.unconfirmed),
            "committed": self.committed,
            "in_flight": self.in_flight,
        }

    def to_json(self) -> dict[str, Any]:
        problem = ("file_id", "uri", "sop_instance_uid", "study_uid", "reason")
        return {
            "job": self.job_id,
            **self.summary(),
            "seconds": round(self.seconds, 3),
            "mismatched_studies": [
                {"study_uid": s.study_uid, "ledger": s.ledger, "pacs": s.pacs}
                for s in self.mismatched
            ],
            "missing_files": [{k: getattr(p, k) for k in problem} for p in self.missing],
            "unconfirmed_files": [{k: getattr(p, k) for k in problem} for p in self.unconfirmed],
        }


# -- what the ledger says was stored ------------------------------------------------------
def _stored(ledger: Ledger) -> Iterator[list[tuple[str, str, str, str, str]]]:
    """Chunks of (file id, uri, SOP class, SOP instance, study) of the stored files."""
    chunk: list[tuple[str, str, str, str]] = []

    def flush() -> list[tuple[str, str, str, str, str]]:
        planned = {p.file_id: p for p in ledger.files([c[0] for c in chunk])}
        rows = []
        for fid, uri, cls, sop in chunk:
            p = planned.get(fid)
            # The outcome holds the UIDs as sent; the plan is the fallback (and has the study).
            rows.append(
                (
                    fid,
                    uri,
                    cls or (p.sop_class_uid if p else ""),
                    sop or (p.sop_instance_uid if p else ""),
                    p.study_uid if p else "",
                )
            )
        chunk.clear()
        return rows

    for fid, outcome, _ in ledger.iter_outcomes():
        if outcome.state is State.STORED:
            chunk.append((fid, outcome.uri, outcome.sop_class_uid, outcome.sop_instance_uid))
            if len(chunk) >= _FILES_CHUNK:
                yield flush()
    if chunk:
        yield flush()


def _files_for(ledger: Ledger, reasons: Mapping[str, str]) -> list[FileProblem]:
    """The stored files holding these SOP Instance UIDs (a second pass keeps memory to UIDs)."""
    found = []
    for rows in _stored(ledger):
        for fid, uri, _, sop, study in rows:
            if sop in reasons:
                found.append(FileProblem(fid, uri, sop, study, reasons[sop]))
    return sorted(found, key=lambda p: (p.study_uid, p.sop_instance_uid, p.uri))


# -- the PACS ------------------------------------------------------------------------------
def _new_ae(config: Settings) -> AE:
    # Without TCP_NODELAY each request/response pair waits on Nagle + delayed ACK (40–90 ms).
    patch_pynetdicom_nodelay()
    ae = AE(ae_title=config.calling_ae)
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.connection_timeout = config.network_timeout
    return ae


def _associate(ae: AE, config: Settings, **kwargs: Any) -> Association:
    assoc = ae.associate(config.host, config.port, ae_title=config.called_ae, **kwargs)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        result = int(getattr(rsp, "result", 1) or 1)
        source = int(getattr(rsp, "result_source", 0) or 0)
        reason = int(getattr(rsp, "diagnostic", 0) or 0)
        text = getattr(rsp, "reason_str", "") or "no reason given"
        raise AssociationRejected(
            f"{config.server} rejected the association: {text}",
            result=result,
            source=source,
            reason=reason,
        )
    if assoc.is_aborted and assoc.acceptor.primitive is not None:
        # Accepted, then aborted at once: pynetdicom does that when no context was accepted.
        raise PacsQueryError(f"{config.server} accepted none of the proposed SOP classes")
    _why_not_associated(config)
    raise ConnectError(f"cannot reach {config.server} (refused, unreachable or timed out)")


def _why_not_associated(config: Settings) -> None:
    """Ask again with our own upper layer, which reads a peer's A-ASSOCIATE-RJ even when the
    connection closes right behind it; pynetdicom 3.0.4 sometimes sees only the close (seen
    with Orthanc rejecting a wrong called AE) and reports no answer. Raises the rejection."""
    from migrator.dicomfile import IMPLICIT_LE
    from migrator.dul.association import Association as OwnAssociation
    from migrator.dul.dimse import VERIFICATION_SOP_CLASS
    from migrator.dul.pdu import ProposedContext

    try:
        probe = OwnAssociation.request(
            config.host,
            config.port,
            config.called_ae,
            config.calling_ae,
            [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,))],
            timeouts=config.timeouts,
        )
    except AssociationRejected as exc:
        raise AssociationRejected(
            f"{config.server} rejected the association: {exc}",
            result=exc.result,
            source=exc.source,
            reason=exc.reason,
        ) from None
    except ConnectError:
        return
    probe.release()


class _ReactorGuard:
    """Keep pynetdicom's reactor thread off our responses while we wait for them.

    pynetdicom 3.0.4 pauses its reactor before a request with a flag it can read while the
    reactor is past its pause point; the reactor then takes the peer's fast answer off the
    DIMSE queue, logs "Received unexpected C-FIND service message" and drops it (pynetdicom
    issue #875). Measured against Orthanc with TCP_NODELAY: 2 of 300 rounds lost a match (a
    whole series, i.e. false "missing" instances) or the final response (a DIMSE timeout).
    The guard makes the reactor's non-blocking reads return nothing while we hold its lock
    for a request and all its responses; between requests the reactor still serves the
    peer's own requests (an N-EVENT-REPORT on the same association).
    """

    def __init__(self, assoc: Association) -> None:
        self.lock = threading.Lock()
        original = assoc.dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            if block:  # our own thread, inside a send_*() that holds the lock
                return original(True)
            if not self.lock.acquire(blocking=False):
                return None, None
            try:
                return original(False)
            finally:
                self.lock.release()

        assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


class QueryClient:
    """Study Root C-FIND on one association (a context manager)."""

    def __init__(self, config: Settings) -> None:
        self.config = config
        ae = _new_ae(config)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self._assoc = _associate(ae, config)
        self._guard = _ReactorGuard(self._assoc)
        self.queries = 0

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._assoc.is_established:
            self._assoc.release()

    def _find(self, level: str, keys: Mapping[str, str], returned: Iterable[str]) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        for name, value in keys.items():
            setattr(query, name, value)
        for name in returned:
            setattr(query, name, "")  # universal matching: "return this attribute"
        self.queries += 1
        matches = []
        try:
            with self._guard.lock:
                # Drain every response: the generator resumes pynetdicom's reactor at its end.
                responses = list(
                    self._assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                )
        except RuntimeError as exc:  # pynetdicom: "association ... must be established"
            raise ConnectError(
                f"{self.config.server} closed the association during C-FIND ({exc}); "
                f"does it allow C-FIND from AE {self.config.calling_ae}?"
            ) from None
        for status, identifier in responses:
            code = cast(int | None, getattr(status, "Status", None))
            if code is None:  # pynetdicom's empty response: timeout, abort, lost connection
                raise ConnectError(
                    f"no C-FIND response from {self.config.server} (aborted or timed out; "
                    f"does it allow C-FIND from AE {self.config.calling_ae}?)"
                )
            if code in (0xFF00, 0xFF01):  # pending: one match each
                if identifier is not None:
                    matches.append(identifier)
            elif code != 0x0000:
                raise PacsQueryError(f"C-FIND at {level} level failed: {fmt(code)} {meaning(code)}")
        return matches

    def study_count(self, study_uid: str) -> int:
        """NumberOfStudyRelatedInstances at the PACS; 0 when it has no such study."""
        found = self._find(
            "STUDY", {"StudyInstanceUID": study_uid}, ["NumberOfStudyRelatedInstances"]
        )
        return sum(int(m.get("NumberOfStudyRelatedInstances", 0) or 0) for m in found)

    def study_instances(self, study_uid: str) -> set[str]:
        """Every SOP Instance UID the PACS holds in the study (SERIES, then IMAGE level)."""
        uids: set[str] = set()
        for series in self._find("SERIES", {"StudyInstanceUID": study_uid}, ["SeriesInstanceUID"]):
            keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series.SeriesInstanceUID}
            for image in self._find("IMAGE", keys, ["SOPInstanceUID"]):
                uids.add(str(image.SOPInstanceUID))
        return uids


# -- storage commitment -------------------------------------------------------------------
class _Reports:
    """N-EVENT-REPORTs as they arrive, from whichever association carries them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.expected: set[str] = set()
        self.arrived: dict[str, Dataset] = {}

    def handle(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.event_information
        tuid = str(info.get("TransactionUID", ""))
        with self.cond:
            # Only our own transactions count: anyone may open an association to the listener.
            if tuid in self.expected:
                self.arrived[tuid] = info
                self.cond.notify_all()
            else:
                log.warning("storage commitment report for an unknown transaction ignored")
        return 0x0000, None


def _commit(
    config: Settings, ledger: Ledger, settings: CommitmentSettings
) -> tuple[int, dict[str, str], dict[str, str]]:
    """Ask the PACS to commit to every stored instance: (committed, failed, unanswered).

    ``failed`` and ``unanswered`` map SOP Instance UID → reason."""
    reports = _Reports()
    handlers: list[EventHandlerType] = [(evt.EVT_N_EVENT_REPORT, reports.handle)]
    ae = _new_ae(config)
    ae.add_requested_context(StorageCommitmentPushModel)
    # The PACS opens the reverse association as the SCP of the service (role selection,
    # PS3.7 D.3.3.4): accept that role for it.
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    ae.require_called_aet = True
    committed = 0
    failed: dict[str, str] = {}
    unanswered: dict[str, str] = {}
    outstanding: dict[str, dict[str, str]] = {}  # transaction → {SOP instance: SOP class}

    def settle(wait: float) -> bool:
        """Account the reports that arrived; False when none came within ``wait`` seconds."""
        nonlocal committed
        with reports.cond:
            if not reports.arrived:
                reports.cond.wait(wait)
            arrived, reports.arrived = reports.arrived, {}
        for tuid, info in arrived.items():
            asked = outstanding.pop(tuid, {})
            for item in info.get("ReferencedSOPSequence", []):
                if asked.pop(str(item.ReferencedSOPInstanceUID), None) is not None:
                    committed += 1
            for item in info.get("FailedSOPSequence", []):
                sop = str(item.ReferencedSOPInstanceUID)
                if asked.pop(sop, None) is not None:
                    code = int(item.get("FailureReason", 0x0110))
                    why = _FAILURE_REASONS.get(code, "failure")
                    failed[sop] = f"storage commitment failed: 0x{code:04X} {why}"
            # In neither list: the PACS neither committed nor refused (PS3.4 J.3.3 wants all).
            unanswered.update(dict.fromkeys(asked, "left out of the storage commitment report"))
        return bool(arrived)

    server = None
    if settings.listen_port is not None:
        server = ae.start_server(
            (settings.listen_host, settings.listen_port), block=False, evt_handlers=handlers
        )
    try:
        assoc = _associate(ae, config, evt_handlers=handlers)
        guard = _ReactorGuard(assoc)
        try:
            batches = _commitment_batches(ledger, settings.batch)
            for batch in batches:
                while len(outstanding) >= settings.window and settle(settings.timeout):
                    pass
                if len(outstanding) >= settings.window:
                    # A whole timeout without any report: the PACS is not answering, so asking
                    # for more would only pile up; what is left stays unconfirmed.
                    why = "storage commitment not requested: the PACS stopped reporting"
                    unanswered.update(dict.fromkeys(batch, why))
                    for rest in batches:
                        unanswered.update(dict.fromkeys(rest, why))
                    break
                if not assoc.is_established:
                    # The PACS closed it while we waited for reports (Orthanc: DicomScpTimeout).
                    assoc = _associate(ae, config, evt_handlers=handlers)
                    guard = _ReactorGuard(assoc)
                tuid = str(generate_uid())
                with reports.cond:
                    reports.expected.add(tuid)
                outstanding[tuid] = batch
                with guard.lock:
                    _send_action(assoc, config, tuid, batch)
            deadline = time.monotonic() + settings.timeout
            while outstanding and time.monotonic() < deadline:
                if settle(min(1.0, settings.timeout)):
                    deadline = time.monotonic() + settings.timeout  # reports keep coming
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        if server is not None:
            server.shutdown()
    why = f"no storage commitment report within {settings.timeout:g} s"
    for batch in outstanding.values():
        unanswered.update(dict.fromkeys(batch, why))
    return committed, failed, unanswered


def _commitment_batches(ledger: Ledger, size: int) -> Iterator[dict[str, str]]:
    batch: dict[str, str] = {}
    for rows in _stored(ledger):
        for _, _, cls, sop, _ in rows:
            if sop and cls:
                batch[sop] = cls
                if len(batch) >= size:
                    yield batch
                    batch = {}
    if batch:
        yield batch


def _send_action(assoc: Association, config: Settings, tuid: str, batch: dict[str, str]) -> None:
    request = Dataset()
    request.TransactionUID = tuid
    items = []
    for sop, cls in batch.items():
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = sop
        items.append(item)
    request.ReferencedSOPSequence = items
    try:
        # Action Type 1: "Request Storage Commitment" (PS3.4 J.3.2)
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    except RuntimeError as exc:
        raise ConnectError(f"{config.server} closed the association: {exc}") from None
    code = cast(int | None, getattr(status, "Status", None))
    if code is None:
        # Orthanc aborts here when our calling AE is not in its DicomModalities.
        raise PacsQueryError(
            f"{config.server} gave no N-ACTION response (aborted or timed out); is AE "
            f"{config.calling_ae} registered there as a modality that may ask for commitment?"
        )
    if code != 0x0000:
        raise PacsQueryError(f"storage commitment request refused: {fmt(code)} {meaning(code)}")
    log.info("storage commitment requested for %d instances (transaction %s)", len(batch), tuid)


# -- the whole check ----------------------------------------------------------------------
def verify_job(
    ledger: Ledger,
    config: Settings,
    *,
    sample: int = 10,
    full: bool = False,
    commitment: CommitmentSettings | None = None,
) -> VerifyResult:
    """Compare the ledger's stored files with what the PACS holds; nothing is written.

    ``sample``: studies whose count matches that are still listed instance by instance
    (chosen at random, seeded by the job id so a re-run checks the same ones); ``full``: list
    every study. Raises ConnectError / AssociationRejected / PacsQueryError when the PACS
    cannot be asked. Memory: the distinct SOP Instance UIDs of the job (~100 bytes each).
    """
    started = time.monotonic()
    result = VerifyResult(ledger.job_id, config.server, checked_at=time.time())
    result.in_flight = max(0, ledger.counts()["in_flight"])
    by_study: dict[str, set[str]] = {}
    no_study: list[FileProblem] = []
    for rows in _stored(ledger):
        for fid, uri, _, sop, study in rows:
            result.stored += 1
            if study and sop:
                by_study.setdefault(study, set()).add(sop)
            else:
                no_study.append(FileProblem(fid, uri, sop, study, "no Study Instance UID known"))
    result.studies = len(by_study)
    result.instances = sum(len(s) for s in by_study.values())

    reasons: dict[str, str] = {}  # missing SOP Instance UID → why
    with QueryClient(config) as pacs:
        matching: list[str] = []
        to_list: list[str] = []
        for study, sops in sorted(by_study.items()):
            count = pacs.study_count(study)
            if count == len(sops):
                matching.append(study)
                continue
            result.mismatched.append(StudyCount(study, len(sops), count))
            if count == 0:  # the whole study is absent: nothing to list
                reasons.update(dict.fromkeys(sops, "study not found by C-FIND"))
            else:
                to_list.append(study)
        if full:
            to_list += matching
        else:
            to_list += random.Random(ledger.job_id).sample(matching, min(sample, len(matching)))
        for study in to_list:
            held = pacs.study_instances(study)
            for sop in by_study[study] - held:
                reasons[sop] = "not found by C-FIND in its study"
        result.studies_listed = len(to_list)
        log.info(
            "C-FIND: %d studies counted, %d listed, %d queries",
            len(by_study),
            len(to_list),
            pacs.queries,
        )
    del by_study

    unanswered: dict[str, str] = {}
    if commitment is not None:
        result.commitment = True
        committed, failed, unanswered = _commit(config, ledger, commitment)
        result.committed = committed
        for sop, why in failed.items():
            reasons.setdefault(sop, why)  # C-FIND's finding first: it names the study
        unanswered = {s: w for s, w in unanswered.items() if s not in reasons}
    if reasons:
        result.missing = _files_for(ledger, reasons)
    no_study = [p for p in no_study if p.sop_instance_uid not in reasons]  # counted once
    result.unconfirmed = no_study + (_files_for(ledger, unanswered) if unanswered else [])
    result.seconds = time.monotonic() - started
    return result


# -- the result in the ledger -------------------------------------------------------------
def save_result(ledger: Ledger, result: VerifyResult) -> None:
    """Replace the job's last verification with ``result`` (one transaction)."""
    k = ledger.keys
    pipe = ledger.client.pipeline(transaction=True)
    pipe.delete(k.verify, k.verify_missing, k.verify_unconfirmed)
    summary: Mapping[Any, Any] = result.summary()  # redis-py's Mapping key is invariant
    pipe.hset(k.verify, mapping=summary)
    for key, problems in (
        (k.verify_missing, result.missing),
        (k.verify_unconfirmed, result.unconfirmed),
    ):
        for i in range(0, len(problems), _FILES_CHUNK):
            chunk = problems[i : i + _FILES_CHUNK]
            pipe.hset(key, mapping={p.file_id: p.reason for p in chunk})
    pipe.execute()


def load_summary(ledger: Ledger) -> dict[str, str] | None:
    """The last verification's counts (strings, as stored), or None if never verified."""
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(ledger.keys.verify))
    if not raw:
        return None
    return {k.decode(): v.decode() for k, v in raw.items()}


def load_missing(ledger: Ledger, *, unconfirmed: bool = False) -> dict[str, str]:
    """File id → reason for the files the last verification found missing (or unconfirmed)."""
    key = ledger.keys.verify_unconfirmed if unconfirmed else ledger.keys.verify_missing
    raw = cast(dict[bytes, bytes], ledger.client.hgetall(key))
    return {k.decode(): v.decode() for k, v in raw.items()}
