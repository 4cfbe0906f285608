"""The fast header parser at its edges: files built byte by byte so that an element, a
header or a read ends exactly where the parser decides something.

test_dicomfile.py checks common files against pydicom. These files sit on the parser's
boundaries (the last element ending at the file's end, a header split by the first read,
the first element of a bare dataset at each plausibility bound), where a parser that is
one byte off either calls a good file truncated or gives up and hands it to pydicom,
which reads the whole file and does not check for truncation (issue 23: the mutation
survivors of dicomfile/inspect.py).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from migrator.dicomfile import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NotDicomError,
    TruncatedError,
    inspect_bytes,
    inspect_file,
)
from migrator.dicomfile import inspect as inspect_module
from migrator.dicomfile.header import DicomHeader
from migrator.errors import SourceError
from tests.test_bad_inputs import _write_only_for_root

CT = "1.2.840.10008.5.1.4.1.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SOP = "1.2.826.0.1.3680043.9999.23.1"
STUDY = "1.2.826.0.1.3680043.9999.23.2"
SERIES = "1.2.826.0.1.3680043.9999.23.3"
_LONG = {"OB", "OW", "SQ", "UN", "UT"}


def el(tag: int, vr: str, value: bytes, syntax: str = EXPLICIT_LE) -> bytes:
    """One element as ``syntax`` encodes it (the value padded to an even length)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    return raw_el(tag, vr, value, len(value), syntax)


def raw_el(tag: int, vr: str, value: bytes, length: int, syntax: str = EXPLICIT_LE) -> bytes:
    """An element with the length given, whatever the value (odd lengths, undefined)."""
    end = ">" if syntax == EXPLICIT_BE else "<"
    group, elem = tag >> 16, tag & 0xFFFF
    if syntax == IMPLICIT_LE:
        return struct.pack("<HHI", group, elem, length) + value
    if vr in _LONG:
        return struct.pack(end + "HH2s2xI", group, elem, vr.encode(), length) + value
    return struct.pack(end + "HH2sH", group, elem, vr.encode(), length) + value


def meta(syntax: str | None = EXPLICIT_LE) -> bytes:
    """Preamble, 'DICM' and a File Meta group (with the SOP UIDs; ``None``: no Transfer
    Syntax UID, so the dataset's encoding must be sniffed)."""
    group = el(0x00020001, "OB", b"\0\1") + el(0x00020002, "UI", CT.encode())
    group += el(0x00020003, "UI", SOP.encode())
    if syntax:
        group += el(0x00020010, "UI", syntax.encode())
    return b"\0" * 128 + b"DICM" + el(0x00020000, "UL", struct.pack("<I", len(group))) + group


def uids(syntax: str = EXPLICIT_LE) -> bytes:
    """SOP Class and Instance UIDs, Study and Series: the dataset's top in tag order."""
    return b"".join(
        el(tag, "UI", uid.encode(), syntax)
        for tag, uid in (
            (0x00080016, CT),
            (0x00080018, SOP),
            (0x0020000D, STUDY),
            (0x0020000E, SERIES),
        )
    )


@pytest.fixture
def fast_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom, the fallback, must not be asked: the fast parser reads these files alone."""

    def no_fallback(*args: object, **kwargs: object) -> DicomHeader:
        raise AssertionError("the fast parser gave up and handed the file to pydicom")

    monkeypatch.setattr(inspect_module, "inspect_with_pydicom", no_fallback)


def both(tmp_path: Path, data: bytes) -> DicomHeader:
    """Inspect ``data`` as a local file and as bytes: the same header either way."""
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    header = inspect_file(str(path))
    assert inspect_bytes(data) == header
    return header


# -- a header that ends exactly at the end of the file ----------------------------------


@pytest.mark.usefixtures("fast_only")
@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE])
def test_a_dataset_ending_with_its_series_uid_is_whole(tmp_path: Path, syntax: str) -> None:
    """No element after Series Instance UID (a dataset without pixel data can end there):
    its value ends exactly at the file's end, which is not a cut."""
    h = both(tmp_path, meta(syntax) + uids(syntax))
    assert (h.sop_instance_uid, h.study_uid, h.series_uid) == (SOP, STUDY, SERIES)
    assert h.transfer_syntax == syntax


