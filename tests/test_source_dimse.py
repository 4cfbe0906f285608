"""The old PACS itself as the source: C-FIND lists, C-GET fetches (issue 17, first part).

The old PACS is a real Orthanc holding the mixed corpus (CT, MR, RGB, a 10 MB DX, a 55 MB
multi-frame, implicit VR, big-endian, two files without File Meta, JPEG 2000) and knowing
our calling AE (Orthanc aborts C-GET from an unknown AE); the destination a DCMTK storescp
that keeps every file. What a user checks: every instance arrives with the dataset the
archive was given, in its own transfer syntax (nothing re-encoded on the way); the report's
invariant; an AE the archive does not know gets every file failed with the reason; a C-FIND
result cap does not lose studies when the listing is split into date windows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from migrator.synth.corpora import write_mixed_corpus
from tests.behaviourhelpers import FRONT_ENDS, send
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer
from tests.test_source_dicomweb import _dated_archive

pytestmark = pytest.mark.timeout(300)

OUR_AE = "MIGRATOR"


def _old_pacs(factory: Callable[..., OrthancPeer], **extra: object) -> OrthancPeer:
    return factory(
        aet="OLDPACS",
        extra={
            "DicomModalities": {OUR_AE: [OUR_AE, "127.0.0.1", 1]},
            "DicomAlwaysAllowGet": True,
            **extra,
        },
    )


def _sop(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _source(pacs: OrthancPeer) -> str:
    return f"dimse://{pacs.aet}@127.0.0.1:{pacs.dicom_port}"


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_every_instance_of_the_old_pacs_arrives_in_its_own_syntax(
    front_end: str,
    orthanc_factory: Callable[..., OrthancPeer],
    storescp: StoreScpPeer,
    tmp_path: Path,
    compare_datasets: Callable[..., None],
) -> None:
    files = write_mixed_corpus(tmp_path / "given")
    pacs = _old_pacs(orthanc_factory)
    for f in files:
        pacs.upload(f.read_bytes())
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
    assert totals["stored"] == totals["planned"] == len(files), totals
    got = {str(_sop(p).SOPInstanceUID): p for p in storescp.received_files()}
    assert len(got) == len(files)
    for original in files:
        given = _sop(original)
        arrived = got[str(given.SOPInstanceUID)]
        compare_datasets(original, arrived)
        # No file without File Meta is sent as such here: the archive gives each in the
        # syntax it holds; the syntax is the one the archive was given.
        syntax = (
            given.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in given.file_meta else None
        )
        if syntax is not None:
            assert _sop(arrived).file_meta.TransferSyntaxUID == syntax, original.name


def test_an_ae_the_old_pacs_does_not_know_is_said_and_nothing_is_sent(
    orthanc_factory: Callable[..., OrthancPeer], storescp: StoreScpPeer, tmp_path: Path
) -> None:
    """Refused at the listing (Orthanc answers no C-FIND to an unknown AE): exit 3 with
    the AE named, nothing planned. Listing allowed but C-GET refused: every file fails
    with the C-GET's reason; the invariant holds."""
    files = write_mixed_corpus(tmp_path / "given")[:3]
    strict = _old_pacs(orthanc_factory)
    for f in files:
        strict.upload(f.read_bytes())
    args = ["--source-calling-ae", "STRANGER", "--retries", "0"]
    result = send(
        "run", tmp_path, storescp.port, storescp.aet, tmp_path, *args, sources=[_source(strict)]
    )
    assert result.rc == 3, result.tail()
    assert "does it allow C-FIND from AE STRANGER?" in result.output, result.tail()

    lax = _old_pacs(orthanc_factory, DicomAlwaysAllowFind=True, DicomAlwaysAllowGet=False)
    for f in files:
        lax.upload(f.read_bytes())
    result = send(
        "run", tmp_path, storescp.port, storescp.aet, tmp_path, *args, sources=[_source(lax)]
    )
    assert result.rc == 1, result.tail()
    totals = result.totals()
    assert totals["planned"] == 3 and totals["failed"] == 3, totals
    assert not storescp.received_files()
    reasons = {f["reason"] for f in result.report["files"]}  # type: ignore[index]
    assert all("allow it C-GET" in r and "STRANGER" in r for r in reasons), reasons


def test_a_capped_c_find_loses_no_study_when_split_into_date_windows(
    orthanc_factory: Callable[..., OrthancPeer], storescp: StoreScpPeer, tmp_path: Path
) -> None:
    """Orthanc's LimitFindResults ends a capped C-FIND answer with 0xFE00 (Cancel): the
    cap is detected without --find-limit. Without a date window the listing cannot be
    split: one planned failure saying so, nothing sent. With --from/--to every study."""
    pacs = _old_pacs(orthanc_factory, LimitFindResults=2)
    dates = _dated_archive(pacs, tmp_path, days=6, per_study=2)
    args = ["--source-calling-ae", OUR_AE]

    plain = send(
        "run", tmp_path, storescp.port, storescp.aet, tmp_path, *args, sources=[_source(pacs)]
    )
    assert plain.rc == 1, plain.tail()
    assert "the listing is capped" in plain.output and "give --from and --to" in plain.output
    assert not storescp.received_files()

    result = send(
        "run",
        tmp_path,
        storescp.port,
        storescp.aet,
        tmp_path,
        *args,
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-31",
        "--job",
        "windows",
        sources=[_source(pacs)],
    )
    assert result.rc == 0, result.tail()
    got = {str(_sop(p).SOPInstanceUID) for p in storescp.received_files()}
    assert got == set(dates)
    assert result.totals()["planned"] == len(dates)
