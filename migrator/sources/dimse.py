"""``DimseSource``: the old PACS itself, listed by C-FIND, fetched by C-GET or C-MOVE.

``dimse://AE@host:port`` is a source like a folder: Study Root C-FIND (on our own upper
layer: migrator/sources/dimse_query.py) lists the studies
(optionally in a StudyDate window and for one modality, split in date windows under a
result cap: migrator/sources/windows.py), then their instances at IMAGE level with their
series and SOP Class UIDs: up to GROUP_STUDIES studies in one query (a list of Study UIDs),
each study kept when the STUDY level said how many it holds and the answer has that many;
else the study in one query of its own, else series by series. Each instance is one item:
``dimse://AE@host:port/studies/{study}/series/{series}/instances/{sop}?class={sop class}``.
Planned like a manifest's lines (UIDs known, nothing downloaded).

Fetching is a C-GET at IMAGE level on an association that offers the SOP classes the listing
gave, each in every transfer syntax this tool knows, one presentation context each, so that
the archive sends each instance in the syntax it holds it in (not re-encoded). A batch tells
the source its items first (``expect``): the studies it holds whole are fetched together by
one STUDY-level request, a whole series by a SERIES-level one, as the source's counts say
(migrator/sources/wholes.py); anything else series by series, one C-GET with the series'
SOP Instance UIDs as a list (migrator/sources/retrieve.py: at most 64 instances and 11 SOP
classes per request, within the 128 presentation contexts of an association); each on one
association, kept open for the next request (migrator/sources/getpool.py), on our own
upper layer (migrator/dul/retrieving.py: no pynetdicom thread per association). Each C-STORE
sub-operation is kept as it arrives (File Meta + the dataset's bytes as received): in memory
when small, else in its own spool file, which the sender then reads and sends
(migrator/sources/held.py: one download per instance, the spool bounded by the batch). What
C-FIND promised and did not come is asked for once more, then fails with the reason: ``the
source sent 9 of 10 instances of series X; this one did not come after a retry``. An archive
that refuses a whole list for one UID it no longer holds (Orthanc: 0xC000) is asked for
halves of it, down to that instance; an association it will not open is not split: busy
(rejected-transient), the fetch fails transiently and is retried as a send is; otherwise the
request's instances fail at once. An instance that came but could not be written here fails
transiently naming our own disk.
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
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from migrator.errors import (
    ConfigError,
    ConnectError,
    PacsQueryError,
    SourceError,
)
from migrator.sources.base import Payload, SourceItem
from migrator.sources.dimse_fetch import SYNTAXES, Fetching
from migrator.sources.getpool import GetPool
from migrator.sources.held import HeldFiles, Kept
from migrator.sources.manifest import ManifestEntry
from migrator.sources.movescp import MoveReceiver
from migrator.sources.retrieve import (
    MAX_CLASSES,
    Groups,
)
from migrator.sources.wholes import Wholes
from migrator.sources.windows import StudyQuery, dicom_range, studies
from migrator.validation import is_valid_uid

if TYPE_CHECKING:
    from migrator.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "dimse://"
#: Studies listed by one IMAGE-level C-FIND (``DimseSource._group_images``): at most this
#: many, holding at most that many instances (an answer is held in memory whole).
GROUP_STUDIES = 64
GROUP_INSTANCES = 2000

#: A study's instances, series by series: ``[(series UID, [(SOP UID, SOP class)])]``
Listed = list[tuple[str, list[tuple[str, str]]]]
_URI = re.compile(r"^dimse://(?P<ae>[^@/]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})(?P<rest>/.*)?$")


def is_dimse(uri: str) -> bool:
    return uri.startswith(PREFIX)


def source_root(uri: str) -> str:
    """``dimse://AE@host:port`` of a source or item URI."""
    m = _URI.match(uri.split("?", 1)[0])
    if m is None:
        raise ConfigError(f"{uri!r}: expected dimse://AE@host:port (the old PACS's AE title)")
    return f"{PREFIX}{m['ae']}@{m['host']}:{m['port']}"


