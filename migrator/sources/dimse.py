"""``DimseSource``: the old PACS itself, listed by C-FIND, fetched by C-GET or C-MOVE.

``dimse://AE@host:port`` is a source like a folder: Study Root C-FIND lists the studies
(optionally in a StudyDate window and for one modality, split in date windows under a
result cap: migrator/sources/windows.py), then each study's instances at IMAGE level with
their series and SOP Class UIDs: in one query when the STUDY level said how many it holds
and the answer has that many, else series by series. Each instance is one item:
``dimse://AE@host:port/studies/{study}/series/{series}/instances/{sop}?class={sop class}``.
Planned like a manifest's lines (UIDs known, nothing downloaded).

Fetching is a C-GET at IMAGE level on an association that offers the SOP classes the
listing gave, each in every transfer syntax this tool knows, one presentation context each,
so that the archive sends each instance in the syntax it holds it in (not re-encoded).
A batch tells the source its items first (``expect``): they are fetched series by series,
one C-GET with the series' SOP Instance UIDs as a list, on one association
(migrator/sources/retrieve.py: at most 64 instances and 11 SOP classes per request, within
the 128 presentation contexts of an association), kept open for the next request
(migrator/sources/getpool.py). Each C-STORE sub-operation is written as
it arrives to its own spool file (File Meta + the dataset's bytes as received) that the
sender then reads and sends (migrator/sources/held.py: one download per instance, the
spool bounded by the batch). What C-FIND promised and did not come is asked for once more,
then fails with the reason: ``the source sent 9 of 10 instances of series X; this one did
not come after a retry``. An archive that refuses a whole list for one UID it no longer
holds (Orthanc: 0xC000) is asked for halves of it, down to that instance; an association
it will not open is not split: busy (rejected-transient), the fetch fails transiently and
is retried as a send is; otherwise the request's instances fail at once. An instance that
came but could not be written here fails transiently naming our own disk.
The archive must know our calling AE (``--source-calling-ae``) and allow it C-GET.
A listing without SOP Class UIDs (dcmqrscp gives none at IMAGE level) offers the common
storage classes instead, one context each listing every syntax (the archive picks).

``--retrieve move`` asks for the same lists by C-MOVE to our own Storage SCP
(migrator/sources/movescp.py: ``--move-ae`` on ``--move-port``, which the archive must
know), listening while the move runs; instances are matched by SOP Instance UID into the
same spool. ``--retrieve auto`` (the default) uses C-GET until the archive refuses its
context, then C-MOVE. An unknown move destination fails each instance once with ``the
source refused the move destination AE X: register it there`` (0xA801, or Orthanc 1.10's
0xC000 for instances a C-FIND shows it holds, with no association opened to us).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

from migrator.errors import (
    AssociationRejected,
    ConfigError,
    ConnectError,
    MigratorError,
    SourceError,
    TransientError,
)
from migrator.scp.incoming import meta_bytes
from migrator.sources.base import Payload, SourceItem
from migrator.sources.getpool import GetPool, Lease, Opener
from migrator.sources.held import HeldFiles, unlink
from migrator.sources.manifest import ManifestEntry
from migrator.sources.movescp import MoveReceiver
from migrator.sources.retrieve import (
    MAX_CLASSES,
    Counts,
    Groups,
    Received,
    Refused,
    RefusedAll,
    unwritable,
)
from migrator.sources.windows import StudyQuery, dicom_range, studies
from migrator.syntaxes import ALIASES
from migrator.validation import is_valid_uid

if TYPE_CHECKING:
    from migrator.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "dimse://"
_URI = re.compile(r"^dimse://(?P<ae>[^@/]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})(?P<rest>/.*)?$")
#: Study Root C-FIND, proposed with each retrieve (dcmqrscp --require-find wants it).
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: Every transfer syntax offered for a sub-operation, one presentation context each.
SYNTAXES = tuple(dict.fromkeys([*ALIASES.values(), "1.2.840.10008.1.2.4.51"]))


def is_dimse(uri: str) -> bool:
    return uri.startswith(PREFIX)


def source_root(uri: str) -> str:
    """``dimse://AE@host:port`` of a source or item URI."""
    m = _URI.match(uri.split("?", 1)[0])
    if m is None:
        raise ConfigError(f"{uri!r}: expected dimse://AE@host:port (the old PACS's AE title)")
    return f"{PREFIX}{m['ae']}@{m['host']}:{m['port']}"


