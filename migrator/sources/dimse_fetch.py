"""Fetching from the old PACS: C-GET, or C-MOVE to our own Storage SCP, per series.

The fetching half of ``DimseSource`` (migrator/sources/dimse.py, which lists; its
docstring says how a batch is fetched series by series): ``Fetching`` is mixed into it.
A request's association is a kept one when there is one (migrator/sources/getpool.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from migrator.dicomfile import EXPLICIT_LE, IMPLICIT_LE
from migrator.dul.pdu import ProposedContext
from migrator.dul.retrieving import RetrieveAnswer, RetrievingAssociation, SubOperation
from migrator.errors import (
    AssociationLost,
    AssociationRejected,
    MigratorError,
    PacsQueryError,
    SourceError,
    TransientError,
)
from migrator.scp.incoming import meta_bytes
from migrator.sources.dimse_query import ListingClient, source_association
from migrator.sources.getpool import GetPool, Lease, Opener
from migrator.sources.held import HeldFiles, unlink
from migrator.sources.movescp import MoveReceiver
from migrator.sources.retrieve import (
    Counts,
    Received,
    Refused,
    RefusedAll,
    SeriesGroup,
    unwritable,
)
from migrator.sources.wholes import Wholes
from migrator.syntaxes import ALIASES

if TYPE_CHECKING:
    from migrator.settings import Settings

log = logging.getLogger("migrator.sources.dimse")

#: Study Root C-FIND, proposed with each retrieve (dcmqrscp --require-find wants it).
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: Study Root C-MOVE and C-GET
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
#: The query/retrieve contexts' syntaxes (the identifier is encoded in the one accepted)
QR_SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE)
#: Every transfer syntax offered for a sub-operation, one presentation context each.
SYNTAXES = tuple(dict.fromkeys([*ALIASES.values(), "1.2.840.10008.1.2.4.51"]))


class Fetching:
    """C-GET / C-MOVE requests of a ``DimseSource`` (its attributes, set by its __init__)."""

    uri: str
    config: Settings
    retrieve_mode: str
    move_ae: str
    _held: HeldFiles
    _mover: MoveReceiver | None
    _gets: GetPool | None
    _moves: GetPool | None
    _wholes: Wholes

    def _fetch_group(
        self, group: SeriesGroup, study: str, series: str, wanted: dict[str, str]
    ) -> Received:
        """``wanted`` of ``group``, with the other whole studies of its batch when its own
        study is whole: one STUDY-level request for them all (migrator/sources/wholes.py),
        whose instances go to each group; else ``wanted`` alone (its series whole, or by
        UID). A bundle the source refuses, or answers with none of ``group``'s instances
        (a source that reads a list of Study UIDs as one UID finds nothing, and says
        success), is not asked for again: ``group`` asks on its own, as will the others."""
        self._wholes.ask(self.config, study)
        bundle = self._wholes.bundle(group, wanted)
        if bundle is None:
            return self._retrieve(study, series, wanted)
        try:
            asked = dict(wanted)
            for peer in bundle:
                asked.update(peer.classes)
            studies = dict.fromkeys([study, *(peer.study for peer in bundle)])
            try:
                got = self._retrieve("\\".join(studies), "", asked)
            except Refused:
                self._wholes.bundles = False
                return self._retrieve(study, series, wanted)
            except RefusedAll as exc:
                # Refused for a reason that holds for every instance of it (an unknown move
                # destination): each group's instances fail with it, not asked for again
                # one group at a time.
                for peer in bundle:
                    peer.failed.update(dict.fromkeys(peer.classes, str(exc)))
                raise
            for peer in bundle:
                peer.arrived.update({s: f for s, f in got.files.items() if s in peer.classes})
            mine = {s: f for s, f in got.files.items() if s in wanted}
            if not mine and got.local_error is None:
                if not got.files:
                    self._wholes.bundles = False
                return self._retrieve(study, series, wanted)
            return Received(mine, got.counts, got.local_error)
        finally:
            for peer in bundle:
                peer.lock.release()

    def _retrieve(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        """C-GET or C-MOVE, as ``--retrieve`` says; auto: C-GET until the source refuses
        its context, then C-MOVE (remembered for the source's life)."""
        mode = self.retrieve_mode  # read once: another thread may switch it meanwhile
        if mode == "move":
            return self._c_move(study, series, wanted)
        try:
            return self._c_get(study, series, wanted)
        except NoGet as exc:
            if mode == "auto" and self._mover is not None:
                if self.retrieve_mode == "auto":
                    log.info("%s: %s; fetching by C-MOVE to AE %s", self.uri, exc, self.move_ae)
                self.retrieve_mode = "move"
                return self._c_move(study, series, wanted)
            hint = (
                "give --move-port (and --move-ae, registered at the source) to fetch by C-MOVE"
                if mode == "auto"
                else "give --retrieve move (or auto) with --move-port and --move-ae"
            )
            raise RefusedAll(f"{exc}; {hint}") from None

    def _c_move(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        """One C-MOVE at IMAGE level for ``wanted`` (a UID list) to our own Storage SCP
        (migrator/sources/movescp.py), listening while the move runs."""
        if self._mover is None:
            raise RefusedAll(f"{self.uri}: --retrieve move needs --move-port")
        where = _where(self.uri, study, series)

        def opener(classes: Sequence[str], wildcard: bool) -> Any:
            # FIND too: some archives refuse a retrieve without it.
            assoc = self._associate([_qr(1, MOVE_MODEL), _qr(3, FIND)], [], "C-MOVE", where)
            if assoc.context_of(MOVE_MODEL) is None:
                assoc.release()
                raise SourceError(f"{where}: the source refused C-MOVE (its presentation context)")
            return assoc

        asked = self._asked(series, wanted)
        for fresh in (False, True):
            received = Received()
            scp = None
            try:
                with (
                    self._mover.receiving(set(wanted)) as scp,
                    _lease(self._moves, [], False, fresh, opener) as lease,
                ):
                    received.counts = _answers(
                        lease,
                        lambda: lease.assoc.c_move(MOVE_MODEL, self.move_ae, study, series, asked),
                        scp.reached,
                        f"{where}: " + self._no_answer("C-MOVE"),
                    )
            except _Stale:
                # A kept association the source closed while idle: a new one. Whatever came
                # meanwhile (a late sink) is not kept: the new move asks for all of it again.
                if scp is not None:
                    for kept, _ in scp.received_files().values():
                        self._held.discard(kept)
                continue
            except BaseException:
                # After the listener stopped: no sink adds a file any more (a late one
                # unlinks its own), so none is left behind in the spool.
                if scp is not None:
                    for kept, _ in scp.received_files().values():
                        self._held.discard(kept)
                raise
            break
        assert scp is not None
        received.files = scp.received_files()
        received.local_error = scp.local_error
        last = received.counts.status
        why = ""
        if last == 0xA801:
            why = "C-MOVE 0xA801 Move destination unknown"
        elif (
            not received.files
            and not scp.connections
            and last not in (None, 0x0000, 0xB000, 0xFE00)
            and (last & 0xFF00) != 0xA700  # busy: retried as such
            # Some archives (Orthanc 1.10) answer an unknown destination with 0xC000, as
            # they answer a list holding a UID they do not have: tell the two apart by
            # asking whether it holds every instance asked for.
            and self._holds(study, series, set(wanted), where)
        ):
            why = (
                f"C-MOVE 0x{last:04X} for instances it holds, without opening an "
                "association to our Storage SCP"
            )
        if why:
            for kept, _ in received.files.values():
                self._held.discard(kept)
            raise RefusedAll(
                f"the source refused the move destination AE {self.move_ae}: register it "
                f"there (with this host and port {self._mover.port}; {why})"
            )
        _check_final(received, "C-MOVE", where)
        return received

    def _c_get(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        """One C-GET at IMAGE level for ``wanted`` (a UID list) on one association that
        offers each of their SOP classes in every syntax we know, as Storage SCP; each
        C-STORE sub-operation written to its own spool file as it arrives."""
        where = _where(self.uri, study, series)
        received = Received()

        def keep(event: SubOperation) -> int:
            sop = event.sop_instance
            if sop not in wanted or sop in received.files:
                return 0xA900  # not what was asked for: refused, never written as ours
            meta = meta_bytes(event.sop_class, sop, event.transfer_syntax, self.config.called_ae)
            size = len(meta) + len(event.dataset)
            if self._held.reserve(size):
                # Small, and whole in memory already: no spool file (see held.py).
                received.files[sop] = (meta + event.dataset, size)
                return 0x0000
            path = ""
            try:
                path = self._held.new_path()
                with open(path, "wb") as out:
                    out.write(meta)
                    # The dataset's bytes as the archive sent them: not decoded, not re-encoded.
                    out.write(event.dataset)
                    received.files[sop] = (path, out.tell())
            except OSError as exc:
                if path:
                    unlink(path)
                    received.files.pop(sop, None)
                # Our disk, not the source: said so, and asked again by the send's retries.
                received.local_error = unwritable(os.path.dirname(path) or self._held.spool, exc)
                return 0xA700  # out of resources: the sub-operation failed
            return 0x0000

        def on_store(event: SubOperation) -> int:
            try:
                return keep(event)
            except Exception as exc:
                # Answered 0xC211, and said why here, else the user sees only "did not
                # come".
                log.warning(
                    "%s: a C-GET sub-operation could not be kept: %s: %s",
                    where,
                    type(exc).__name__,
                    exc,
                )
                # Not the source's fault either: the fetch fails (transiently) saying so.
                received.local_error = (
                    f"cannot keep the retrieved instance here: {type(exc).__name__}: {exc}"
                )
                return 0xC211  # unable to process

        classes = sorted(set(wanted.values()) - {""})
        wildcard = "" in wanted.values()
        if wildcard:
            # The listing gave no SOP Class UID (dcmqrscp returns none at IMAGE level): the
            # common storage classes, each in one context listing every syntax (the source
            # picks one and may have to convert), within the 128 contexts.
            classes = list(dict.fromkeys([*classes, *_common_storage_classes()]))[:126]

        def opener(offer: Sequence[str], wild: bool) -> Any:
            return self._open_get(offer, wild, where)

        asked = self._asked(series, wanted)
        for fresh in (False, True):
            try:
                with _lease(self._gets, classes, wildcard, fresh, opener) as lease:
                    lease.on_store = on_store
                    received.counts = _answers(
                        lease,
                        lambda: lease.assoc.c_get(GET_MODEL, study, series, asked, lease.handle),
                        received.files.__len__,
                        f"{where}: " + self._no_answer("C-GET"),
                    )
            except _Stale:
                # An association kept from an earlier request that the source closed while
                # it was idle: asked again at once on a new one (not a retry of the file).
                received = Received()
                continue
            except BaseException:
                for kept, _ in received.files.values():
                    self._held.discard(kept)
                raise
            break
        _check_final(received, "C-GET", where)
        return received

    def _asked(self, series: str, wanted: dict[str, str]) -> list[str]:
        """The SOP Instance UIDs to ask for: none when ``wanted`` is whole studies (no
        ``series``: STUDY level) or the whole series (SERIES level), as the source's counts
        say (migrator/sources/wholes.py); else ``wanted``, by UID at IMAGE level."""
        if not series or self._wholes.whole_series(series, len(wanted)):
            return []
        return list(wanted)

    def _open_get(
        self, classes: Sequence[str], wildcard: bool, where: str
    ) -> RetrievingAssociation:
        """An association for C-GET: the model, FIND, and each SOP class as Storage SCP
        (role selection) in every syntax we know, a context each (``wildcard``: one context
        per class listing them all, the source picks). Its sub-operations go to the
        ``on_store`` given with each request."""
        contexts = [_qr(1, GET_MODEL), _qr(3, FIND)]
        for sop_class in classes:
            offers = [SYNTAXES] if wildcard else [(ts,) for ts in SYNTAXES]
            for syntaxes in offers:
                contexts.append(ProposedContext(2 * len(contexts) + 1, sop_class, syntaxes))
        assoc = self._associate(contexts, [(c, False, True) for c in classes], "C-GET", where)
        if assoc.context_of(GET_MODEL) is None:
            assoc.release()
            raise NoGet(f"{self.uri}: the source refused C-GET (its presentation context)")
        return assoc

    def _associate(
        self,
        contexts: list[ProposedContext],
        roles: list[tuple[str, bool, bool]],
        what: str,
        where: str,
    ) -> RetrievingAssociation:
        try:
            return source_association(self.config, contexts, roles)
        except AssociationRejected as exc:  # the archive's answer, said as is
            raise _association_error(exc, what, where) from None

    def _no_answer(self, what: str) -> str:
        return (
            f"no {what} answer (aborted or timed out); does the source know AE "
            f"{self.config.calling_ae} and allow it {what}? (register it there, or give "
            "--source-calling-ae)"
        )

    def _holds(self, study: str, series: str, sops: set[str], where: str) -> bool:
        """Whether the source lists every one of ``sops`` in the series (C-FIND); no
        ``series``: in the studies (a source that does not answer an IMAGE-level query for
        a list of studies is taken not to: the request is refused, each group asks again
        on its own)."""
        keys = {"StudyInstanceUID": study}
        if series:
            keys["SeriesInstanceUID"] = series
        try:
            with ListingClient(self.config) as q:
                found = q.find("IMAGE", keys, ["SOPInstanceUID"])
        except PacsQueryError as exc:
            if not series:
                return False  # no IMAGE level for a list of studies: taken not to hold them
            raise SourceError(f"{where}: {exc}") from None
        return sops <= {str(m.get("SOPInstanceUID", "")) for m in found}


class NoGet(SourceError):
    """The source does not take C-GET from us (its context refused)."""


#: A kept association that fails a request this soon (lost: the source closed it, the
#: request went nowhere) was closed by the source while idle; later, it is the request's
#: own failure (a DIMSE timeout), not asked again on a new association.
STALE_S = 2.0


def _answers(
    lease: Lease,
    request: Callable[[], Iterable[RetrieveAnswer]],
    came: Callable[[], object],
    no_answer: str,
) -> Counts:
    """The final C-GET / C-MOVE response's counts, read through every response of
    ``request()`` on ``lease``. ``_Stale`` when a kept association failed at once with
    nothing come yet (``came()``): the source closed it while it was idle."""
    t0 = time.monotonic()
    counts = Counts()
    try:
        for answer in request():
            counts = Counts(
                completed=answer.completed,
                failed=answer.failed,
                warning=answer.warning,
                remaining=answer.remaining,
                status=answer.status,
            )
    except AssociationLost as exc:
        if lease.reused and not came() and _soon(t0):
            raise _Stale from None
        raise TransientError(f"{no_answer}: {exc}") from None
    return counts


def _where(uri: str, study: str, series: str) -> str:
    """A request's target, said as a URI (whole studies: the first, and how many more)."""
    if series:
        return f"{uri}/studies/{study}/series/{series}"
    first, *more = study.split("\\")
    return f"{uri}/studies/{first}" + (f" (and {len(more)} more studies)" if more else "")


def _soon(since: float) -> bool:
    return time.monotonic() - since < STALE_S


class _Stale(Exception):
    """A kept association the source closed while idle: the request goes on a new one."""


def _lease(
    pool: GetPool | None, classes: list[str], wildcard: bool, fresh: bool, opener: Opener
) -> contextlib.AbstractContextManager[Lease]:
    """An association for one retrieve request: a kept one (migrator/sources/getpool.py),
    or one opened for this request only (``fresh``, or no pool: under
    --source-max-associations)."""
    if pool is not None and not fresh:
        return pool.lease(classes, wildcard, opener)
    return _one_off(opener, classes, wildcard)


@contextlib.contextmanager
def _one_off(opener: Opener, classes: list[str], wildcard: bool) -> Iterator[Lease]:
    lease = Lease(opener(classes, wildcard), frozenset(), wildcard)
    try:
        yield lease
    except BaseException:
        # Aborted, not released: the request may be half-way (see getpool.lease).
        lease.on_store = None
        with contextlib.suppress(Exception):
            lease.assoc.abort()
        raise
    lease.on_store = None
    if lease.assoc.is_established:
        lease.assoc.release()


def _check_final(received: Received, what: str, where: str) -> None:
    """Nothing came and the final status says why: a busy source is retried later, any
    other failure refuses the request (split by the caller down to the instance)."""
    last = received.counts.status
    if received.files or last is None:
        return
    if received.local_error:
        return  # what came could not be kept here: said as such by the caller
    if (last & 0xFF00) == 0xA700:
        raise TransientError(f"{where}: the source is out of resources ({what} 0x{last:04X})")
    if last not in (0x0000, 0xB000, 0xFE00):
        raise Refused(f"{where}: the source refused the {what} (0x{last:04X})")


def _association_error(exc: Exception, what: str, where: str) -> MigratorError:
    """No association for the request: a source that says it is busy (A-ASSOCIATE-RJ
    rejected-transient) is asked again later, as any transient error of a source; any other
    refusal fails the request's instances at once (asking for halves of it would open an
    association per half and get the same answer)."""
    if isinstance(exc, AssociationRejected) and exc.transient:
        return TransientError(f"{where}: {what} association: {exc} (busy: asked again later)")
    return SourceError(f"{where}: {what} association: {exc}")


def _common_storage_classes() -> list[str]:
    from pynetdicom import StoragePresentationContexts

    return [str(cx.abstract_syntax) for cx in StoragePresentationContexts]


def _qr(context_id: int, model: str) -> ProposedContext:
    return ProposedContext(context_id, model, QR_SYNTAXES)
