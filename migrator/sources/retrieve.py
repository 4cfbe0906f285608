"""Retrieving a batch's instances from the old PACS series by series, not one by one.

A batch names its instances before it reads any of them (``DimseSource.expect``): they are
grouped by series (``SeriesGroup``). The first fetch of a member retrieves the members of
its group not in yet (up to ``CHUNK``) with one request on one association (a C-GET, or a
C-MOVE to our own Storage SCP: ``Retriever``), or, when the batch holds its study whole,
with the batch's other whole studies (migrator/sources/wholes.py: ``batch``); each instance
is kept as it arrives, and later fetches of the group's members take their file from the
group. The sub-operation counts are compared with what the listing promised: members that
did not come are asked for once more, then fail with the reason (``missing_reason``).

Only a request the source refused by its final status is split (``Refused``: some archives
refuse a whole list for one UID they no longer hold); an association the source would not
open fails the request's instances at once (``SourceError``) or, busy, is retried later
(``TransientError``, from the fetch: the send's retries and backoff). An instance that came
but could not be written to our own spool (a full disk) is neither failed nor asked again
here: its fetch fails transiently with that reason, and the send's retries ask again.

One request asks for at most ``CHUNK`` instances and offers the contexts of at most
``MAX_CLASSES`` SOP classes (each in every transfer syntax we know: 11 x 11 + the retrieve
and C-FIND contexts stay within the 128 presentation contexts an association may propose):
a series with more classes is asked for class group by class group.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from migrator.errors import SourceError, TransientError
from migrator.sources.held import Kept

#: Instances asked for by one C-GET/C-MOVE (a UID list of ~4 KB): what waits in the spool
#: for its header's reading is at most this many files per series being read (the sizes of
#: instances listed by C-FIND are not known before they come).
CHUNK = 64
#: SOP classes per association: each in SYNTAXES (11) contexts, + the retrieve and C-FIND
#: contexts <= 128.
MAX_CLASSES = 11


@dataclass
class Counts:
    """The final C-GET/C-MOVE response's sub-operation counts (None: not given)."""

    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    remaining: int | None = None
    status: int | None = None

    def __str__(self) -> str:
        def n(v: int | None) -> str:
            return "?" if v is None else str(v)

        status = "no final status" if self.status is None else f"status 0x{self.status:04X}"
        return (
            f"{status}, completed {n(self.completed)}, failed {n(self.failed)}, "
            f"warning {n(self.warning)}, remaining {n(self.remaining)}"
        )


@dataclass
class Received:
    """What one request brought: each arrived instance's spool file and size."""

    files: dict[str, tuple[Kept, int]] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    #: an instance came but could not be kept here: "cannot write ... to DIR: No space left
    #: on device" (our disk, not the source's fault), or our handler's own error
    local_error: str | None = None


class RefusedAll(SourceError):
    """The source refused the request for a reason that holds for every instance of it (an
    unknown move destination, no C-GET at all): not asked again, not split."""


class Refused(SourceError):
    """The source refused the request by its final C-GET/C-MOVE status: asked for again in
    halves, down to the instance (Orthanc refuses a whole list for one UID it lacks)."""