class DimseSource:
    """The instances of a Query/Retrieve SCP (see the module's docstring)."""

    def __init__(
        self,
        uri: str,
        settings: Settings,
        *,
        query: StudyQuery | None = None,
        calling_ae: str | None = None,
    ) -> None:
        m = _URI.match(uri)
        if m is None or (m["rest"] or "/") != "/":
            raise ConfigError(f"{uri!r}: expected dimse://AE@host:port (the old PACS's AE title)")
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise ConfigError(f"{uri!r}: port {port} out of range")
        self.uri = f"{PREFIX}{m['ae']}@{m['host']}:{port}"
        # The old PACS as a "destination" of our queries: its address, our calling AE.
        self.config = dataclasses.replace(
            settings,
            host=m["host"],
            port=port,
            called_ae=m["ae"],
            calling_ae=calling_ae or settings.calling_ae,
            dicomweb=None,
            tls=False,
        )
        self.query = query or StudyQuery()
        self._held = HeldFiles("migrator-cget-")
        self._groups = Groups()
        #: instances per study as the STUDY-level C-FIND said (listing: _study_images)
        self._study_sizes: dict[str, int] = {}
        #: whether the source answers IMAGE level by study alone (None: not asked yet)
        self._relaxed_images: bool | None = None
        #: C-GET associations kept between requests; not under --source-max-associations,
        #: where one kept open would hold the source's slot beyond its request
        self._gets = None if settings.source_max_associations else GetPool(MAX_CLASSES)
        self._moves = None if settings.source_max_associations else GetPool(MAX_CLASSES)
        self.retrieve_mode = settings.source_retrieve
        #: the move destination: our own AE title towards the source by default
        self.move_ae = settings.move_ae or self.config.calling_ae
        self._mover = (
            MoveReceiver(
                settings.move_port,
                SYNTAXES,
                self._held.new_path,
                max_pdu=settings.max_pdu,
                timeout=settings.dimse_timeout,
            )
            if settings.move_port
            else None
        )

    def __repr__(self) -> str:
        return f"DimseSource({self.uri!r})"

    # -- listing ---------------------------------------------------------------------------

    def iter_items(self) -> Iterator[SourceItem]:
        for entry in self.iter_entries():
            yield SourceItem(entry.uri, 0)

    def iter_entries(self) -> Iterator[ManifestEntry]:
        """Every instance, study by study, with its UIDs (sizes are unknown: 0)."""
        from migrator.verify.pacs import PacsQueryError
        from migrator.verify.query import QueryClient

        q = [QueryClient(self.config)]  # replaced when a strict source drops it (below)
        try:
            for study in studies(self.query, lambda d: self._window(q[0], d), self.uri):
                try:
                    listed = list(self._study_images(q[0], study))
                except _RelaxedDropped:
                    # The source closed the association on the study-wide IMAGE query: a new
                    # one, and this study (and every next one) series by series.
                    q[0].__exit__(None, None, None)
                    q[0] = QueryClient(self.config)
                    listed = list(self._study_images(q[0], study))
                for se, images in listed:
                    for sop, cls in images:
                        path = f"/studies/{study}/series/{se}/instances/{sop}"
                        uri = f"{self.uri}{path}?class={quote(cls)}"
                        yield ManifestEntry(0, uri, 0, sop, study)
        except PacsQueryError as exc:
            raise SourceError(f"{self.uri}: {exc}") from None
        finally:
            q[0].__exit__(None, None, None)

    def _study_images(self, q: Any, study: str) -> Iterator[tuple[str, list[tuple[str, str]]]]:
        """A study's instances, series by series: ``(series UID, [(SOP UID, class)])``.

        One IMAGE-level query for the whole study when the source said at STUDY level how
        many instances it holds (NumberOfStudyRelatedInstances) and the answer has exactly
        that many, each with its series: a third of the queries of the hierarchical way
        (one per study, not one per study and one per series), which was most of the time
        listing a PACS took (300 studies / 600 series: 900 C-FINDs, ~8 s against Orthanc).
        Otherwise (no count, a source that wants the series' UID at IMAGE level as
        hierarchical query/retrieve does, an answer cut short or of another size), the
        hierarchical way: each series, then its instances."""
        from migrator.verify.pacs import PacsQueryError

        promised = self._study_sizes.pop(study, None)
        if promised and self._relaxed_images is not False:
            returned = ["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
            cut: list[bool] = []
            try:
                found = q.find("IMAGE", {"StudyInstanceUID": study}, returned, cut=cut)
            except PacsQueryError as exc:
                log.info("%s: IMAGE level by study refused (%s); series by series", self.uri, exc)
                self._relaxed_images = False
                found, cut = [], [True]
            except ConnectError as exc:
                if self._relaxed_images:
                    raise  # it answered such queries before: a real loss of the source
                log.info("%s: IMAGE level by study dropped (%s); series by series", self.uri, exc)
                self._relaxed_images = False
                raise _RelaxedDropped from None
            if not found:
                self._relaxed_images = False  # no answer to it at all: not asked again
            by_series: dict[str, list[tuple[str, str]]] = {}
            for image in found:
                se = str(image.get("SeriesInstanceUID", ""))
                sop = str(image.get("SOPInstanceUID", ""))
                if not se or not sop:
                    by_series = {}
                    break
                by_series.setdefault(se, []).append((sop, str(image.get("SOPClassUID", ""))))
            # Distinct SOP Instance UIDs: an answer repeating one instance and missing another
            # has the right length but not the right set.
            distinct = len({sop for images in by_series.values() for sop, _ in images})
            if not cut and distinct == promised == len(found):
                self._relaxed_images = True
                yield from by_series.items()
                return
        keys = {"StudyInstanceUID": study}
        for series in self._all(q, "SERIES", keys, ["SeriesInstanceUID"]):
            se = str(series.get("SeriesInstanceUID", ""))
            if not se:
                continue
            image_keys = {**keys, "SeriesInstanceUID": se}
            returned = ["SOPInstanceUID", "SOPClassUID"]
            images = self._all(q, "IMAGE", image_keys, returned)
            yield (
                se,
                [(str(i.get("SOPInstanceUID", "")), str(i.get("SOPClassUID", ""))) for i in images],
            )

    def _all(self, q: Any, level: str, keys: dict[str, str], returned: list[str]) -> list[Any]:
        """Every match below the study level; an answer the source cut short is an error
        (no date window splits a study's series or a series' instances)."""
        cut: list[bool] = []
        found: list[Any] = q.find(level, keys, returned, cut=cut)
        if cut:
            raise SourceError(
                f"{self.uri}: the source cut its {level}-level answer for study "
                f"{keys['StudyInstanceUID']} short after {len(found)} results (a result cap "
                "such as Orthanc's LimitFindInstances): raise it there"
            )
        return found

    def _window(self, q: Any, dates: tuple[dt.date, dt.date] | None) -> tuple[list[str], bool]:
        keys = {}
        if dates is not None:
            keys["StudyDate"] = dicom_range(dates)
        if self.query.modality:
            keys["ModalitiesInStudy"] = self.query.modality
        cut: list[bool] = []
        returned = ["StudyInstanceUID", "NumberOfStudyRelatedInstances"]
        found = q.find("STUDY", keys, returned, cut=cut)
        uids = []
        for m in found:
            uid = str(m.get("StudyInstanceUID", ""))
            if not uid:
                continue
            uids.append(uid)
            with contextlib.suppress(TypeError, ValueError):
                size = int(m.get("NumberOfStudyRelatedInstances", "") or 0)
                if size > 0:
                    self._study_sizes[uid] = size
        return uids, bool(cut)

    # -- fetching --------------------------------------------------------------------------

    def expect(self, items: Iterable[SourceItem]) -> None:
        """The items about to be fetched (a batch): fetched series by series, one request
        per series on one association (migrator/sources/retrieve.py)."""
        parsed = []
        for item in items:
            with contextlib.suppress(SourceError):  # a bad URI fails at its own fetch
                parsed.append((item.uri, *_parse_item(item.uri)))
        self._groups.expect(parsed)

    def fetch(self, item: SourceItem) -> contextlib.AbstractContextManager[Payload]:
        return self._held.fetch(item.uri, lambda: self._get(item))

    def _get(self, item: SourceItem) -> tuple[str, int]:
        group, sop = self._groups.group_of(item.uri, lambda: _parse_item(item.uri))
        return group.take(sop, self._retrieve)

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
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelMove,
        )

        from migrator.verify.pacs import associate, new_ae

        if self._mover is None:
            raise RefusedAll(f"{self.uri}: --retrieve move needs --move-port")
        where = f"{self.uri}/studies/{study}/series/{series}"
        move_uid = StudyRootQueryRetrieveInformationModelMove

        def opener(classes: Sequence[str], wildcard: bool, on_store: Callable[[Any], int]) -> Any:
            ae = new_ae(self.config)
            ae.add_requested_context(move_uid)
            ae.add_requested_context(FIND)  # some archives refuse a retrieve without it
            try:
                return associate(ae, self.config)
            except ConnectError:
                raise
            except Exception as exc:
                raise _association_error(exc, "C-MOVE", where) from None

        for fresh in (False, True):
            received = Received()
            scp = None
            try:
                with (
                    self._mover.receiving(set(wanted)) as scp,
                    _lease(self._moves, [], False, fresh, opener) as lease,
                ):
                    t0 = time.monotonic()
                    try:
                        answers = lease.assoc.send_c_move(
                            _query(study, series, wanted), self.move_ae, move_uid
                        )
                        for status, _ in answers:
                            code = cast(int | None, getattr(status, "Status", None))
                            if code is None:
                                if lease.reused and not scp.connections and _soon(t0):
                                    raise _Stale
                                raise TransientError(
                                    f"{where}: no C-MOVE answer (aborted or timed out); does "
                                    f"the source know AE {self.config.calling_ae} and allow it "
                                    "C-MOVE? (register it there, or give --source-calling-ae)"
                                )
                            received.counts = _counts(status, code)
                    except RuntimeError:  # pynetdicom: the association is no longer up
                        if lease.reused and not scp.connections and _soon(t0):
                            raise _Stale from None
                        raise
            except _Stale:
                # A kept association the source closed while idle: a new one. Whatever came
                # meanwhile (a late sink) is not kept: the new move asks for all of it again.
                if scp is not None:
                    for path, _ in scp.received_files().values():
                        unlink(path)
                continue
            except BaseException:
                # After the listener stopped: no sink adds a file any more (a late one
                # unlinks its own), so none is left behind in the spool.
                if scp is not None:
                    for path, _ in scp.received_files().values():
                        unlink(path)
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
            for path, _ in received.files.values():
                unlink(path)
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
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelGet,
        )

        where = f"{self.uri}/studies/{study}/series/{series}"
        received = Received()

        def keep(event: Any) -> int:
            sop = str(event.request.AffectedSOPInstanceUID)
            if sop not in wanted or sop in received.files:
                return 0xA900  # not what was asked for: refused, never written as ours
            # The File Meta written here, not by pydicom's event.file_meta and its writer
            # (~0.5 ms a sub-operation, a sixth of what receiving one cost).
            meta = meta_bytes(
                str(event.request.AffectedSOPClassUID),
                sop,
                str(event.context.transfer_syntax),
                self.config.called_ae,
            )
            path = ""
            try:
                path = self._held.new_path()
                with open(path, "wb") as out:
                    out.write(meta)
                    # The dataset's bytes as the archive sent them: not decoded, not re-encoded.
                    out.write(event.request.DataSet.getvalue())
                    received.files[sop] = (path, out.tell())
            except OSError as exc:
                if path:
                    unlink(path)
                    received.files.pop(sop, None)
                # Our disk, not the source: said so, and asked again by the send's retries.
                received.local_error = unwritable(os.path.dirname(path) or self._held.spool, exc)
                return 0xA700  # out of resources: the sub-operation failed
            return 0x0000

        def on_store(event: Any) -> int:
            try:
                return keep(event)
            except Exception as exc:
                # pynetdicom would log it (hidden: its logger is at CRITICAL unless -vv) and
                # answer 0xC211: say why here, else the user sees only "did not come".
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
        get_uid = StudyRootQueryRetrieveInformationModelGet

        def opener(offer: Sequence[str], wild: bool, on_store: Callable[[Any], int]) -> Any:
            return self._open_get(offer, wild, on_store, where)

        for fresh in (False, True):
            try:
                with _lease(self._gets, classes, wildcard, fresh, opener) as lease:
                    lease.on_store = on_store
                    t0 = time.monotonic()
                    try:
                        for status, _ in lease.assoc.send_c_get(
                            _query(study, series, wanted), get_uid
                        ):
                            code = cast(int | None, getattr(status, "Status", None))
                            if code is None:
                                if lease.reused and not received.files and _soon(t0):
                                    raise _Stale
                                raise TransientError(
                                    f"{where}: no C-GET answer (aborted or timed out); does "
                                    f"the source know AE {self.config.calling_ae} and allow it "
                                    "C-GET? (register it there, or give --source-calling-ae)"
                                )
                            received.counts = _counts(status, code)
                    except RuntimeError:  # pynetdicom: the association is no longer up
                        if lease.reused and not received.files and _soon(t0):
                            raise _Stale from None
                        raise
            except _Stale:
                # An association kept from an earlier request that the source closed while
                # it was idle: asked again at once on a new one (not a retry of the file).
                received = Received()
                continue
            except BaseException:
                # After the association is gone (on_store runs on its own thread): a copy,
                # so that a late sub-operation cannot change the dict while it is read.
                for path, _ in list(received.files.values()):
                    unlink(path)
                raise
            break
        _check_final(received, "C-GET", where)
        return received

    def _open_get(
        self, classes: Sequence[str], wildcard: bool, on_store: Callable[[Any], int], where: str
    ) -> Any:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]
            StudyRootQueryRetrieveInformationModelGet,
        )

        from migrator.verify.pacs import PacsQueryError, associate, new_ae

        ae = new_ae(self.config)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(FIND)  # some archives refuse a retrieve without it
        for sop_class in classes:
            if wildcard:
                ae.add_requested_context(sop_class, list(SYNTAXES))
            else:
                for syntax in SYNTAXES:
                    ae.add_requested_context(sop_class, [syntax])
        try:
            assoc = associate(
                ae,
                self.config,
                ext_neg=[build_role(c, scp_role=True) for c in classes],
                evt_handlers=[(evt.EVT_C_STORE, on_store)],
            )
        except ConnectError:
            raise  # unreachable: retried like any connection
        except PacsQueryError as exc:  # accepted, but none of our contexts
            raise NoGet(f"{self.uri}: the source refused C-GET ({exc})") from None
        except Exception as exc:  # rejected: the archive's answer, said as is
            raise _association_error(exc, "C-GET", where) from None
        get_uid = StudyRootQueryRetrieveInformationModelGet
        if not any(cx.abstract_syntax == get_uid for cx in assoc.accepted_contexts):
            assoc.release()
            raise NoGet(f"{self.uri}: the source refused C-GET (its presentation context)")
        return assoc

    def _holds(self, study: str, series: str, sops: set[str], where: str) -> bool:
        """Whether the source lists every one of ``sops`` in the series (C-FIND)."""
        from migrator.verify.pacs import PacsQueryError
        from migrator.verify.query import QueryClient

        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        try:
            with QueryClient(self.config) as q:
                found = q.find("IMAGE", keys, ["SOPInstanceUID"])
        except PacsQueryError as exc:
            raise SourceError(f"{where}: {exc}") from None
        return sops <= {str(m.get("SOPInstanceUID", "")) for m in found}


