"""What `migrator scp` does with each association and C-STORE (the acceptor's handler).

Statuses answered by the receiver itself (fault injection aside, see ``faults``):

=========  ================================================================
``0x0000`` written to ``OUTPUT/<Study>/<Series>/<SOP>.dcm`` (or ``OUTPUT/<SOP>.dcm``)
``0xC000`` cannot understand: the dataset is unreadable, a UID needed for the path is
           missing or not a valid UID (``../x``, ``/``, NUL...), or the dataset's SOP
           Instance UID differs from the C-STORE request's; nothing is written
``0xA700`` out of resources: writing failed (disk full, permission, I/O error)
=========  ================================================================
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

from migrator.dul.acceptor import (
    BY_HANDLER,
    AbortAssociation,
    Accepted,
    End,
    StoreOutcome,
    StoreRequest,
    StoreSink,
)
from migrator.dul.acse import REJECT_LOCAL_LIMIT, REJECT_NO_REASON, AssociateRQ
from migrator.errors import SourceError
from migrator.scp.faults import Action, FaultInjector
from migrator.scp.guards import Connection, ConnectionGuard
from migrator.scp.incoming import IncomingFile, Placer, meta_bytes
from migrator.scp.stats import ScpStats
from migrator.scp.storage import UnsafeUIDError, checked_uid, relative_parts

if TYPE_CHECKING:
    from migrator.scp.server import ScpConfig

log = logging.getLogger("migrator.scp")

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700

# PS3.8 §9.3.3.2 presentation context results, for the log.
_CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


@functools.lru_cache(maxsize=512)
def sop_name(uid: str) -> str:
    """``CT Image Storage`` for a known UID, the UID itself otherwise."""
    from pydicom.uid import UID  # at the first C-STORE, not at start-up

    return UID(uid).name if uid else "(no SOP class)"


class ScpHandler:
    """One per receiver; called from every association's thread (state under locks:
    the guard's, the statistics', the fault injector's)."""

    def __init__(
        self,
        config: ScpConfig,
        guard: ConnectionGuard,
        stats: ScpStats,
        faults: FaultInjector,
    ) -> None:
        self.config = config
        self.guard = guard
        self.stats = stats
        self.faults = faults
        self.placer = Placer(config.output_dir)
        self.root = str(self.placer.root)
        #: the guard's record of each association's connection
        self.connections: dict[Accepted, Connection] = {}

    # -- association events ---------------------------------------------------------------

    def admit(self, assoc: Accepted, rq: AssociateRQ) -> tuple[int, int, int] | None:
        if self.config.faults.refuse:
            self.stats.association_rejected()
            log.info(
                "rejected association from %s: permanent, service user, no reason given "
                "(fault injection: --refuse)",
                assoc.peer,
            )
            return REJECT_NO_REASON
        conn = self.connections.get(assoc)
        why = self.guard.admit(conn) if conn is not None else None
        if why is None:
            return None
        self.stats.association_rejected()
        log.warning("rejected association from %s: %s", assoc.peer, why)
        return REJECT_LOCAL_LIMIT

    def established(self, assoc: Accepted) -> None:
        self.stats.association_accepted()
        rejected = [(ctx, result) for ctx, result, _ in assoc.results if result != 0]
        log.info(
            "association from %s accepted: %d presentation context(s) accepted, %d rejected",
            assoc.peer,
            len(assoc.contexts),
            len(rejected),
        )
        for ctx, result in rejected:
            self.stats.context_rejected()
            uid = ctx.abstract_syntax[:64]
            log.info(
                "rejected presentation context %s (%s) from %s: %s",
                sop_name(uid),
                uid,
                assoc.peer,
                _CONTEXT_RESULTS.get(result, f"result {result}"),
            )

    def ended(self, assoc: Accepted, how: End, why: str) -> None:
        conn = self.connections.pop(assoc, None)
        if conn is not None:
            if how is End.HANDSHAKE:
                self.guard.expired(conn)
            self.guard.close(conn)
        cfg = self.config
        if how is End.IDLE:
            log.warning(
                "association from %s aborted: no PDU for %g s (--idle-timeout)",
                assoc.peer,
                cfg.idle_timeout,
            )
        elif how is End.STALLED:
            log.warning(
                "association from %s dropped: no data for %g s in the middle of a PDU "
                "(--io-timeout)",
                assoc.peer,
                cfg.io_timeout,
            )
        elif how is End.PROTOCOL:
            log.warning("association from %s dropped: %s", assoc.peer, why[:300])
        elif how is End.PEER_ABORTED and assoc.established:
            log.info("association from %s aborted", assoc.peer)
        elif how is End.CLOSED and assoc.established:
            log.warning("association from %s dropped: %s", assoc.peer, why[:300])
        elif how is End.REJECTED and why != BY_HANDLER:  # by the upper layer itself
            self.stats.association_rejected()
            log.warning("rejected association from %s: %s", assoc.peer, why)
        elif how is End.RELEASED:
            log.debug("association from %s released", assoc.peer)

    # -- DIMSE services -------------------------------------------------------------------

    def echo(self, assoc: Accepted) -> int:
        self.stats.echo()
        log.info("C-ECHO from %s: Success", assoc.peer)
        return STATUS_SUCCESS

    def store(self, assoc: Accepted, request: StoreRequest) -> StoreSink:
        return _Store(self, assoc, request)

    def refused(self, number: int, who: str, name: str, why: str) -> StoreOutcome:
        self.stats.store_failed(fault=False)
        log.warning(
            "C-STORE #%d from %s: %s refused, %s (0x%04X)",
            number,
            who,
            name,
            why,
            STATUS_CANNOT_UNDERSTAND,
        )
        return StoreOutcome(STATUS_CANNOT_UNDERSTAND)


