"""What a batch holds whole, so that the old PACS is asked for series and studies, not UIDs.

A retrieve may name what it wants at any level: IMAGE (SOP Instance UIDs of one series),
SERIES (Series UIDs of one study), STUDY (Study UIDs); the level's unique key may hold a
list (PS3.4 C.4.2.2.1). The archive's work differs: Orthanc spends ~1 ms of CPU on each
instance asked for by UID, ~0.25 ms on one of a series asked for whole, less on one of a
study; and each C-MOVE makes it open an association to our Storage SCP. 3,000 tiny
instances in 300 studies of 2 series, measured against Orthanc on this machine:

    C-GET   IMAGE level, a request per series   3.5 CPU-s at the archive
            SERIES level, a request per series  1.6
            STUDY level, a request per study    1.2
    C-MOVE  IMAGE level, a request per series   8.0 s for the moves alone
            STUDY level, a request per study    3.3 s
            STUDY level, 6 studies a request    2.2 s

So a batch's series that it holds whole (as many instances as the source's SERIES level
says: NumberOfSeriesRelatedInstances) are asked for whole, and its studies that it holds
whole (each of their series, whole) are asked for together, up to ``BUNDLE`` instances a
request (``Wholes.bundle``). What the archive holds beyond what the batch wants (added
since the listing) is refused as it comes (0xA900) and not kept; what it lacks is asked
for again by UID by its series' own group (migrator/sources/retrieve.py), as ever. A
source that gives no counts (dcmqrscp) is asked by UID as before, and not asked for
counts again.

The counts are asked for once per batch, for all of its studies in one SERIES-level C-FIND
(their UIDs as a list; study by study where the source refuses a list).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from migrator.errors import MigratorError, PacsQueryError
from migrator.sources.retrieve import CHUNK, MAX_CLASSES, SeriesGroup

if TYPE_CHECKING:
    from migrator.settings import Settings

log = logging.getLogger("migrator.sources.dimse")

#: Instances asked for by one request of whole studies: the spool bound of a request.
BUNDLE = 4 * CHUNK
#: Studies whose series' sizes are asked for by one C-FIND.
SIZES_STUDIES = 64
#: Studies of the batch past a group's own looked at for its bundle.
LOOK_AHEAD = 64


class Wholes:
    """The sizes of the expected studies' series, and the bundles of whole studies."""

    def __init__(self) -> None:
        #: series UID -> its instances, as the source says
        self.sizes: dict[str, int] = {}
        #: study UID -> its series UIDs, as the source says
        self.series_of: dict[str, frozenset[str]] = {}
        #: studies expected whose series' sizes were not asked for yet, in batch order
        self._unsized: dict[str, None] = {}
        #: whether the source gives NumberOfSeriesRelatedInstances (None: not known yet)
        self.counted: bool | None = None
        #: False once the source refused a bundle or answered it with nothing
        self.bundles = True
        self._lock = threading.Lock()

    def expect(self, studies: Iterable[str]) -> None:
        with self._lock:
            for study in studies:
                if study not in self.series_of:
                    self._unsized.setdefault(study)

    def whole_series(self, series: str, wanted: int) -> bool:
        return self.sizes.get(series) == wanted

    def ask(self, config: Settings, study: str) -> None:
        """The sizes of ``study``'s series and of the next studies expected and not asked
        for yet, once (on an association of their own: a failure only means asking by UID;
        only a refusal of the query itself means not asking again)."""
        if self.counted is False or study not in self._unsized:
            return  # (read unlocked: the lock is only for who asks, and it is asked once)
        with self._lock:
            if study not in self._unsized:
                return
            asking = [study, *(s for s in self._unsized if s != study)][:SIZES_STUDIES]
            for uid in asking:
                del self._unsized[uid]
            try:
                found = _series_counts(config, asking)
            except PacsQueryError as exc:
                log.info("%s: no series sizes (%s): instances asked for by UID", config.server, exc)
                self.counted = False
                return
            except MigratorError as exc:  # busy, lost...: these studies by UID, no more
                log.info("%s: no series sizes this time (%s)", config.server, exc)
                return
            series_of: dict[str, set[str]] = {}
            for study_uid, series, size in found:
                if size > 0:
                    self.sizes[series] = size
                    series_of.setdefault(study_uid, set()).add(series)
            # Whole sets at once: a reader never sees a study's series half listed.
            self.series_of.update({uid: frozenset(ss) for uid, ss in series_of.items()})
            if series_of:
                self.counted = True
            elif self.counted is None:
                self.counted = False  # no counts (dcmqrscp): by UID, not asked again

    def bundle(self, group: SeriesGroup, wanted: dict[str, str]) -> list[SeriesGroup] | None:
        """Other groups of ``group``'s batch to ask for with it, locked (the caller
        releases them), when ``group``'s study is held whole by the batch, as studies at
        STUDY level: ``group``'s whole study, then the next whole studies of the batch (up
        to LOOK_AHEAD) as long as they fit in BUNDLE instances and MAX_CLASSES SOP classes.
        None: not a whole study (its series is asked for whole when it is, else by UID)."""
        batch = group.batch
        if (
            not self.bundles
            or batch is None
            or not _untouched(group, wanted)
            or not self.whole_series(group.series, len(wanted))
        ):
            return None
        taken: list[SeriesGroup] = []
        count, classes = 0, set[str]()
        start = batch.index[group.study]
        for study in itertools.islice(batch.studies, start, start + LOOK_AHEAD):
            own = study == group.study
            groups = batch.studies[study]
            more = sum(len(g.classes) for g in groups)
            more_classes = {c for g in groups for c in g.classes.values()}
            fits = count + more <= BUNDLE and len(classes | more_classes) <= MAX_CLASSES
            whole = frozenset(g.series for g in groups) == self.series_of.get(study)
            members = [g for g in groups if g is not group]
            locked = _lock_whole(members, self.sizes) if whole and fits else None
            if locked is None:
                if own:
                    return None  # its own study is not whole (or busy): no bundle
                continue
            taken += locked
            count += more
            classes |= more_classes
            if count >= BUNDLE:
                break
        return taken