class NoGet(SourceError):
    """The source does not take C-GET from us (its context refused)."""


#: A kept association that fails a request this soon (no answer, or pynetdicom's "no
#: longer established") was closed by the source while idle; later, it is the request's
#: own failure (a DIMSE timeout), not asked again on a new association.
STALE_S = 2.0


def _soon(since: float) -> bool:
    return time.monotonic() - since < STALE_S


class _RelaxedDropped(Exception):
    """The source closed the association on a study-wide IMAGE-level C-FIND."""


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
    holder: list[Lease] = []
    lease = Lease(
        opener(classes, wildcard, lambda event: holder[0].handle(event)), frozenset(), wildcard
    )
    holder.append(lease)
    try:
        yield lease
    finally:
        lease.on_store = None
        if lease.assoc.is_established:
            lease.assoc.release()


def _query(study: str, series: str, wanted: dict[str, str]) -> Any:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study
    query.SeriesInstanceUID = series
    # A list of UIDs (PS3.4 C.4.2.2.1: the unique key of the level may hold several).
    query.SOPInstanceUID = list(wanted) if len(wanted) > 1 else next(iter(wanted))
    return query


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


def _counts(status: Any, code: int) -> Counts:
    def n(name: str) -> int | None:
        value = getattr(status, name, None)
        return int(value) if isinstance(value, int) else None

    return Counts(
        completed=n("NumberOfCompletedSuboperations"),
        failed=n("NumberOfFailedSuboperations"),
        warning=n("NumberOfWarningSuboperations"),
        remaining=n("NumberOfRemainingSuboperations"),
        status=code,
    )


def _common_storage_classes() -> list[str]:
    from pynetdicom import StoragePresentationContexts

    return [str(cx.abstract_syntax) for cx in StoragePresentationContexts]


def _parse_item(uri: str) -> tuple[str, str, str, str]:
    parts = urlsplit(uri)
    segments = [unquote(p) for p in parts.path.strip("/").split("/")]
    sop_class = parse_qs(parts.query).get("class", [""])[0]
    if (
        len(segments) != 6
        or segments[0::2] != ["studies", "series", "instances"]
        or not all(is_valid_uid(u) for u in segments[1::2])
        or (sop_class and not is_valid_uid(sop_class))
    ):
        raise SourceError(f"{uri}: not a dimse:// instance URI")
    return segments[1], segments[3], segments[5], sop_class