class _Store:
    """One C-STORE: the dataset goes to an ``IncomingFile`` (or nowhere when the request's
    own UIDs are unusable), then the faults, the checks and the rename decide."""

    def __init__(self, scp: ScpHandler, assoc: Accepted, request: StoreRequest) -> None:
        self.scp = scp
        self.assoc = assoc
        self.request = request
        self.started = time.perf_counter()
        self.file: IncomingFile | None = None
        self.refusal = ""
        self.write_error: OSError | None = None
        try:
            sop = checked_uid(request.sop_instance, "SOP Instance UID")
            sop_class = checked_uid(request.sop_class, "SOP Class UID")
        except UnsafeUIDError as exc:
            self.refusal = str(exc)  # the dataset is read and dropped
            return
        syntax = request.context.transfer_syntax
        meta = meta_bytes(sop_class, sop, syntax, assoc.calling_ae)
        try:
            self.file = IncomingFile(scp.root, sop, meta, syntax=syntax)
        except OSError as exc:
            self.write_error = exc

    def write(self, data: memoryview) -> None:
        if self.file is None:
            return
        try:
            self.file.write(data)
        except OSError as exc:
            self.write_error = exc
            self.file.discard()
            self.file = None

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()

    def finish(self) -> StoreOutcome:
        scp, cfg = self.scp, self.scp.config
        decision = scp.faults.on_store(self.assoc)
        scp.stats.store_received()
        try:
            if decision.action is Action.STORE:
                return self._store(decision.number)
            self.discard()
            scp.stats.store_failed(fault=True)
            name = sop_name(self.request.sop_class)
            if decision.action is Action.ABORT:
                log.info(
                    "C-STORE #%d from %s: %s not stored, association aborted "
                    "(fault injection: --abort-after %s)",
                    decision.number,
                    self.assoc.peer,
                    name,
                    cfg.faults.abort_after,
                )
                raise AbortAssociation("fault injection: --abort-after")
            status = decision.status if decision.status is not None else STATUS_OUT_OF_RESOURCES
            log.info(
                "C-STORE #%d from %s: %s not stored, answered 0x%04X (fault injection)",
                decision.number,
                self.assoc.peer,
                name,
                status,
            )
            return StoreOutcome(status)
        except AbortAssociation:
            raise
        except Exception:
            # A bug, not a peer problem: keep the counters honest and answer 0xC211
            # ("unable to process", PS3.4 Annex B.2.3) instead of dropping the peer.
            self.discard()
            scp.stats.store_failed(fault=False)
            log.exception("C-STORE #%d from %s: handler error", decision.number, self.assoc.peer)
            return StoreOutcome(0xC211)
        finally:
            if cfg.faults.response_delay > 0 and decision.action is not Action.ABORT:
                time.sleep(cfg.faults.response_delay)

    def _store(self, number: int) -> StoreOutcome:
        scp, request = self.scp, self.request
        if self.refusal:
            return self._refused(number, self.refusal)
        file = self.file
        try:
            if file is None or self.write_error is not None:
                raise self.write_error or OSError("no file")
            file.close()
        except OSError as exc:
            self.discard()
            return self._write_failed(number, exc)
        try:
            header = file.header()
        except SourceError as exc:
            file.discard()
            return self._refused(number, f"unreadable dataset: {exc}")
        if header.sop_instance_uid != request.sop_instance:
            file.discard()
            return self._refused(
                number,
                f"dataset SOP Instance UID {header.sop_instance_uid[:80]!r} differs from the "
                f"C-STORE request's {request.sop_instance[:80]!r}",
            )
        try:
            rel = relative_parts(
                header.study_uid, header.series_uid, header.sop_instance_uid, scp.config.organize
            )
            # Whether a file was replaced is only said in the -v line: no lstat otherwise.
            told = log.isEnabledFor(logging.DEBUG)
            _, replaced = scp.placer.place(file.path, rel, check=told)
        except UnsafeUIDError as exc:
            file.discard()
            return self._refused(number, str(exc))
        except OSError as exc:
            file.discard()
            return self._write_failed(number, exc)
        scp.stats.store_succeeded()
        # A line per stored file only with -v: at thousands of files a second it would be
        # a quarter of the receiver's CPU and a flood (storescp, dcmrecv and Orthanc print
        # none by default either). Failures are always logged; the counts are in the
        # statistics line and the summary.
        if not told:
            return StoreOutcome(STATUS_SUCCESS)
        who, name = self.assoc.peer, sop_name(request.sop_class)
        elapsed = time.perf_counter() - self.started

        def said() -> None:  # after the response: the sender does not wait for our log
            log.debug(
                "C-STORE #%d from %s: %s stored as %s%s (%.1f MB, %s, %.1f ms)",
                number,
                who,
                name,
                "/".join(rel),
                " (replaced an existing file)" if replaced else "",
                header.size / 1e6,
                sop_name(request.context.transfer_syntax),
                elapsed * 1000,
            )

        return StoreOutcome(STATUS_SUCCESS, then=said)

    def _refused(self, number: int, why: str) -> StoreOutcome:
        return self.scp.refused(number, self.assoc.peer, sop_name(self.request.sop_class), why)

    def _write_failed(self, number: int, exc: OSError) -> StoreOutcome:
        self.scp.stats.store_failed(fault=False)
        log.error(
            "C-STORE #%d from %s: %s not stored, write failed: %s (0x%04X)",
            number,
            self.assoc.peer,
            sop_name(self.request.sop_class),
            exc.strerror or exc,
            STATUS_OUT_OF_RESOURCES,
        )
        return StoreOutcome(STATUS_OUT_OF_RESOURCES)
