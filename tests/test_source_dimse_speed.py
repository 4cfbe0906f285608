"""How the old PACS is listed and fetched, against a real Orthanc (issue 17's speed work).

* Studies are listed with one IMAGE-level C-FIND for a list of them when the STUDY level
  said how many instances each holds and the answer has that many of each; a study left
  out of it, with one IMAGE-level query of its own when the answer has its count; else
  series by series, as before: checked by the queries the source answered and by the
  instances listed.
* C-GET and C-MOVE associations are kept from one request to the next (getpool.py):
  fewer associations than requests, counted on the wire; one the source closed while idle
  costs no file anything (asked again on a new one); none is kept under
  --source-max-associations.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from migrator import synth
from migrator.settings import Settings
from migrator.sources import dimse, getpool, held, wholes
from migrator.sources.base import SourceItem
from migrator.sources.dimse import DimseSource
from migrator.sources.dimse_query import ListingClient
from tests.peers.assoc_counter import AssociationCounter
from tests.peers.orthanc import OrthancPeer, free_move_port
from tests.peers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(180)

OUR_AE = "MIGRATOR"
C_GET_MODEL = b"1.2.840.10008.5.1.4.1.2.2.3"
C_MOVE_MODEL = b"1.2.840.10008.5.1.4.1.2.2.2"


@pytest.fixture
def archive(orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path) -> Iterator[Any]:
    """An Orthanc holding 3 studies x 4 series x 2 instances, closing idle associations
    after 1 s (DicomScpTimeout), and the SOP Instance UIDs it holds."""
    pacs = orthanc_factory(
        aet="OLDPACS",
        extra={
            "DicomModalities": {OUR_AE: [OUR_AE, "127.0.0.1", 1]},
            "DicomAlwaysAllowGet": True,
            "DicomScpTimeout": 1,
        },
    )
    files = synth.write_corpus(
        tmp_path / "given", count=24, size="tiny", studies=3, series_per_study=4, seed=4
    )
    for f in files:
        pacs.upload(f.read_bytes())
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    yield pacs, uids


def _source(port: int, **settings: Any) -> DimseSource:
    config = Settings(host="127.0.0.1", port=1, called_ae="X", calling_ae=OUR_AE, **settings)
    return DimseSource(f"dimse://OLDPACS@127.0.0.1:{port}", config)


def _spy_queries(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, frozenset[str]]]:
    calls: list[tuple[str, frozenset[str]]] = []
    real = ListingClient.find

    def find(self: ListingClient, level: str, keys: Any, *args: Any, **kw: Any) -> Any:
        calls.append((level, frozenset(keys)))
        return real(self, level, keys, *args, **kw)

    monkeypatch.setattr(ListingClient, "find", find)
    return calls


@pytest.fixture
def one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """No list of studies in one query: each study listed on its own."""
    monkeypatch.setattr(dimse, "GROUP_STUDIES", 1)


def _is_list(keys: Any) -> bool:
    return "\\" in str(keys.get("StudyInstanceUID", ""))


def test_studies_are_listed_by_one_image_query_for_a_list_of_them(
    archive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three studies in one IMAGE-level C-FIND (their UIDs as a list): every instance,
    each study's series by series, as a batch fetches them."""
    pacs, uids = archive
    calls = _spy_queries(monkeypatch)
    entries = list(_source(pacs.dicom_port).iter_entries())
    assert {e.sop_instance_uid for e in entries} == uids and len(entries) == 24
    assert [level for level, _ in calls] == ["STUDY", "IMAGE"], calls
    studies = [e.study_uid for e in entries]
    assert len(set(studies)) == 3
    assert all(studies.count(s) == 8 for s in studies)
    assert studies == sorted(studies, key=studies.index)  # one study after the other
    series = [e.uri.split("/instances/")[0] for e in entries]
    assert all(series[i] == series[i + 1] for i in range(0, 24, 2))


