"""`migrator store` against real peers: DCMTK storescp, Orthanc and a moto S3 server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from migrator import synth
from migrator.dicomfile import EXPLICIT_LE
from migrator.outcomes import State
from migrator.settings import Settings
from migrator.store import StoreScu
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer
from tests.storehelpers import load_report, run_migrator, sop_uid

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synth.write_mixed_corpus(tmp_path_factory.mktemp("mixed"))


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_mixed_corpus_arrives_complete_at_storescp(
    mixed: list[Path],
    storescp: StoreScpPeer,
    tmp_path: Path,
    compare_datasets: Callable[..., None],
    jobs: str,
) -> None:
    """CT, MR, SC, 10 MB, 55 MB multi-frame, implicit, big-endian, no-meta and J2K files;
    one association, and four driven from one thread."""
    report = tmp_path / "report.json"
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        storescp.port,
        "--called-ae",
        "STORESCP",
        "-j",
        jobs,
        *mixed,
        "--report",
        report,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓ All files stored successfully!" in proc.stdout
    assert f"Total Files: {len(mixed)}" in proc.stdout
    received = {sop_uid(p): p for p in storescp.received_files()}
    assert len(received) == len(mixed)
    for original in mixed:
        compare_datasets(original, received[sop_uid(original)])
    data = load_report(report)
    assert data["totals"]["stored"] == len(mixed)
    # storescp +xa accepts every syntax: nothing needed re-encoding.
    assert all(f["ts_sent"] == f["ts_original"] for f in data["files"])


def test_mixed_corpus_arrives_complete_at_orthanc(
    mixed: list[Path],
    orthanc: OrthancPeer,
    compare_datasets: Callable[..., None],
) -> None:
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        orthanc.dicom_port,
        "--called-ae",
        "ORTHANC",
        "--concurrency",
        "3",
        *mixed,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert orthanc.count_instances() == len(mixed)
    for original in mixed:
        oid = orthanc.find_instance(sop_uid(original))
        assert oid, f"{original.name} not in Orthanc"
        # Orthanc rewrites the File Meta: compare datasets, not files.
        compare_datasets(original, orthanc.get_file(oid))


def test_refused_j2k_is_sent_decompressed_losslessly_and_reported(
    mixed: list[Path],
    orthanc_factory: Callable[..., OrthancPeer],
    tmp_path: Path,
) -> None:
    orthanc = orthanc_factory(compression="no-j2k")
    [j2k] = [
        p
        for p in mixed
        if pydicom.dcmread(p, stop_before_pixels=True, force=True).file_meta.get(
            "TransferSyntaxUID"
        )
        == J2K_LOSSLESS
    ]
    report = tmp_path / "r.json"
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        orthanc.dicom_port,
        "--called-ae",
        "ORTHANC",
        j2k,
        "--report",
        report,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Re-encoded:  1" in proc.stdout or "Re-encoded: 1" in proc.stdout.replace("  ", " ")
    [entry] = load_report(report)["files"]
    assert entry["transcoded"] is True
    assert entry["ts_original"] == J2K_LOSSLESS and entry["ts_sent"] == EXPLICIT_LE
    oid = orthanc.find_instance(sop_uid(j2k))
    assert oid
    assert orthanc.metadata(oid)["TransferSyntax"] == EXPLICIT_LE
    stored = pydicom.dcmread(__import__("io").BytesIO(orthanc.get_file(oid)))
    original = pydicom.dcmread(j2k)
    assert np.array_equal(stored.pixel_array, original.pixel_array)
    assert stored.SOPInstanceUID == original.SOPInstanceUID


def test_more_than_128_context_pairs_are_all_sent(orthanc: OrthancPeer, tmp_path: Path) -> None:
    files = synth.write_many_contexts_corpus(tmp_path / "many", pairs=140)
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        orthanc.dicom_port,
        "--called-ae",
        "ORTHANC",
        "--dir",
        tmp_path / "many",
        "-R",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert orthanc.all_sop_instance_uids() == {sop_uid(p) for p in files}


def test_non_dicom_files_are_skipped_with_a_reason_and_the_rest_stored(
    storescp: StoreScpPeer, tmp_path: Path
) -> None:
    good = synth.write_corpus(tmp_path / "in", count=3, size="tiny")
    (tmp_path / "in" / "notes.txt").write_text("scanner notes, not DICOM\n")
    (tmp_path / "in" / "empty.dcm").write_bytes(b"")
    report = tmp_path / "r.json"
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        storescp.port,
        "--dir",
        tmp_path / "in",
        "--report",
        report,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Skipped:     2" in proc.stdout
    data = load_report(report)
    reasons = {Path(f["uri"]).name: f["reason"] for f in data["files"] if f["state"] == "skipped"}
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "empty file" in reasons["empty.dcm"]
    assert len(storescp.received_files()) == len(good)


def test_recursive_flag_controls_descent(storescp: StoreScpPeer, tmp_path: Path) -> None:
    synth.write_corpus(tmp_path / "top", count=2, size="tiny", seed=1)
    synth.write_corpus(tmp_path / "top" / "sub", count=3, size="tiny", seed=2)
    flat = run_migrator(
        "store", "--host", "127.0.0.1", "--port", storescp.port, "--dir", tmp_path / "top"
    )
    assert "Total Files: 2" in flat.stdout, flat.stdout
    deep = run_migrator(
        "store", "--host", "127.0.0.1", "--port", storescp.port, "--dir", tmp_path / "top", "-R"
    )
    assert "Total Files: 5" in deep.stdout, deep.stdout
    assert len(storescp.received_files()) == 5


def test_rate_limit_files_per_second_holds(
    storescp_factory: Callable[..., StoreScpPeer], tmp_path: Path
) -> None:
    peer = storescp_factory(ignore=True)
    synth.write_corpus(tmp_path / "c", count=100, size="tiny")
    t0 = time.monotonic()
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        peer.port,
        "--dir",
        tmp_path / "c",
        "--rate-limit",
        "20",
        "--concurrency",
        "4",
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 100 files at 20/s with a burst of 10: at least (100 - 10) / 20 = 4.5 s.
    assert elapsed >= 4.5
    assert elapsed < 30  # generous: it must not be pathologically slow either


def test_rate_limit_bytes_holds_within_ten_percent(
    storescp_factory: Callable[..., StoreScpPeer], tmp_path: Path
) -> None:
    peer = storescp_factory(ignore=True)
    files = synth.write_corpus(tmp_path / "c", count=40, size="small")  # ~0.5 MB each
    total = sum(p.stat().st_size for p in files)
    rate = 5.0  # MB/s; burst is one second of it
    settings = Settings(
        host="127.0.0.1",
        port=peer.port,
        called_ae="STORESCP",
        rate_limit_bytes=rate * 1e6,
        concurrency=2,
    )
    scu = StoreScu(settings)
    scu.add_folder(str(tmp_path / "c"))
    t0 = time.monotonic()
    result = scu.send()
    elapsed = time.monotonic() - t0
    assert result.stored == len(files)
    expected = (total - rate * 1e6) / (rate * 1e6)
    assert elapsed >= expected * 0.9
    assert elapsed < expected * 3 + 5


def test_python_api_callbacks_and_in_memory_bytes(storescp: StoreScpPeer, tmp_path: Path) -> None:
    files = synth.write_corpus(tmp_path / "c", count=4, size="tiny")
    events: list[tuple[str, Any]] = []
    scu = StoreScu(
        Settings(host="127.0.0.1", port=storescp.port, called_ae="STORESCP"),
        on_transfer_started=lambda n: events.append(("started", n)),
        on_file_sending=lambda uri: events.append(("sending", uri)),
        on_file_sent=lambda o: events.append(("sent", o.uri)),
        on_file_error=lambda o: events.append(("error", o.uri)),
        on_transfer_completed=lambda r: events.append(("completed", r.stored)),
    )
    scu.add_file(str(files[0]))
    scu.add_folder(str(tmp_path / "c"), recursive=False)
    extra = synth.make_dataset("MR", seed=99)
    buf = __import__("io").BytesIO()
    extra.save_as(buf, enforce_file_format=True)
    scu.add_bytes(buf.getvalue(), name="extra")
    scu.add_bytes(b"not dicom", name="junk")
    result = scu.send()
    assert events[0] == ("started", 1 + 4 + 2)
    assert events[-1] == ("completed", result.stored)
    assert result.stored == 5  # files[0] is listed twice: sent once (issue 7), + 3 + 1
    skipped = {o.uri: o.reason for o in result.outcomes if o.state is State.SKIPPED}
    assert skipped[str(files[0])] == "duplicate: the same file is listed twice; not sent again"
    assert len(skipped) == 2
    assert ("error", "mem://junk") in events
    assert sum(1 for e in events if e[0] == "sending") == 5
    assert sop_uid(tmp_path / "c" / files[1].name) in {
        sop_uid(p) for p in storescp.received_files()
    }
    assert extra.SOPInstanceUID in {sop_uid(p) for p in storescp.received_files()}


def test_store_from_s3_prefix(moto_s3: Any, storescp: StoreScpPeer, tmp_path: Path) -> None:
    files = synth.write_corpus(tmp_path / "c", count=12, size="tiny")
    bucket = moto_s3.create_bucket()
    for p in files:
        moto_s3.put(bucket, f"archive/2019/{p.name}", p.read_bytes())
    moto_s3.put(bucket, "other/ignored.dcm", files[0].read_bytes())
    report = tmp_path / "r.json"
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        storescp.port,
        f"s3://{bucket}/archive/",
        "--s3-endpoint",
        moto_s3.endpoint,
        "--report",
        report,
        env={
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Total Files: 12" in proc.stdout
    assert {sop_uid(p) for p in storescp.received_files()} == {sop_uid(p) for p in files}
    assert all(f["uri"].startswith(f"s3://{bucket}/archive/") for f in load_report(report)["files"])


def test_lossy_original_is_refused_unless_allowed(
    orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path
) -> None:
    """JPEG baseline to a PACS that takes no compression: fail, or decompress on request."""
    from pydicom.data import get_testdata_file

    orthanc = orthanc_factory(compression="none")
    jpeg = Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    args = (
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        orthanc.dicom_port,
        "--called-ae",
        "ORTHANC",
        jpeg,
    )
    refused = run_migrator(*args, "--report", tmp_path / "a.json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [entry] = load_report(tmp_path / "a.json")["files"]
    assert entry["state"] == "failed" and "lossy" in entry["reason"].lower()
    assert orthanc.count_instances() == 0
    allowed = run_migrator(*args, "--allow-lossy-decompression", "--report", tmp_path / "b.json")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    [entry] = load_report(tmp_path / "b.json")["files"]
    assert entry["transcoded"] and entry["ts_sent"] == EXPLICIT_LE
    oid = orthanc.find_instance(sop_uid(jpeg))
    assert oid and orthanc.metadata(oid)["TransferSyntax"] == EXPLICIT_LE


def test_forced_transfer_syntax_is_what_arrives(storescp: StoreScpPeer, tmp_path: Path) -> None:
    files = synth.write_corpus(tmp_path / "c", count=3, size="tiny")  # explicit VR LE
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        storescp.port,
        "--transfer-syntax",
        "implicit",
        *files,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    received = storescp.received_files()
    assert len(received) == 3
    for p in received:
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    by_uid = {sop_uid(p): p for p in received}
    for original in files:
        got = pydicom.dcmread(by_uid[sop_uid(original)])
        assert got.PixelData == pydicom.dcmread(original).PixelData


def _write_big_file(path: Path, frames: int) -> int:
    """A multi-frame 1024x1024x8-bit file of ``frames`` MB, its pixels a sparse zero run."""
    ds = synth.make_dataset("SC", rows=1024, cols=1024, bits=8, frames=1, seed=7)
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte SC
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(path, enforce_file_format=True)
    length = frames * 1024 * 1024
    with open(path, "ab") as f:  # (7FE0,0010) OB, explicit VR LE, then the value
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))
        f.truncate(f.tell() + length)
    return path.stat().st_size


@pytest.mark.slow
def test_a_1gb_file_streams_with_flat_memory(
    storescp_factory: Callable[..., StoreScpPeer], tmp_path: Path
) -> None:
    """Peak RSS of the sending process stays far below the file size."""
    import subprocess
    import sys

    peer = storescp_factory(ignore=True)
    size = _write_big_file(tmp_path / "big.dcm", frames=1024)
    assert size > 1024**3
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrator",
            "store",
            "--host",
            "127.0.0.1",
            "--port",
            str(peer.port),
            "--called-ae",
            "STORESCP",
            str(tmp_path / "big.dcm"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # VmHWM is the peak RSS of the process image after exec. (ru_maxrss from wait4 is not:
    # Linux carries the parent's high-water mark into a vfork+exec child.)
    peak_kb = 0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    text = child.communicate(timeout=300)[0]
    assert child.returncode == 0, text
    assert "Successful:  1" in text
    assert peak_kb > 0
    assert peak_kb < 150 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