class DimseSource(Fetching):
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
        #: whether it answers IMAGE level for a list of studies (None: not asked yet)
        self._grouped: bool | None = None
        #: what the batch holds whole (migrator/sources/wholes.py)
        self._wholes = Wholes()
        #: C-GET / C-MOVE associations kept between requests (migrator/sources/getpool.py);
        #: not under --source-max-associations, where one kept open would hold the
        #: source's slot beyond its request
        self._gets: GetPool | None = (
            None if settings.source_max_associations else GetPool(MAX_CLASSES)
        )
        self._moves: GetPool | None = (
            None if settings.source_max_associations else GetPool(MAX_CLASSES)
        )
        self.retrieve_mode = settings.source_retrieve
        #: the move destination: our own AE title towards the source by default
        self.move_ae = settings.move_ae or self.config.calling_ae
        self._mover = (
            MoveReceiver(
                settings.move_port,
                SYNTAXES,
                self._held.new_path,
                held=self._held,
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
        from migrator.sources.dimse_query import ListingClient

        q = [ListingClient(self.config)]  # replaced when a strict source drops it (below)
        try:
            found = studies(self.query, lambda d: self._window(q[0], d), self.uri)
            for group in self._study_groups(found):
                listed = self._group_images(q, group)
                for study in group:
                    if study in listed:
                        series: Listed = listed[study]
                    else:
                        try:
                            series = list(self._study_images(q[0], study))
                        except _RelaxedDropped:
                            # The source closed the association on the study-wide IMAGE
                            # query: a new one, and this study (and every next one) series
                            # by series.
                            q[0] = self._relisting(q[0])
                            series = list(self._study_images(q[0], study))
                    for se, images in series:
                        for sop, cls in images:
                            path = f"/studies/{study}/series/{se}/instances/{sop}"
                            uri = f"{self.uri}{path}?class={quote(cls)}"
                            yield ManifestEntry(0, uri, 0, sop, study)
        except PacsQueryError as exc:
            raise SourceError(f"{self.uri}: {exc}") from None
        finally:
            q[0].__exit__(None, None, None)

    def _relisting(self, dropped: Any) -> Any:
        from migrator.sources.dimse_query import ListingClient

        dropped.__exit__(None, None, None)
        return ListingClient(self.config)

    def _study_groups(self, uids: Iterable[str]) -> Iterator[list[str]]:
        """The studies in groups listed by one IMAGE-level query each (``_group_images``):
        consecutive studies whose STUDY-level answer said how many instances they hold, up
        to GROUP_STUDIES of them and GROUP_INSTANCES instances; any other study alone."""
        group: list[str] = []
        held = 0
        for uid in uids:
            size = self._study_sizes.get(uid)
            if self._grouped is False or not size or size > GROUP_INSTANCES:
                if group:
                    yield group
                    group, held = [], 0
                yield [uid]
                continue
            if len(group) >= GROUP_STUDIES or held + size > GROUP_INSTANCES:
                yield group
                group, held = [], 0
            group.append(uid)
            held += size
        if group:
            yield group

    def _group_images(self, q: list[Any], group: list[str]) -> dict[str, Listed]:
        """The instances of several studies at once: one IMAGE-level C-FIND with their
        Study Instance UIDs as a list (list matching), each study kept only when the answer
        holds exactly as many distinct instances of it as its STUDY level said, each with
        its series. Against Orthanc, 300 studies are listed in 7 queries instead of 300, the
        listing's length. Another source (one that wants a single UID at IMAGE level, as
        hierarchical query/retrieve does, or cuts the answer short) leaves studies out of
        the result: each is then listed on its own (``_study_images``); one that refuses
        or drops the query is not asked so again."""
        if len(group) < 2 or self._grouped is False:
            return {}
        returned = ["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
        keys = {"StudyInstanceUID": "\\".join(group)}
        try:
            found = q[0].find("IMAGE", keys, returned, cut=[])
        except PacsQueryError as exc:
            log.info("%s: IMAGE level for a list of studies refused (%s)", self.uri, exc)
            self._grouped = False
            return {}
        except ConnectError as exc:
            if self._grouped:
                raise  # it answered such queries before: a real loss of the source
            log.info("%s: IMAGE level for a list of studies dropped (%s)", self.uri, exc)
            self._grouped = False
            q[0] = self._relisting(q[0])
            return {}
        listed = _verified(found, {uid: self._study_sizes.get(uid) for uid in group})
        for study in listed:
            del self._study_sizes[study]
        if listed:
            self._grouped = True
        elif self._grouped is None:
            self._grouped = False  # it answers none of them so: not asked again
        return listed

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
            listed = _verified(found, {study: promised}, one=study)
            if not cut and study in listed:
                self._relaxed_images = True
                yield from listed[study]
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
        self._wholes.expect(study for _, study, *_ in parsed)

    def fetch(self, item: SourceItem) -> contextlib.AbstractContextManager[Payload]:
        return self._held.fetch(item.uri, lambda: self._get(item))

    def _get(self, item: SourceItem) -> tuple[Kept, int]:
        group, sop = self._groups.group_of(item.uri, lambda: _parse_item(item.uri))
        return group.take(sop, lambda st, se, wanted: self._fetch_group(group, st, se, wanted))


def _verified(
    found: list[Any], sizes: dict[str, int | None], one: str | None = None
) -> dict[str, Listed]:
    """The studies of ``sizes`` whose IMAGE-level matches in ``found`` are exactly as many
    distinct instances as their STUDY level said (``sizes``), each with its series and SOP
    UIDs: their instances, series by series. A study with a match missing its series or
    SOP UID is left out; so are matches of other studies (a source echoing a list), or,
    with ``one``, every match is that study's (whatever Study UID it names)."""
    by_study: dict[str, dict[str, list[tuple[str, str]]]] = {uid: {} for uid in sizes}
    count = dict.fromkeys(sizes, 0)
    incomplete: set[str] = set()
    for image in found:
        study = one or str(image.get("StudyInstanceUID", ""))
        se = str(image.get("SeriesInstanceUID", ""))
        sop = str(image.get("SOPInstanceUID", ""))
        if study not in by_study:
            continue
        if not se or not sop:
            incomplete.add(study)
            continue
        count[study] += 1
        by_study[study].setdefault(se, []).append((sop, str(image.get("SOPClassUID", ""))))
    listed: dict[str, Listed] = {}
    for study, series in by_study.items():
        # Distinct SOP Instance UIDs: an answer repeating one instance and missing another
        # has the right length but not the right set.
        distinct = len({sop for images in series.values() for sop, _ in images})
        if study not in incomplete and distinct == count[study] == sizes[study]:
            listed[study] = list(series.items())
    return listed


class _RelaxedDropped(Exception):
    """The source closed the association on a study-wide IMAGE-level C-FIND."""


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
