"""The old PACS asked for whole studies and series when a batch holds them whole, against a
real Orthanc (migrator/sources/wholes.py): the level of each request as sent on the wire,
and every instance still arriving when the source holds more or fewer than were listed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from migrator import synth
from migrator.dul import retrieving
from migrator.settings import Settings
from migrator.sources import wholes
from migrator.sources.base import SourceItem
from migrator.sources.dimse import DimseSource
from tests.peers.orthanc import OrthancPeer, free_move_port
from tests.test_source_dimse_speed import _fetch_all

pytestmark = pytest.mark.timeout(180)

OUR_AE = "MIGRATOR"


@pytest.fixture
def archive(orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path) -> Iterator[Any]:
    """An Orthanc holding 3 studies x 2 series x 3 instances; its SOP Instance UIDs; a port
    it moves to (our AE)."""
    move_port = free_move_port()
    pacs = orthanc_factory(
        aet="OLDPACS",
        extra={
            "DicomModalities": {OUR_AE: [OUR_AE, "127.0.0.1", move_port]},
            "DicomAlwaysAllowGet": True,
        },
    )
    files = synth.write_corpus(
        tmp_path / "given", count=18, size="tiny", studies=3, series_per_study=2, seed=8
    )
    for f in files:
        pacs.upload(f.read_bytes())
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    yield pacs, uids, move_port


def _source(pacs: OrthancPeer, move_port: int | None = None) -> DimseSource:
    settings: dict[str, Any] = {}
    if move_port:
        settings = {"move_port": move_port, "move_ae": OUR_AE, "source_retrieve": "move"}
    config = Settings(host="127.0.0.1", port=1, called_ae="X", calling_ae=OUR_AE, **settings)
    return DimseSource(f"dimse://OLDPACS@127.0.0.1:{pacs.dicom_port}", config)


@pytest.fixture
def levels(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each retrieve's identifier as sent: (QueryRetrieveLevel, UIDs at that level)."""
    sent: list[tuple[str, int]] = []
    real = retrieving.identifier

    def spy(study: str, series: str, sops: list[str], ts: str) -> bytes:
        if sops:
            sent.append(("IMAGE", len(sops)))
        elif series:
            sent.append(("SERIES", len(series.split("\\"))))
        else:
            sent.append(("STUDY", len(study.split("\\"))))
        return real(study, series, sops, ts)

    monkeypatch.setattr(retrieving, "identifier", spy)
    return sent


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_a_batch_of_whole_studies_is_one_study_level_request(
    archive: Any, levels: list[tuple[str, int]], retrieve: str
) -> None:
    pacs, uids, move_port = archive
    source = _source(pacs, move_port if retrieve == "move" else None)
    assert _fetch_all(source, list(source.iter_entries())) == uids
    assert levels == [("STUDY", 3)], levels
    assert source._held.in_memory == 0


def test_studies_past_the_bundle_bound_go_in_several_requests(
    archive: Any, levels: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wholes, "BUNDLE", 12)  # two studies of 6 instances a request
    pacs, uids, _ = archive
    source = _source(pacs)
    assert _fetch_all(source, list(source.iter_entries())) == uids
    assert levels == [("STUDY", 2), ("STUDY", 1)], levels


def test_a_study_split_over_two_batches_is_asked_series_by_series(
    archive: Any, levels: list[tuple[str, int]]
) -> None:
    """Each batch holds whole series of a study, not the whole study: each series asked
    for whole (SERIES level), never the study (which would bring the other batch's)."""
    pacs, _, _ = archive
    source = _source(pacs)
    entries = list(source.iter_entries())
    first = entries[0].study_uid
    mine = [e for e in entries if e.study_uid == first]
    by_series: dict[str, list[Any]] = {}
    for e in mine:
        by_series.setdefault(e.uri.split("/instances/")[0], []).append(e)
    one, two = by_series.values()
    got = _fetch_all(source, one) | _fetch_all(_source(pacs), two)
    assert got == {e.sop_instance_uid for e in mine}
    assert levels == [("SERIES", 1), ("SERIES", 1)], levels


def test_part_of_a_series_is_asked_by_uid(archive: Any, levels: list[tuple[str, int]]) -> None:
    pacs, _, _ = archive
    source = _source(pacs)
    entries = list(source.iter_entries())[:2]  # 2 of the first series' 3 instances
    assert _fetch_all(source, entries) == {e.sop_instance_uid for e in entries}
    assert levels == [("IMAGE", 2)], levels