@pytest.mark.usefixtures("fast_only")
def test_a_last_element_of_eight_bytes_ends_the_header_not_the_file(tmp_path: Path) -> None:
    """The dataset is a single empty element (8 bytes) right after the File Meta, which has
    no Transfer Syntax UID: the encoding is sniffed from those 8 bytes."""
    h = both(tmp_path, meta(None) + el(0x00080005, "CS", b""))
    assert (h.sop_instance_uid, h.transfer_syntax) == (SOP, EXPLICIT_LE)
    assert "recognised from the data" in h.note


@pytest.mark.usefixtures("fast_only")
def test_an_empty_long_element_at_the_end_is_whole(tmp_path: Path) -> None:
    """The last element has a 12-byte header (OB) and no value."""
    data = meta() + uids()[: -len(el(0x0020000E, "UI", SERIES.encode()))]
    h = both(tmp_path, data + el(0x00291010, "OB", b""))
    assert (h.sop_instance_uid, h.study_uid) == (SOP, STUDY)


@pytest.mark.parametrize("cut", [8, 10, 11])
def test_a_file_cut_in_a_long_element_header_names_that_element(tmp_path: Path, cut: int) -> None:
    """Cut after ``cut`` bytes of a 12-byte (OB) element header, before the Study UID."""
    before = meta() + el(0x00080016, "UI", CT.encode()) + el(0x00080018, "UI", SOP.encode())
    data = before + el(0x00091010, "OB", b"\1" * 64)[:cut]
    path = tmp_path / "cut.dcm"
    path.write_bytes(data)
    with pytest.raises(TruncatedError, match=r"ends inside element \(0009,1010\)"):
        inspect_file(str(path))


# -- a cut file is judged by the fast parser (pydicom does not look for cuts) ------------


@pytest.mark.usefixtures("fast_only")
@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, JPEG_BASELINE])
def test_a_file_cut_in_its_series_uid_is_truncated_without_pydicom(
    tmp_path: Path, syntax: str
) -> None:
    """A compressed syntax's dataset is explicit VR little endian (PS3.5 A.4)."""
    encoding = EXPLICIT_LE if syntax == JPEG_BASELINE else syntax
    path = tmp_path / "cut.dcm"
    path.write_bytes((meta(syntax) + uids(encoding))[:-5])
    with pytest.raises(TruncatedError, match=r"ends inside element \(0020,000E\)"):
        inspect_file(str(path))


def test_a_cut_encapsulated_file_given_whole_as_bytes_is_truncated(tmp_path: Path) -> None:
    """Bytes that are the whole object (not a head with a larger ``size``) can be walked
    to their end: the missing end of the Pixel Data items is found, as for a local file."""
    src = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    assert src is not None
    data = Path(str(src)).read_bytes()[:-100]
    with pytest.raises(TruncatedError, match="encapsulated Pixel Data"):
        inspect_bytes(data)
    path = tmp_path / "cut.dcm"
    path.write_bytes(data)
    with pytest.raises(TruncatedError, match="encapsulated Pixel Data"):
        inspect_file(str(path))


# -- reads ----------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_only")
def test_an_element_header_split_by_the_first_read_is_read_again_wider(
    tmp_path: Path,
) -> None:
    """Study Instance UID's header straddles the end of the first read (HEAD_BYTES): the
    parser reads more rather than taking what it has for the whole header."""
    top = meta() + el(0x00080016, "UI", CT.encode()) + el(0x00080018, "UI", SOP.encode())
    pad = inspect_module.HEAD_BYTES - 4 - len(top) - 12  # (0020,000D) starts 4 bytes short
    study_series = el(0x0020000D, "UI", STUDY.encode()) + el(0x0020000E, "UI", SERIES.encode())
    data = top + el(0x00191010, "OB", b"\1" * pad) + study_series
    assert data[inspect_module.HEAD_BYTES - 4 : inspect_module.HEAD_BYTES] == b"\x20\0\x0d\0"
    path = tmp_path / "long.dcm"
    path.write_bytes(data)
    h = inspect_file(str(path))
    assert (h.study_uid, h.series_uid) == (STUDY, SERIES)