class Retriever(Protocol):
    def __call__(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        """Ask the source for ``wanted`` (SOP Instance UID -> SOP Class UID) of one series;
        raise Refused when the source refused it by its final status, TransientError when
        it may succeed later, SourceError when it failed for every instance asked."""
        ...


@dataclass(eq=False)
class Batch:
    """The series groups of the items told in one ``expect``, by study, in their order."""

    studies: dict[str, list[SeriesGroup]] = field(default_factory=dict)
    #: study UID -> its place in ``studies``
    index: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class SeriesGroup:
    """A batch's instances of one series, and what became of them."""

    study: str
    series: str
    #: SOP Instance UID -> SOP Class UID (from the listing)
    classes: dict[str, str] = field(default_factory=dict)
    #: arrived, not yet taken by a fetch: SOP Instance UID -> (spool file, size)
    arrived: dict[str, tuple[Kept, int]] = field(default_factory=dict)
    #: asked for twice and still not come: SOP Instance UID -> reason
    failed: dict[str, str] = field(default_factory=dict)
    #: taken by a fetch (asked again only when fetched again: an evicted spool file)
    taken: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the groups of the batch it came with (itself too): those asked for with it when
    #: they are whole studies (migrator/sources/wholes.py)
    batch: Batch | None = None

    def take(self, sop: str, retrieve: Retriever) -> tuple[Kept, int]:
        """``sop``'s spool file, retrieving the group's missing members first if needed."""
        with self.lock:
            if sop not in self.arrived and sop not in self.failed:
                unwritten = self._retrieve(retrieve, sop)
                if unwritten and sop not in self.arrived and sop not in self.failed:
                    raise TransientError(unwritten)
            if sop in self.failed:
                raise SourceError(self.failed[sop])
            self.taken.add(sop)
            return self.arrived.pop(sop)

    def _retrieve(self, retrieve: Retriever, sop: str) -> str | None:
        """Ask for the part of the group that holds ``sop``: one request of at most
        CHUNK instances, so that what waits in the spool stays bounded; ``sop`` alone when
        fetched again after being taken (its held file was evicted). Returns why what came
        could not be written (our disk): what did not arrive then stays to be asked again."""
        if sop in self.taken:
            pending = {sop: self.classes[sop]}
        else:
            done = self.arrived.keys() | self.failed.keys() | self.taken
            rest = {s: c for s, c in self.classes.items() if s not in done}
            pending = next(part for part in chunks(rest) if sop in part)
        try:
            first, unwritten = self._ask(retrieve, pending)
        except SourceError as exc:  # RefusedAll, or no association: the whole request
            self._fail(pending, str(exc))
            return None
        missing = {s: c for s, c in pending.items() if s not in self.arrived}
        if not missing or unwritten:
            return unwritten
        # Once more for what did not come (an archive that dropped a sub-operation under
        # load often sends it when asked again); what still does not come fails.
        try:
            second, unwritten = self._ask(retrieve, missing)
        except SourceError as exc:
            self._fail(missing, str(exc))
            return None
        if unwritten:
            return unwritten
        came = len(pending) - len(missing)
        for sop in missing:
            if sop not in self.arrived:
                self.failed[sop] = missing_reason(
                    self.series, len(pending), came, first[sop], second[sop]
                )
        return None

    def _fail(self, sops: dict[str, str], reason: str) -> None:
        for sop in sops:
            if sop not in self.arrived:
                self.failed[sop] = reason

    def _ask(
        self, retrieve: Retriever, wanted: dict[str, str]
    ) -> tuple[dict[str, str], str | None]:
        """Ask for ``wanted``; how the source answered the request that asked for each, and
        why an instance that came could not be written (None: each was)."""
        answers: dict[str, str] = {}
        unwritten: str | None = None
        queue = list(chunks(wanted))
        while queue:
            part = queue.pop(0)
            try:
                got = retrieve(self.study, self.series, part)
            except Refused as exc:
                if len(part) > 1:
                    # Some archives refuse a whole list for one UID they no longer hold
                    # (Orthanc: 0xC000): ask for each half, down to the instance refused.
                    pairs = list(part.items())
                    half = len(pairs) // 2
                    queue[:0] = [dict(pairs[:half]), dict(pairs[half:])]
                    continue
                answers.update(dict.fromkeys(part, f"refused: {exc}"))
                continue
            self.arrived.update({s: f for s, f in got.files.items() if s in part})
            answers.update(dict.fromkeys(part, str(got.counts)))
            unwritten = unwritten or got.local_error
        return answers, unwritten


def missing_reason(series: str, asked: int, came: int, first: str, second: str) -> str:
    return (
        f"the source sent {came} of {asked} instances of series {series} asked for; this one "
        f"did not come after a retry (first request: {first}; retry: {second})"
    )


def unwritable(directory: str, exc: OSError) -> str:
    """The reason of an instance that came but could not be written to our spool."""
    return f"cannot write the retrieved instance to {directory}: {exc.strerror or exc}"


def chunks(wanted: dict[str, str]) -> Iterable[dict[str, str]]:
    """``wanted`` in requests of at most CHUNK instances and MAX_CLASSES SOP classes."""
    by_class: dict[str, list[str]] = {}
    for sop, cls in wanted.items():
        by_class.setdefault(cls, []).append(sop)
    classes = list(by_class)
    for at in range(0, len(classes), MAX_CLASSES):
        sops = [(s, c) for c in classes[at : at + MAX_CLASSES] for s in by_class[c]]
        for start in range(0, len(sops), CHUNK):
            yield dict(sops[start : start + CHUNK])


class Groups:
    """The series groups of the items a source was told to expect, by item URI."""

    def __init__(self) -> None:
        self._by_uri: dict[str, tuple[SeriesGroup, str]] = {}
        self._lock = threading.Lock()

    def expect(self, items: Iterable[tuple[str, str, str, str, str]]) -> None:
        """(uri, study, series, sop, class) of each item; an item already expected keeps
        its group."""
        with self._lock:
            fresh: dict[tuple[str, str], SeriesGroup] = {}
            for uri, study, series, sop, cls in items:
                if uri in self._by_uri:
                    continue
                group = fresh.get((study, series))
                if group is None:
                    group = fresh[(study, series)] = SeriesGroup(study, series)
                group.classes[sop] = cls
                self._by_uri[uri] = (group, sop)
            batch = Batch()
            for group in fresh.values():
                batch.studies.setdefault(group.study, []).append(group)
                group.batch = batch
            batch.index = {study: at for at, study in enumerate(batch.studies)}

    def group_of(
        self, uri: str, make: Callable[[], tuple[str, str, str, str]]
    ) -> tuple[SeriesGroup, str]:
        """The item's group; an item not expected is a group of its own (``make``: its
        study, series, sop, class)."""
        with self._lock:
            found = self._by_uri.get(uri)
            if found is None:
                study, series, sop, cls = make()
                group = SeriesGroup(study, series, {sop: cls})
                found = self._by_uri[uri] = (group, sop)
            return found