def test_a_study_short_in_the_list_answer_is_listed_on_its_own(
    archive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer for the list misses one instance: its study (only) is asked again on its
    own; the other two are taken from the list's answer, and nothing is lost."""
    pacs, uids = archive
    real = ListingClient.find
    calls: list[tuple[str, bool]] = []

    def short(self: ListingClient, level: str, keys: Any, *args: Any, **kw: Any) -> Any:
        calls.append((level, _is_list(keys)))
        found = real(self, level, keys, *args, **kw)
        return found[:-1] if _is_list(keys) else found

    monkeypatch.setattr(ListingClient, "find", short)
    entries = list(_source(pacs.dicom_port).iter_entries())
    assert {e.sop_instance_uid for e in entries} == uids and len(entries) == 24
    assert calls == [("STUDY", False), ("IMAGE", True), ("IMAGE", False)], calls


@pytest.mark.parametrize("how", ["refused", "dropped", "foreign"])
def test_a_source_without_list_matching_is_listed_study_by_study(
    archive: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A source that refuses a list of Study UIDs at IMAGE level, closes the association
    on it, or answers with studies it was not asked for (a list taken as one UID): each
    study is listed on its own, and it is not asked for a list again."""
    from migrator.errors import ConnectError, PacsQueryError

    monkeypatch.setattr(dimse, "GROUP_STUDIES", 2)  # [2 studies], [1]: asked once only
    pacs, uids = archive
    real = ListingClient.find
    calls: list[tuple[str, bool]] = []

    def strict(self: ListingClient, level: str, keys: Any, *args: Any, **kw: Any) -> Any:
        calls.append((level, _is_list(keys)))
        if _is_list(keys):
            if how == "refused":
                raise PacsQueryError("C-FIND at IMAGE level failed: 0xC000 Unable to process")
            if how == "dropped":
                raise ConnectError("the association was aborted")
            found = real(self, level, {"StudyInstanceUID": ""}, *args, **kw)
            for match in found:
                match["StudyInstanceUID"] = keys["StudyInstanceUID"]
            return found
        return real(self, level, keys, *args, **kw)

    monkeypatch.setattr(ListingClient, "find", strict)
    entries = list(_source(pacs.dicom_port).iter_entries())
    assert {e.sop_instance_uid for e in entries} == uids and len(entries) == 24
    assert calls == [("STUDY", False), ("IMAGE", True)] + [("IMAGE", False)] * 3, calls


def test_a_study_is_listed_by_one_image_query_when_its_size_is_known(
    archive: Any, monkeypatch: pytest.MonkeyPatch, one_by_one: None
) -> None:
    pacs, uids = archive
    calls = _spy_queries(monkeypatch)
    entries = list(_source(pacs.dicom_port).iter_entries())
    assert {e.sop_instance_uid for e in entries} == uids and len(entries) == 24
    levels = [level for level, _ in calls]
    assert levels == ["STUDY", "IMAGE", "IMAGE", "IMAGE"], calls
    # Each study's instances come series by series (a batch fetches them so).
    series = [e.uri.split("/instances/")[0] for e in entries]
    assert all(series.count(s) == 2 for s in series)
    assert all(series[i] == series[i + 1] for i in range(0, 24, 2))


def test_an_image_answer_of_another_size_falls_back_to_series_by_series(
    archive: Any, monkeypatch: pytest.MonkeyPatch, one_by_one: None
) -> None:
    """A source whose study-wide IMAGE answer does not match its STUDY-level count (one
    that wants the series UID at IMAGE level, or an instance added meanwhile) is listed
    the hierarchical way, and nothing is lost."""
    pacs, uids = archive
    calls = _spy_queries(monkeypatch)
    real = ListingClient.find

    def short(self: ListingClient, level: str, keys: Any, *args: Any, **kw: Any) -> Any:
        found = real(self, level, keys, *args, **kw)
        if level == "IMAGE" and "SeriesInstanceUID" not in keys:
            return found[:-1]  # one missing from the study-wide answer
        return found

    monkeypatch.setattr(ListingClient, "find", short)
    entries = list(_source(pacs.dicom_port).iter_entries())
    assert {e.sop_instance_uid for e in entries} == uids and len(entries) == 24
    assert [level for level, _ in calls].count("SERIES") == 3, calls


def test_a_source_that_drops_the_study_wide_query_is_listed_series_by_series(
    archive: Any, monkeypatch: pytest.MonkeyPatch, one_by_one: None
) -> None:
    """A strict archive that closes the association on an IMAGE-level query without the
    series UID: the listing goes on, on a new association, series by series."""
    from migrator.errors import ConnectError

    pacs, uids = archive
    calls = _spy_queries(monkeypatch)
    real = ListingClient.find
    opened: list[ListingClient] = []
    real_init = ListingClient.__init__

    def init(self: ListingClient, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        opened.append(self)

    def strict(self: ListingClient, level: str, keys: Any, *args: Any, **kw: Any) -> Any:
        if level == "IMAGE" and "SeriesInstanceUID" not in keys:
            raise ConnectError("the association was aborted")
        return real(self, level, keys, *args, **kw)

    monkeypatch.setattr(ListingClient, "__init__", init)
    monkeypatch.setattr(ListingClient, "find", strict)
    entries = list(_source(pacs.dicom_port).iter_entries())
    assert {e.sop_instance_uid for e in entries} == uids and len(entries) == 24
    assert len(opened) == 2  # the first one dropped, the listing went on on a second
    assert [level for level, _ in calls].count("SERIES") == 3  # every study series by series


def test_an_answer_of_the_right_size_but_the_wrong_set_is_not_trusted(
    archive: Any, monkeypatch: pytest.MonkeyPatch, one_by_one: None
) -> None:
    """One instance twice and another missing: the count matches, the set does not."""
    pacs, uids = archive
    real = ListingClient.find

    def twice(self: ListingClient, level: str, keys: Any, *args: Any, **kw: Any) -> Any:
        found = real(self, level, keys, *args, **kw)
        if level == "IMAGE" and "SeriesInstanceUID" not in keys:
            return [*found[:-1], found[0]]
        return found

    monkeypatch.setattr(ListingClient, "find", twice)
    entries = list(_source(pacs.dicom_port).iter_entries())
    assert {e.sop_instance_uid for e in entries} == uids and len(entries) == 24


def _fetch_all(
    source: DimseSource, entries: list[Any], kinds: Counter[str] | None = None
) -> set[str]:
    """Each instance fetched twice, as a send does (its header read, then the send): the
    SOP Instance UIDs that came; ``kinds`` counts the sends from memory and from files."""
    items = [SourceItem(e.uri, 0) for e in entries]
    source.expect(items)
    got = set()
    for item in items:
        for _ in (1, 2):
            with source.fetch(item) as payload:
                if payload.path is not None:
                    assert os.path.getsize(payload.path) > 132
                    ds = pydicom.dcmread(payload.path, stop_before_pixels=True)
                else:
                    assert payload.data is not None and len(payload.data) > 132
                    ds = pydicom.dcmread(io.BytesIO(payload.data), stop_before_pixels=True)
                got.add(str(ds.SOPInstanceUID))
                if kinds is not None and _ == 2:
                    kinds["file" if payload.path is not None else "memory"] += 1
    return got


def test_c_get_instances_are_kept_in_memory_within_the_bound(
    archive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small instances that came by C-GET are sent from memory (no spool file to create,
    read and delete) while the bound allows; past it, from spool files; the same instances
    either way, and nothing left counted in memory once each was sent."""
    pacs, uids = archive
    monkeypatch.setattr(held, "MEMORY_BYTES", 15_000)  # one tiny instance at a time
    source = _source(pacs.dicom_port)
    kinds: Counter[str] = Counter()
    assert _fetch_all(source, list(source.iter_entries()), kinds) == uids
    assert kinds["memory"] > 0 and kinds["file"] > 0, kinds
    assert kinds["memory"] + kinds["file"] == len(uids)
    assert source._held.in_memory == 0


def test_c_get_associations_are_kept_between_requests(archive: Any) -> None:
    pacs, uids = archive
    counter = AssociationCounter(C_GET_MODEL)
    with TcpProxy("127.0.0.1", pacs.dicom_port, tap_each=counter.feed) as relay:
        source = _source(relay.port)
        entries = list(source.iter_entries())
        assert _fetch_all(source, entries) == uids
        # 12 series, one C-GET each; the SOP classes of the corpus fit one association.
        assert 1 <= len(counter.opened) <= 2, counter.opened
        assert counter.max_open == 1
        # Idle past IDLE_S: released (the source's thread is free again).
        deadline = time.monotonic() + 5
        while counter.open_now and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counter.open_now == 0


def test_an_association_the_source_closed_while_idle_costs_no_file(
    archive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept longer than the source keeps it (Orthanc closes it after 1 s idle here): the
    next request goes on a new association at once, and every instance still arrives."""
    pacs, uids = archive
    monkeypatch.setattr(getpool, "IDLE_S", 30.0)
    counter = AssociationCounter(C_GET_MODEL)
    with TcpProxy("127.0.0.1", pacs.dicom_port, tap_each=counter.feed) as relay:
        source = _source(relay.port)
        entries = list(source.iter_entries())
        half = len(entries) // 2
        assert _fetch_all(source, entries[:half]) <= uids
        opened = len(counter.opened)
        time.sleep(2.5)  # Orthanc closes our idle association meanwhile
        got = _fetch_all(source, entries[half:])
        assert len(got) == len(entries) - half and got <= uids
        assert len(counter.opened) == opened + 1


def test_no_association_is_kept_under_source_max_associations(
    archive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wholes, "BUNDLE", 0)  # a request per series, not per batch
    pacs, uids = archive
    counter = AssociationCounter(C_GET_MODEL)
    with TcpProxy("127.0.0.1", pacs.dicom_port, tap_each=counter.feed) as relay:
        source = _source(relay.port, source_max_associations=1)
        entries = list(source.iter_entries())
        assert _fetch_all(source, entries) == uids
        assert len(counter.opened) == 12  # one per series: none kept


def test_c_move_associations_are_kept_between_moves(
    orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    """The same for C-MOVE: the moves of 12 series on one association to the source, every
    instance received by our own Storage SCP on --move-port."""
    move_port = free_move_port()
    pacs = orthanc_factory(
        aet="OLDPACS",
        extra={
            "DicomModalities": {
                OUR_AE: [OUR_AE, "127.0.0.1", 1],
                "MIGRATOR-MOVE": ["MIGRATOR-MOVE", "127.0.0.1", move_port],
            },
        },
    )
    files = synth.write_corpus(
        tmp_path / "given", count=24, size="tiny", studies=3, series_per_study=4, seed=5
    )
    for f in files:
        pacs.upload(f.read_bytes())
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    counter = AssociationCounter(C_MOVE_MODEL)
    with TcpProxy("127.0.0.1", pacs.dicom_port, tap_each=counter.feed) as relay:
        source = _source(
            relay.port, source_retrieve="move", move_ae="MIGRATOR-MOVE", move_port=move_port
        )
        assert _fetch_all(source, list(source.iter_entries())) == uids
    assert 1 <= len(counter.opened) <= 2, counter.opened
