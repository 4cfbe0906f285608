"""The peer fixtures work against the real programs (Orthanc 1.10.1, DCMTK 3.6.7)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from migrator import synth
from tests.peers import dcmtk, orthanc
from tests.peers.dcmtk import StoreScpPeer, run_echoscu, run_storescu
from tests.peers.dicomcompare import compare_datasets, dataset_differences
from tests.peers.orthanc import OrthancPeer, PeerDiedError, PeerPortBusyError, instance_id


def _synth_file(path: Path, **options: object) -> tuple[Path, pydicom.Dataset]:
    ds = synth.make_dataset(**options)  # type: ignore[arg-type]
    return synth.write_dataset(ds, path), ds


def test_orthanc_starts_on_its_own_ports_and_reports_its_name(orthanc: OrthancPeer) -> None:
    """/system answers with the unique Name written into the generated config."""
    system = orthanc.get("/system")
    assert system["Name"] == orthanc.name
    assert system["DicomAet"] == "ORTHANC"
    assert system["DicomPort"] == orthanc.dicom_port
    assert orthanc.is_running()
    assert orthanc.startup_seconds is not None and orthanc.startup_seconds < 10
    assert orthanc.count_instances() == 0


def test_storescu_to_orthanc_stores_the_same_dataset(orthanc: OrthancPeer, tmp_path: Path) -> None:
    """A synth file sent by storescu is found by its deterministic ID and equals the original."""
    path, ds = _synth_file(tmp_path / "ct.dcm", kind="CT")
    result = run_storescu(orthanc.host, orthanc.dicom_port, [path], called_ae=orthanc.aet)
    assert result.returncode == 0, result.stdout

    expected_id = instance_id(
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert orthanc.find_instance(ds.SOPInstanceUID) == expected_id
    assert orthanc.find_instance("1.2.3.4.5.404") is None
    compare_datasets(path, orthanc.get_file(expected_id))
    meta = orthanc.metadata(expected_id)
    assert meta["RemoteAET"] == "MIGRATOR"
    assert meta["CalledAET"] == "ORTHANC"
    assert meta["TransferSyntax"] == ExplicitVRLittleEndian
    assert orthanc.count_instances() == 1
    assert orthanc.all_sop_instance_uids() == {ds.SOPInstanceUID}
    assert "New instance stored" in orthanc.log()


def test_orthanc_pagination_lists_every_instance(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = synth.write_corpus(tmp_path / "c", count=5, studies=2)
    assert run_storescu(orthanc.host, orthanc.dicom_port, paths).returncode == 0
    sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    assert orthanc.all_sop_instance_uids(page=2) == sops
    assert orthanc.statistics()["CountStudies"] == 2


def test_storescp_receives_what_storescu_sends(storescp: StoreScpPeer, tmp_path: Path) -> None:
    path, ds = _synth_file(tmp_path / "mr.dcm", kind="MR")
    result = run_storescu(storescp.host, storescp.port, [path], called_ae=storescp.aet)
    assert result.returncode == 0, result.stdout + storescp.log()
    (received,) = storescp.received_files()
    assert ds.SOPInstanceUID in received.name
    compare_datasets(path, received)


def test_echoscu_succeeds_against_orthanc_and_storescp(
    orthanc: OrthancPeer, storescp: StoreScpPeer
) -> None:
    for host, port, aet in (
        (orthanc.host, orthanc.dicom_port, orthanc.aet),
        (storescp.host, storescp.port, storescp.aet),
    ):
        result = run_echoscu(host, port, aet, "MIGRATOR")
        assert result.returncode == 0, result.stdout


def test_orthanc_checking_called_aet_rejects_a_wrong_one(
    orthanc_factory: Callable[..., OrthancPeer],
) -> None:
    """DicomCheckCalledAet: A-ASSOCIATE-RJ (1, 1, 7) for a wrong called AET, accepted otherwise."""
    pacs = orthanc_factory(aet="PACS1", check_called_aet=True)
    wrong = run_echoscu(pacs.host, pacs.dicom_port, "WRONGAET", "MIGRATOR")
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout
    assert run_echoscu(pacs.host, pacs.dicom_port, "PACS1", "MIGRATOR").returncode == 0


def test_orthanc_without_compression_refuses_jpeg2000(
    orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    """The "no compression" profile rejects the J2K context, so storescu cannot send the file."""
    pacs = orthanc_factory(compression="none")
    path, _ = _synth_file(tmp_path / "j2k.dcm", kind="MR", transfer_syntax=JPEG2000Lossless)
    result = run_storescu(pacs.host, pacs.dicom_port, [path], extra_args=["-xv"])
    assert result.returncode != 0, result.stdout
    assert pacs.count_instances() == 0


def test_orthanc_stores_the_whole_mixed_corpus(orthanc: OrthancPeer, tmp_path: Path) -> None:
    """Every file of the store command's acceptance corpus is acceptable to Orthanc."""
    paths = synth.write_mixed_corpus(tmp_path / "mixed")
    j2k = [p for p in paths if p.name == "mr_j2k.dcm"]
    rest = [p for p in paths if p not in j2k]
    assert run_storescu(orthanc.host, orthanc.dicom_port, rest).returncode == 0
    assert run_storescu(orthanc.host, orthanc.dicom_port, j2k, extra_args=["-xv"]).returncode == 0
    sops = {pydicom.dcmread(p, force=True, stop_before_pixels=True).SOPInstanceUID for p in paths}
    assert orthanc.all_sop_instance_uids() == sops
    # the J2K file was stored as sent
    ds = pydicom.dcmread(j2k[0])
    oid = orthanc.find_instance(ds.SOPInstanceUID)
    assert oid is not None
    assert orthanc.metadata(oid)["TransferSyntax"] == JPEG2000Lossless
    assert dataset_differences(j2k[0], orthanc.get_file(oid)) == []


