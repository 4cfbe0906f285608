"""Header-only inspection: what `store` learns from a file before sending it."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from migrator import synth
from migrator.dicomfile import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    InvalidInstanceError,
    NotDicomError,
    TruncatedError,
    inspect_bytes,
    inspect_file,
)
from migrator.dicomfile import inspect as inspect_module
from migrator.dicomfile.header import DicomHeader, build_header
from migrator.errors import SourceError
from migrator.outcomes import State
from migrator.sources.inspect import refusal


def _testfile(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing"
    return str(path)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "rtplan.dcm",
    ],
)
def test_header_matches_pydicom_full_read(name: str) -> None:
    """The fast parser finds the same UIDs and syntax as a full pydicom read."""
    path = _testfile(name)
    h = inspect_file(path)
    ds = pydicom.dcmread(path)
    assert h.sop_class_uid == ds.SOPClassUID
    assert h.sop_instance_uid == ds.SOPInstanceUID
    assert h.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert h.study_uid == ds.StudyInstanceUID
    assert h.series_uid == ds.SeriesInstanceUID
    assert h.has_meta
    assert h.size == os.path.getsize(path)
    # The dataset offset is exactly where pydicom's File Meta reading stops.
    with open(path, "rb") as f:
        pydicom.filereader.read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        assert h.dataset_offset == f.tell()


@pytest.mark.parametrize(
    ("name", "syntax"),
    [("rtstruct.dcm", IMPLICIT_LE), ("ExplVR_BigEndNoMeta.dcm", EXPLICIT_BE)],
)
def test_dataset_only_files_are_recognised(name: str, syntax: str) -> None:
    """Files without File Meta: the encoding is sniffed and the dataset starts at byte 0."""
    path = _testfile(name)
    h = inspect_file(path)
    ds = pydicom.dcmread(path, force=True)
    assert not h.has_meta
    assert h.dataset_offset == 0
    assert h.transfer_syntax == syntax
    assert h.sop_instance_uid == ds.SOPInstanceUID


def test_explicit_le_without_meta(tmp_path: Path) -> None:
    src = pydicom.dcmread(_testfile("CT_small.dcm"))
    out = tmp_path / "noMeta.dcm"
    # Write the bare dataset (no preamble, no group 0002) in explicit VR LE.
    from pydicom.filewriter import write_dataset

    with open(out, "wb") as f:
        fp = pydicom.filebase.DicomFileLike(f)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, src)
    h = inspect_file(str(out))
    assert (h.transfer_syntax, h.dataset_offset, h.has_meta) == (EXPLICIT_LE, 0, False)
    assert h.sop_instance_uid == src.SOPInstanceUID


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n" * 20, "not a DICOM file"),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00ZZ\x04\x00abcd", "invalid VR"),
    ],
)
def test_non_dicom_is_refused_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(NotDicomError, match=reason):
        inspect_file(str(path))


def test_missing_and_unreadable_files_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="vanished"):
        inspect_file(str(tmp_path / "gone.dcm"))
    with pytest.raises(SourceError, match="directory"):
        inspect_file(str(tmp_path))


def test_truncated_header_is_refused_as_damaged_not_as_non_dicom(tmp_path: Path) -> None:
    data = Path(_testfile("CT_small.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:200])  # inside the File Meta group
    with pytest.raises(TruncatedError, match="ends inside its File Meta") as exc:
        inspect_file(str(path))
    # Damaged DICOM is a failure to report, not a file to skip quietly.
    assert not isinstance(exc.value, NotDicomError)
    assert refusal(exc.value) == (State.FAILED, str(exc.value))


def test_inspect_bytes_equals_inspect_file() -> None:
    path = _testfile("MR_small.dcm")
    assert inspect_bytes(Path(path).read_bytes()) == inspect_file(path)


def test_header_longer_than_first_read_is_widened(tmp_path: Path) -> None:
    """A header with a 100 KB private element before the Study UID still inspects."""
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.add_new(0x00191010, "OB", b"\x01" * 100_000)  # sorts before (0020,000D)
    path = tmp_path / "long.dcm"
    ds.save_as(path)
    h = inspect_file(str(path))
    assert h.study_uid == ds.StudyInstanceUID


# -- the header checks on what was read (mutation survivors of build_header) ---------------


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "missing"),
    [
        ("1.2.840.10008.5.1.4.1.1.7", "", "SOP Instance UID"),
        ("", "1.2.3.4", "SOP Class UID"),
        ("", "", "SOP Class UID and SOP Instance UID"),
    ],
)
def test_a_missing_sop_uid_is_named_and_fails_a_recognisable_instance(
    sop_class: str, sop_instance: str, missing: str
) -> None:
    """A File Meta, or other UIDs found: a damaged instance (failed, naming exactly the UID
    that is missing); neither: not DICOM at all (skipped)."""
    with pytest.raises(InvalidInstanceError, match=f"^invalid instance: no {missing} in the"):
        build_header(sop_class, sop_instance, EXPLICIT_LE, {}, 132, 1000, True)
    found = {"study_uid": "1.2.3"}
    with pytest.raises(InvalidInstanceError, match=f"no {missing} in the"):
        build_header(sop_class, sop_instance, EXPLICIT_LE, found, 0, 1000, False)
    with pytest.raises(NotDicomError, match=f"^not a DICOM file: no {missing} in what reads"):
        build_header(sop_class, sop_instance, EXPLICIT_LE, {}, 0, 1000, False)


def test_a_file_meta_ending_exactly_at_the_end_of_the_file_is_not_truncated() -> None:
    """A dataset may be empty after its File Meta (the header ends at the file's end); a
    header that claims to end past it is truncated."""
    header = build_header("1.2", "1.2.3", EXPLICIT_LE, {}, 200, 200, True)
    assert (header.dataset_offset, header.size) == (200, 200)
    with pytest.raises(TruncatedError, match="truncated inside the File Meta header"):
        build_header("1.2", "1.2.3", EXPLICIT_LE, {}, 201, 200, True)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_RLE.dcm",
        "rtplan.dcm",
        "rtstruct.dcm",  # no File Meta: implicit VR sniffed
        "ExplVR_BigEndNoMeta.dcm",  # no File Meta: explicit VR big endian sniffed
    ],
)
def test_common_files_are_read_by_the_fast_parser_alone(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only deflated datasets (and what the fast parser cannot make sense of) go to
    pydicom, which reads the whole file: these must not, or every file of an archive would
    cost a full read. Same header from a path and from bytes."""

    def no_fallback(*args: object, **kwargs: object) -> DicomHeader:
        raise AssertionError("the fast parser gave up on a plain file")

    monkeypatch.setattr(inspect_module, "inspect_with_pydicom", no_fallback)
    path = _testfile(name)
    h = inspect_file(path)
    ds = pydicom.dcmread(path, force=True)
    assert (h.sop_class_uid, h.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert h.study_uid == ds.StudyInstanceUID and h.series_uid == ds.SeriesInstanceUID
    data = Path(path).read_bytes()
    assert inspect_bytes(data, name) == h


def test_links_that_lead_nowhere_are_named_for_what_they_are(tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.symlink_to(tmp_path / "nowhere.dcm")
    with pytest.raises(SourceError, match=r"^broken symbolic link: its target .*nowhere\.dcm"):
        inspect_file(str(broken))
    loop = tmp_path / "loop.dcm"
    loop.symlink_to(loop)
    with pytest.raises(SourceError, match=r"^symbolic link loop: the link leads back to itself"):
        inspect_file(str(loop))


def test_accession_number_and_modality_are_read_with_the_uids(tmp_path: Path) -> None:
    """The header also gives what the report groups by (accession, modality) and the
    study and series; read by the fast parser, as pydicom reads them."""
    ds = synth.make_dataset(seed=5, rows=16, cols=16)
    ds.AccessionNumber = "ACC-0042"
    ds.Modality = "MR"
    path = synth.write_dataset(ds, tmp_path / "acc.dcm")
    h = inspect_file(str(path))
    assert (h.accession, h.modality) == ("ACC-0042", "MR")
    assert (h.study_uid, h.series_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)


def test_a_file_of_preamble_and_dicm_alone_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "only-dicm.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM")  # 132 bytes: the File Meta would start here
    with pytest.raises(TruncatedError, match=r"ends inside its File Meta header \(132 bytes\)"):
        inspect_file(str(path))


def test_sop_uids_missing_from_the_dataset_are_taken_from_the_file_meta(tmp_path: Path) -> None:
    ds = synth.make_dataset(seed=6, rows=8, cols=8)
    uids = (ds.SOPClassUID, ds.SOPInstanceUID)
    full = synth.write_dataset(ds, tmp_path / "full.dcm")
    stripped = pydicom.dcmread(full)
    del stripped.SOPInstanceUID, stripped.SOPClassUID  # the File Meta keeps its copies
    stripped.save_as(tmp_path / "stripped.dcm")
    h = inspect_file(str(tmp_path / "stripped.dcm"))
    assert (h.sop_class_uid, h.sop_instance_uid) == uids


def test_inspecting_leaves_no_file_open() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        inspect_file(_testfile("CT_small.dcm"))
        with pytest.raises(NotDicomError):
            inspect_file(__file__)
    assert len(os.listdir("/proc/self/fd")) == before