def _untouched(group: SeriesGroup, wanted: dict[str, str]) -> bool:
    return (
        len(wanted) == len(group.classes)
        and not group.arrived
        and not group.failed
        and not group.taken
    )


def _lock_whole(groups: list[SeriesGroup], sizes: dict[str, int]) -> list[SeriesGroup] | None:
    """``groups`` locked, each untouched and whole; None (none left locked) otherwise: one
    is being fetched by another thread, or was fetched, or is not whole."""
    locked: list[SeriesGroup] = []
    for g in groups:
        if not g.lock.acquire(blocking=False):
            _release(locked)
            return None
        locked.append(g)
        if not _untouched(g, g.classes) or sizes.get(g.series) != len(g.classes):
            _release(locked)
            return None
    return locked


def _release(groups: list[SeriesGroup]) -> None:
    for g in groups:
        g.lock.release()


def _series_counts(config: Settings, studies: list[str]) -> list[tuple[str, str, int]]:
    """(study, series, instances) of each series of ``studies``: one C-FIND for the list,
    study by study if the source refuses a list (or answers it with nothing)."""
    from migrator.sources.dimse_query import ListingClient

    returned = ["StudyInstanceUID", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"]
    out: list[tuple[str, str, int]] = []
    with ListingClient(config) as q:
        try:
            found = q.find("SERIES", {"StudyInstanceUID": "\\".join(studies)}, returned)
        except PacsQueryError:
            if len(studies) == 1:
                raise
            found = []
        if not found and len(studies) > 1:
            for study in studies:
                found += q.find("SERIES", {"StudyInstanceUID": study}, returned)
        for m in found:
            study, series = str(m.get("StudyInstanceUID", "")), str(m.get("SeriesInstanceUID", ""))
            with contextlib.suppress(TypeError, ValueError):
                size = int(m.get("NumberOfSeriesRelatedInstances", "") or 0)
                if study in studies and series:
                    out.append((study, series, size))
    return out
