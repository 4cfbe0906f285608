"""Retrieving from the old PACS series by series (issue 17): one request per series on one
association, sub-operation counts checked, a missing instance asked for again then failed.

The old PACS is a real Orthanc. What a user checks: every instance arrives at the
destination (its SOP Instance UID set equals the source's), the report's invariant, how
many associations the old PACS was asked for (one per series, not one per instance: an
archive that falls over under associations is the reason for this), and the reason of an
instance deleted at the source after it was listed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from migrator.settings import Settings
from migrator.sources import expect
from migrator.sources.base import SourceItem
from migrator.sources.dimse import DimseSource
from migrator.sources.inspect import inspect_item
from migrator.synth.corpora import write_corpus
from tests.behaviourhelpers import send
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer, free_move_port
from tests.test_source_dimse import OUR_AE, _old_pacs, _source

pytestmark = pytest.mark.timeout(300)


def _archive(pacs: OrthancPeer, tmp_path: Path, count: int, series: int) -> dict[str, str]:
    """``count`` instances in ``series`` series of one study; SOP Instance UID -> series."""
    files = write_corpus(
        tmp_path / "given", count=count, studies=1, series_per_study=series, seed=17
    )
    by_sop = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_sop[str(ds.SOPInstanceUID)] = str(ds.SeriesInstanceUID)
        pacs.upload(f.read_bytes())
    return by_sop


def _counting(source: DimseSource) -> list[int]:
    """Each C-GET the source makes (one association each): how many instances it asked."""
    calls: list[int] = []
    real = source._c_get

    def counted(study: str, series: str, wanted: dict[str, str]) -> Any:
        calls.append(len(wanted))
        return real(study, series, wanted)

    source._c_get = counted  # type: ignore[method-assign]
    return calls


def _series_asked(source: DimseSource) -> list[str]:
    """The series each request of the source names ("": whole studies)."""
    asked: list[str] = []
    real = source._retrieve

    def recorded(study: str, series: str, wanted: dict[str, str]) -> Any:
        asked.append(series)
        return real(study, series, wanted)

    source._retrieve = recorded  # type: ignore[method-assign]
    return asked


def test_a_batch_is_fetched_with_one_c_get_per_whole_study(
    orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    """12 instances in 3 series of one study, all in the batch: one C-GET, at STUDY level
    (not one per series, not 12); each instance's header and file come from it, and the
    second fetch (the send after the header's reading) asks for nothing more."""
    pacs = _old_pacs(orthanc_factory)
    by_sop = _archive(pacs, tmp_path, count=12, series=3)
    source = DimseSource(_source(pacs), Settings(host="unused"), calling_ae=OUR_AE)
    items = [SourceItem(e.uri, 0) for e in source.iter_entries()]
    assert len(items) == 12
    calls = _counting(source)
    levels = _series_asked(source)
    expect((source, i) for i in items)
    seen = set()
    for item in items:
        header = inspect_item(source, item)
        assert not isinstance(header, Exception), header
        seen.add(header.sop_instance_uid)
        with source.fetch(item) as payload:  # the send's fetch: what is held for it
            kept = payload.path or io.BytesIO(payload.data or b"")
            assert pydicom.dcmread(kept).SOPInstanceUID == header.sop_instance_uid
    assert seen == set(by_sop)
    assert calls == [12], calls
    assert levels == [""], levels  # no series: the study, whole


def test_an_instance_deleted_after_listing_is_asked_once_more_then_failed(
    orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    """The source sends 4 of the 5 promised: the other is asked for again (a second C-GET
    of it alone), then fails saying how many of the series came; the 4 are served."""
    pacs = _old_pacs(orthanc_factory)
    by_sop = _archive(pacs, tmp_path, count=5, series=1)
    source = DimseSource(_source(pacs), Settings(host="unused"), calling_ae=OUR_AE)
    items = [SourceItem(e.uri, 0) for e in source.iter_entries()]
    gone = sorted(by_sop)[2]
    pacs.delete(f"/instances/{pacs.find_instance(gone)}")
    calls = _counting(source)
    expect((source, i) for i in items)
    results = {i.uri.rsplit("/", 1)[1].split("?")[0]: inspect_item(source, i) for i in items}
    # Orthanc refuses a list holding an unknown UID (0xC000): halves, then the instance.
    assert calls[0] == 5 and calls[-1] == 1 and len(calls) <= 7, (calls, results)
    assert not any(isinstance(r, Exception) for s, r in results.items() if s != gone), results
    reason = str(results[gone])
    series = by_sop[gone]
    assert f"the source sent 4 of 5 instances of series {series}" in reason, reason
    assert "this one did not come after a retry" in reason, reason


@pytest.mark.parametrize("front_end", ["store", "run"])
def test_the_destination_gets_the_sources_instance_set(
    front_end: str,
    orthanc_factory: Callable[..., OrthancPeer],
    storescp: StoreScpPeer,
    tmp_path: Path,
) -> None:
    pacs = _old_pacs(orthanc_factory)
    by_sop = _archive(pacs, tmp_path, count=24, series=4)
    result = send(
        front_end,
        tmp_path,
        storescp.port,
        storescp.aet,
        tmp_path,
        "--source-calling-ae",
        OUR_AE,
        sources=[_source(pacs)],
    )
    assert result.rc == 0, result.tail()
    totals = result.totals()
    assert totals["planned"] == totals["stored"] == 24, totals
    got = storescp.received_sop_uids()
    assert got == set(by_sop) == pacs.all_sop_instance_uids()


MOVE_AE = "MIGRATOR-MOVE"


def _moving_pacs(factory: Callable[..., OrthancPeer], move_port: int) -> OrthancPeer:
    """The old PACS knowing our calling AE and our Storage SCP as move destination."""
    return factory(
        aet="OLDPACS",
        extra={
            "DicomModalities": {
                OUR_AE: [OUR_AE, "127.0.0.1", 1],
                MOVE_AE: [MOVE_AE, "127.0.0.1", move_port],
            },
            "DicomAlwaysAllowGet": True,
        },
    )


def test_c_move_to_our_own_storage_scp_brings_the_sources_instance_set(
    orthanc_factory: Callable[..., OrthancPeer], storescp: StoreScpPeer, tmp_path: Path
) -> None:
    """`run` with two worker processes sharing --move-port (one move at a time per host
    and port): every instance comes by C-MOVE and is stored; the invariant holds."""
    move_port = free_move_port()
    pacs = _moving_pacs(orthanc_factory, move_port)
    by_sop = _archive(pacs, tmp_path, count=30, series=5)
    result = send(
        "run",
        tmp_path,
        storescp.port,
        storescp.aet,
        tmp_path,
        "--source-calling-ae",
        OUR_AE,
        "--retrieve",
        "move",
        "--move-ae",
        MOVE_AE,
        "--move-port",
        str(move_port),
        "--batch-files",
        "10",
        sources=[_source(pacs)],
    )
    assert result.rc == 0, result.tail()
    totals = result.totals()
    assert totals["planned"] == totals["stored"] == 30, totals
    got = storescp.received_sop_uids()
    assert got == set(by_sop) == pacs.all_sop_instance_uids()


@pytest.mark.parametrize("front_end", ["store", "run"])
def test_a_move_destination_the_source_does_not_know_is_said(
    front_end: str,
    orthanc_factory: Callable[..., OrthancPeer],
    storescp: StoreScpPeer,
    tmp_path: Path,
) -> None:
    """Every instance fails with what to do, the move asked for once per series at most
    (once for the whole study when one thread fetches it; `store`'s threads may fetch
    its two series at once), not per instance, not again; exit 1, the invariant holds."""
    move_port = free_move_port()
    pacs = _moving_pacs(orthanc_factory, move_port)
    _archive(pacs, tmp_path, count=6, series=2)
    result = send(
        front_end,
        tmp_path,
        storescp.port,
        storescp.aet,
        tmp_path,
        "--source-calling-ae",
        OUR_AE,
        "--retrieve",
        "move",
        "--move-ae",
        "STRANGER",
        "--move-port",
        str(move_port),
        sources=[_source(pacs)],
    )
    assert result.rc == 1, result.tail()
    totals = result.totals()
    assert totals["planned"] == totals["failed"] == 6, totals
    assert not storescp.received_files()
    reasons = {f["reason"] for f in result.report["files"]}  # type: ignore[index]
    # Orthanc 1.10 answers 0xC000 (not 0xA801): told apart from a missing instance by a
    # C-FIND saying the source holds them all. One reason for all: no instance retried.
    assert len(reasons) == 1, reasons
    (reason,) = reasons
    assert reason.startswith(
        "the source refused the move destination AE STRANGER: register it there (with this "
        f"host and port {move_port}; C-MOVE 0x"
    ), reason
    moves = pacs.log_path.read_text().count('Move-SCU request received for AET "STRANGER"')
    assert moves in (1, 2), moves


def test_retrieve_move_without_a_port_is_a_usage_error(tmp_path: Path) -> None:
    result = send(
        "store",
        tmp_path,
        1,
        "ANY",
        tmp_path,
        "--retrieve",
        "move",
        sources=["dimse://OLDPACS@127.0.0.1:1"],
    )
    assert result.rc == 2, result.tail()
    assert "--retrieve move needs --move-port" in result.output, result.tail()