def test_orthanc_accepts_every_sop_class_of_the_many_contexts_corpus(
    orthanc: OrthancPeer, tmp_path: Path
) -> None:
    """storescu caps one association at 128 contexts, so the corpus goes in two runs."""
    paths = synth.write_many_contexts_corpus(tmp_path / "ctx")
    half = len(paths) // 2
    for chunk in (paths[:half], paths[half:]):
        result = run_storescu(orthanc.host, orthanc.dicom_port, chunk, extra_args=["-R"])
        assert result.returncode == 0, result.stdout[-2000:]
    assert orthanc.count_instances() == len(paths)


def test_orthanc_peer_reports_a_bad_start_with_its_log(tmp_path: Path) -> None:
    """A config Orthanc refuses gives PeerDiedError carrying the log, not a hang."""
    peer = OrthancPeer(tmp_path / "bad", extra={"DicomAet": ""})
    with pytest.raises(PeerDiedError, match="died during startup") as info:
        peer.start()
    assert "stdout/stderr" in str(info.value)
    assert not peer.is_running()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held by a listener on 0.0.0.0, as a foreign server would hold it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_orthanc_peer_reports_a_port_taken_after_the_check(
    tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of TESTING.md §1.1: Orthanc exits and the error says the port was busy."""
    ports = iter([busy_port, orthanc.free_port_all_interfaces()])
    monkeypatch.setattr(orthanc, "free_port_all_interfaces", lambda: next(ports))
    monkeypatch.setattr(orthanc, "port_free_on_all_interfaces", lambda port: True)
    peer = OrthancPeer(tmp_path / "busy")
    with pytest.raises(PeerPortBusyError, match="already in use"):
        peer.start()
    assert not peer.is_running()


def test_storescp_peer_reports_a_busy_port(
    tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storescp exits on a busy port; the peer says so instead of letting storescu go on."""
    monkeypatch.setattr(dcmtk, "free_port", lambda host: busy_port)
    with pytest.raises(PeerPortBusyError, match="busy"):
        StoreScpPeer(tmp_path / "scp").start()