def test_a_file_handed_to_pydicom_is_not_read_again_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deflated dataset goes to pydicom; the fast parser read the whole (small) file at
    once and must not re-read it in ever wider reads before giving up."""
    src = get_testdata_file("image_dfl.dcm")
    assert src is not None
    reads: list[int] = []
    pread = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting)
    h = inspect_file(str(src))
    assert h.transfer_syntax == "1.2.840.10008.1.2.1.99"
    assert reads == [inspect_module.HEAD_BYTES]


# -- a dataset not encoded as its File Meta says ------------------------------------------


def test_a_dataset_encoded_otherwise_than_its_file_meta_says_is_left_to_pydicom(
    tmp_path: Path,
) -> None:
    """Seen in the wild: the File Meta says explicit VR, the dataset is implicit. pydicom
    reads it (it checks the first element's VR); the fast parser must let it."""
    h = both(tmp_path, meta(EXPLICIT_LE) + uids(IMPLICIT_LE))
    assert (h.sop_instance_uid, h.series_uid) == (SOP, SERIES)


@pytest.mark.usefixtures("fast_only")
def test_a_bare_dataset_with_an_invalid_vr_is_not_dicom(tmp_path: Path) -> None:
    """Without a File Meta there is no encoding to doubt: an invalid VR past a plausible
    first element is refused at once, not handed to pydicom."""
    data = el(0x00080016, "UI", CT.encode()) + b"\x08\x00\x18\x00ZZ\x04\x00abcd"
    path = tmp_path / "bare.dcm"
    path.write_bytes(data)
    with pytest.raises(NotDicomError, match=r"invalid VR b'ZZ'"):
        inspect_file(str(path))


# -- sniffing a dataset's encoding from its first element --------------------------------

#: (syntax, first element's group, its length (implicit VR), recognised): a dataset starts
#: at a low group (1..0x10); an implicit first element is under 64 KiB or a sequence of
#: undefined length. Group 0 is a DIMSE command, not a dataset.
SNIFF_CASES = [
    (EXPLICIT_LE, 0x0000, 4, False),
    (EXPLICIT_LE, 0x0001, 4, True),
    (EXPLICIT_LE, 0x0010, 4, True),
    (EXPLICIT_LE, 0x0011, 4, False),
    (EXPLICIT_BE, 0x0001, 4, True),
    (EXPLICIT_BE, 0x0010, 4, True),
    (EXPLICIT_BE, 0x0011, 4, False),
    (IMPLICIT_LE, 0x0000, 4, False),
    (IMPLICIT_LE, 0x0001, 4, True),
    (IMPLICIT_LE, 0x0010, 4, True),
    (IMPLICIT_LE, 0x0011, 4, False),
    (IMPLICIT_LE, 0x0009, 0xFFFF, True),
    (IMPLICIT_LE, 0x0009, 0x10000, False),
    (IMPLICIT_LE, 0x0008, 0xFFFFFFFF, True),
]


def _first_element(syntax: str, group: int, length: int) -> bytes:
    if length == 0xFFFFFFFF:  # an empty sequence of undefined length
        end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return raw_el(group << 16 | 0x1140, "SQ", end, length, syntax)
    if syntax == IMPLICIT_LE:
        return raw_el(group << 16 | 0x1010, "UN", b"\1" * length, length, syntax)
    return el(group << 16 | 0x0010, "LO", b"abcd", syntax)


@pytest.mark.usefixtures("fast_only")
@pytest.mark.parametrize(("syntax", "group", "length", "recognised"), SNIFF_CASES)
def test_the_encoding_is_sniffed_from_a_plausible_first_element(
    tmp_path: Path, syntax: str, group: int, length: int, recognised: bool
) -> None:
    """A File Meta without Transfer Syntax UID (it holds the SOP UIDs) and a dataset of one
    element: recognised as ``syntax``, or refused as not DICOM."""
    data = meta(None) + _first_element(syntax, group, length)
    if not recognised:
        path = tmp_path / "odd.dcm"
        path.write_bytes(data)
        with pytest.raises(NotDicomError, match="encoding cannot be recognised"):
            inspect_file(str(path))
        return
    h = both(tmp_path, data)
    assert (h.transfer_syntax, h.sop_instance_uid) == (syntax, SOP)


@pytest.mark.usefixtures("fast_only")
@pytest.mark.parametrize(("syntax", "group", "length", "recognised"), SNIFF_CASES)
def test_a_bare_dataset_is_recognised_by_its_first_element(
    tmp_path: Path, syntax: str, group: int, length: int, recognised: bool
) -> None:
    """The same first elements at the start of a file without File Meta, followed by the
    UIDs: a dataset in ``syntax``, or not DICOM."""
    data = _first_element(syntax, group, length) + uids(syntax)
    if not recognised:
        path = tmp_path / "odd.dcm"
        path.write_bytes(data)
        with pytest.raises(NotDicomError, match="no recognisable dataset"):
            inspect_file(str(path))
        return
    h = both(tmp_path, data)
    assert (h.transfer_syntax, h.sop_instance_uid, h.has_meta) == (syntax, SOP, False)


# -- why a file cannot be opened -----------------------------------------------------------


def test_a_file_that_cannot_be_opened_is_named_so(tmp_path: Path) -> None:
    """EACCES at open, as root too: a link to a write-only sysfs attribute (as in
    test_bad_inputs)."""
    target = _write_only_for_root()
    if target is None:
        pytest.skip("no write-only sysfs attribute on this machine")
    link = tmp_path / "unreadable.dcm"
    link.symlink_to(target)
    with pytest.raises(SourceError, match=r"^cannot open: permission denied$"):
        inspect_file(str(link))


def test_a_file_that_vanishes_between_stat_and_open_is_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a busy source folder has: the file is gone when it is opened (a real
    ENOENT from the open; the test removes it right after the real stat)."""
    path = tmp_path / "gone.dcm"
    path.write_bytes(meta() + uids())
    real_stat: Callable[..., os.stat_result] = os.stat

    def stat_then_remove(p: str, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(p, *args, **kwargs)
        if p == str(path):
            path.unlink()
        return result

    monkeypatch.setattr(os, "stat", stat_then_remove)
    with pytest.raises(SourceError, match=r"^vanished before it could be read$"):
        inspect_file(str(path))


def test_a_path_that_cannot_be_looked_up_is_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EACCES from stat (a folder on the way without search permission): root never gets
    it, so the stat is made to answer it."""

    def denied(p: str, *args: object, **kwargs: object) -> os.stat_result:
        raise PermissionError(errno.EACCES, "Permission denied", p)

    monkeypatch.setattr(os, "stat", denied)
    with pytest.raises(SourceError, match=r"^cannot open: permission denied$"):
        inspect_file(str(tmp_path / "x.dcm"))


def test_a_file_swapped_for_a_named_pipe_after_its_stat_is_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path was a regular file at the stat and is a FIFO at the open (a race with
    whatever writes the source folder): the open must not block until a writer comes."""
    path = tmp_path / "swapped.dcm"
    path.write_bytes(meta() + uids())
    real_stat: Callable[..., os.stat_result] = os.stat

    def stat_then_swap(p: str, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(p, *args, **kwargs)
        if p == str(path):
            path.unlink()
            os.mkfifo(path)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    outcome: list[BaseException | DicomHeader] = []

    def inspect() -> None:
        try:
            outcome.append(inspect_file(str(path)))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=inspect, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # blocked in open(): a writer lets it go, then the test fails
        os.close(os.open(path, os.O_WRONLY))
        worker.join(5)
        pytest.fail("inspecting a named pipe blocked until a writer opened it")
    (result,) = outcome
    assert isinstance(result, NotDicomError)
    assert str(result) == "not a regular file: a named pipe (FIFO); not read"
