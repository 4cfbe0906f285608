"""Storage Commitment (Push Model, PS3.4 Annex J): does the PACS commit to every stored instance?

N-ACTIONs with the SOP Class/Instance UIDs in batches (at most ``window`` waiting for their
report at once), then the N-EVENT-REPORTs, on the same association or on a reverse
association the PACS opens to us (the listener of :class:`CommitmentSettings`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
)

from migrator.errors import ConnectError, PacsQueryError
from migrator.ledger import Ledger
from migrator.settings import Settings
from migrator.status import fmt, meaning
from migrator.verify.pacs import associate, new_ae
from migrator.verify.reactor import ReactorGuard
from migrator.verify.stored import stored_files

log = logging.getLogger("migrator.verify")  # one logger for the whole package, as before

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


def commit(
    config: Settings, ledger: Ledger, settings: CommitmentSettings
) -> tuple[int, dict[str, str], dict[str, str]]:
    """Ask the PACS to commit to every stored instance: (committed, failed, unanswered).

    ``failed`` and ``unanswered`` map SOP Instance UID → reason."""
    reports = _Reports()
    handlers: list[EventHandlerType] = [(evt.EVT_N_EVENT_REPORT, reports.handle)]
    ae = new_ae(config)
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
        assoc = associate(ae, config, evt_handlers=handlers)
        guard = ReactorGuard(assoc)
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
                    assoc = associate(ae, config, evt_handlers=handlers)
                    guard = ReactorGuard(assoc)
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
    for rows in stored_files(ledger):
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