def _add_one_more(pacs: OrthancPeer, tmp_path: Path, like: str) -> None:
    """A copy of the instance ``like`` under a new SOP Instance UID, into the archive."""
    given = [pydicom.dcmread(f) for f in (tmp_path / "given").rglob("*.dcm")]
    (ds,) = [d for d in given if d.SOPInstanceUID == like]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    out = io.BytesIO()
    ds.save_as(out)
    pacs.upload(out.getvalue())


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_an_instance_added_after_the_listing_is_not_kept(
    archive: Any,
    levels: list[tuple[str, int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retrieve: str,
) -> None:
    """Added after the sizes were asked for: the whole studies' request brings it too,
    and it is refused as it comes (not asked for), neither kept nor left behind; every
    listed instance arrives. (Orthanc ends a C-MOVE at a refused sub-operation: what it
    did not send then is asked for again, group by group.)"""
    pacs, uids, move_port = archive
    source = _source(pacs, move_port if retrieve == "move" else None)
    entries = list(source.iter_entries())
    real = wholes.Wholes.ask

    def then_added(self: wholes.Wholes, config: Settings, study: str) -> None:
        real(self, config, study)
        if not (tmp_path / "added").exists():
            (tmp_path / "added").touch()
            _add_one_more(pacs, tmp_path, entries[0].sop_instance_uid)

    monkeypatch.setattr(wholes.Wholes, "ask", then_added)
    assert _fetch_all(source, entries) == uids
    assert levels[0] == ("STUDY", 3), levels
    if retrieve == "get":
        assert levels == [("STUDY", 3)], levels
    assert pacs.count_instances() == 19  # it was there to be sent
    assert source._held.in_memory == 0
    assert not os.listdir(source._held.spool)  # nothing left behind in the spool


def test_an_instance_added_before_the_sizes_were_asked_leaves_its_study_to_its_own(
    archive: Any, levels: list[tuple[str, int]], tmp_path: Path
) -> None:
    """Counted in its series' size: that series is not whole any more, so its study is
    not either (asked for by UID); the other studies go together, and all listed come."""
    pacs, uids, _ = archive
    source = _source(pacs)
    entries = list(source.iter_entries())
    _add_one_more(pacs, tmp_path, entries[0].sop_instance_uid)
    assert _fetch_all(source, entries) == uids
    assert ("IMAGE", 3) in levels and ("STUDY", 2) in levels, levels
    assert source._held.in_memory == 0


def test_a_source_that_gives_no_series_sizes_is_asked_by_uid(
    archive: Any, levels: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As dcmqrscp answers: no NumberOfSeriesRelatedInstances. Asked for it once."""
    pacs, uids, _ = archive
    asked: list[list[str]] = []
    real = wholes._series_counts

    def no_counts(config: Settings, studies: list[str]) -> list[tuple[str, str, int]]:
        asked.append(studies)
        return [(st, se, 0) for st, se, _ in real(config, studies)]

    monkeypatch.setattr(wholes, "_series_counts", no_counts)
    source = _source(pacs)
    assert _fetch_all(source, list(source.iter_entries())) == uids
    assert [level for level, _ in levels] == ["IMAGE"] * 6, levels
    assert len(asked) == 1 and len(asked[0]) == 3, asked


@pytest.mark.parametrize("answer", ["refused", "nothing"])
def test_a_source_that_will_not_take_a_bundle_is_asked_group_by_group(
    archive: Any, levels: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """A source that refuses a list of Study UIDs, or reads it as one UID and answers
    "success" with nothing: each group asks on its own (at SERIES level, whole), every
    instance arrives, and no bundle is asked for again."""
    from migrator.sources.retrieve import Received, Refused

    pacs, uids, _ = archive
    source = _source(pacs)
    real = source._retrieve
    bundles: list[str] = []

    def picky(study: str, series: str, wanted: dict[str, str]) -> Received:
        if not series:
            bundles.append(study)
            if answer == "refused":
                raise Refused("the source refused the C-GET (0xC000)")
            return Received()  # final status success, no sub-operation
        return real(study, series, wanted)

    monkeypatch.setattr(source, "_retrieve", picky)
    assert _fetch_all(source, list(source.iter_entries())) == uids
    assert len(bundles) == 1, bundles
    assert levels == [("SERIES", 1)] * 6, levels


def test_an_unknown_move_destination_fails_the_whole_bundle_with_its_reason(
    archive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move to an AE the archive does not know (Orthanc 1.10: 0xC000, no association to
    us), on a source that also refuses an IMAGE-level C-FIND for a list of studies (which
    tells that answer apart from a missing instance): every instance fails saying what
    to register, none with the C-FIND's refusal."""
    from migrator.errors import PacsQueryError
    from migrator.sources.dimse_query import ListingClient
    from migrator.sources.inspect import inspect_item

    pacs, _, move_port = archive
    config = Settings(
        host="127.0.0.1",
        port=1,
        called_ae="X",
        calling_ae=OUR_AE,
        move_port=move_port,
        move_ae="STRANGER",
        source_retrieve="move",
    )
    source = DimseSource(f"dimse://OLDPACS@127.0.0.1:{pacs.dicom_port}", config)
    entries = list(source.iter_entries())
    real = ListingClient.find

    def no_lists(self: ListingClient, level: str, keys: Any, *args: Any, **kw: Any) -> Any:
        if level == "IMAGE" and "\\" in str(keys.get("StudyInstanceUID", "")):
            raise PacsQueryError("C-FIND at IMAGE level failed: 0xC000 Unable to process")
        return real(self, level, keys, *args, **kw)

    monkeypatch.setattr(ListingClient, "find", no_lists)
    items = [SourceItem(e.uri, 0) for e in entries]
    source.expect(items)
    reasons = {str(inspect_item(source, item)) for item in items}
    assert len(reasons) == 1, reasons
    (reason,) = reasons
    assert reason.startswith("the source refused the move destination AE STRANGER"), reason
