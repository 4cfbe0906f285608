"""Unit tests of the receiver's disk side: path safety, atomic writes, File Meta (no network)."""

from __future__ import annotations

import functools
import os
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
import pytest

from migrator.errors import ConfigError
from migrator.scp.storage import (
    UnsafeUIDError,
    check_output_dir,
    encode_meta,
    file_meta,
    relative_path,
    resolve_under,
    write_instance,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

HOSTILE = [
    "../../evil",
    "..",
    ".",
    "1.2/3",
    "/etc/passwd",
    "1.2\x00.3",
    "1.2.3\\4",
    "1..2",
    "",
    "1." + "2" * 80,  # longer than 64
    "1.2.3 ",
    "1.02",  # leading zero in a component: not a UID
    "1.2.3\n",  # a regular expression's "$" matches before a final newline
]


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("where", ["study", "series", "sop"])
def test_hostile_uid_never_becomes_a_path_component(bad: str, where: str) -> None:
    """Any invalid UID in any position is refused before a path is built."""
    uids = {"study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5"}
    uids[where] = bad
    with pytest.raises(UnsafeUIDError):
        relative_path(uids["study"], uids["series"], uids["sop"], organize=True)


def test_flat_layout_ignores_study_and_series() -> None:
    """--no-organize needs only the SOP Instance UID, so odd Study/Series UIDs don't matter."""
    assert relative_path("", "../x", "1.2.3", organize=False) == PurePosixPath("1.2.3.dcm")
    with pytest.raises(UnsafeUIDError):
        relative_path("1.2", "1.3", "../../evil", organize=False)


def test_organized_layout() -> None:
    """Study/Series/SOP.dcm, in that order."""
    assert relative_path("1.2", "1.2.3", "1.2.3.4", organize=True) == PurePosixPath(
        "1.2/1.2.3/1.2.3.4.dcm"
    )


def test_symlink_inside_output_cannot_lead_outside(tmp_path: Path) -> None:
    """A planted symlink Study dir pointing elsewhere is caught by resolving the path."""
    root = tmp_path / "out"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "1.2").symlink_to(outside)
    with pytest.raises(UnsafeUIDError):
        resolve_under(root, PurePosixPath("1.2/1.3/1.4.dcm"))


def _spool(tmp_path: Path, payload: bytes) -> tuple[Path, int]:
    """A fake pynetdicom spool file: 40 bytes of junk 'meta', then the dataset bytes."""
    src = tmp_path / "spool.bin"
    src.write_bytes(b"J" * 40 + payload)
    return src, 40


def test_written_file_is_meta_plus_dataset_bytes_verbatim(tmp_path: Path) -> None:
    """The dataset bytes are copied as received behind our File Meta, readable by pydicom."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.PatientID = "SYNTH"
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    payload = buf.getvalue()
    src, offset = _spool(tmp_path, payload)
    root = tmp_path / "out"
    meta = file_meta(CT, "1.2.3.4.5", EXPLICIT_LE, "SENDER")
    final, replaced = write_instance(
        root, PurePosixPath("1.2/1.3/1.2.3.4.5.dcm"), src, offset, meta
    )
    assert final == (root / "1.2/1.3/1.2.3.4.5.dcm").resolve()
    assert not replaced
    data = final.read_bytes()
    assert data.endswith(payload)
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(final)
    assert back.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert back.file_meta.MediaStorageSOPClassUID == CT
    assert back.file_meta.SourceApplicationEntityTitle == "SENDER"
    assert back.PatientID == "SYNTH"
    # A second write of the same instance replaces it and says so.
    assert write_instance(root, PurePosixPath("1.2/1.3/1.2.3.4.5.dcm"), src, offset, meta)[1]


def test_failed_copy_leaves_no_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash mid-copy leaves neither a half file under the final name nor a .part file."""
    import shutil

    src, offset = _spool(tmp_path, b"x" * 5000)
    root = tmp_path / "out"
    rel = PurePosixPath("1.2.dcm")
    root.mkdir()
    (root / "1.2.dcm").write_bytes(b"previous complete copy")

    def broken_copy(fsrc: object, fdst: object, length: int = 0) -> None:
        fdst.write(b"partial")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError):
        write_instance(root, rel, src, offset, file_meta(CT, "1.2", EXPLICIT_LE, None))
    assert sorted(os.listdir(root)) == ["1.2.dcm"]
    assert (root / "1.2.dcm").read_bytes() == b"previous complete copy"


def test_odd_calling_ae_is_left_out_of_the_meta() -> None:
    """A calling AE title that is not a valid AE does not make the meta unwritable."""
    meta = file_meta(CT, "1.2", EXPLICIT_LE, "BAD\\AE\x01")
    assert "SourceApplicationEntityTitle" not in meta
    assert encode_meta(meta)[128:132] == b"DICM"


def test_output_dir_is_created_and_checked(tmp_path: Path) -> None:
    """Missing dirs are created; a path through a regular file is a ConfigError."""
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create output directory"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(ConfigError, match="not a directory"):
        check_output_dir(tmp_path / "file")


@pytest.mark.parametrize("source_ae", ["SENDER", "ODD", None, "BAD\\AE\x01"])
def test_the_receivers_own_meta_is_the_bytes_pydicom_writes(source_ae: str | None) -> None:
    """migrator scp writes its File Meta without pydicom (incoming.meta_bytes): the same
    bytes as pydicom's, for even and odd values, with and without a (valid) source AE."""
    from migrator.scp.incoming import meta_bytes

    for sop in ("1.2.3.4.5", "1.2.3.4"):
        mine = meta_bytes(CT, sop, EXPLICIT_LE, source_ae or "")
        assert mine == encode_meta(file_meta(CT, sop, EXPLICIT_LE, source_ae))


def test_an_output_directory_removed_while_receiving_is_made_again(tmp_path: Path) -> None:
    """Someone clears OUTPUT while the receiver runs: the next instance for a study
    whose directory was checked before still lands (the directory is made again)."""
    import shutil

    from migrator.scp.incoming import IncomingFile, Placer

    placer = Placer(tmp_path)
    rel = PurePosixPath("1.2/1.3/1.2.3.dcm")
    for _ in range(2):
        incoming = IncomingFile(str(placer.root), "1.2.3", b"meta")
        incoming.write(memoryview(b"dataset"))
        incoming.close()
        final, _ = placer.place(incoming.path, rel.parts)
        assert Path(final).read_bytes() == b"metadataset"
        shutil.rmtree(tmp_path / "1.2")
    assert os.listdir(tmp_path) == []  # no .part left behind


def _received(tmp_path: Path, path: Path, cut: int = 0) -> tuple[Any, Any, int]:
    """(the file's header, the header ``IncomingFile`` reads of its dataset as received in
    the file's syntax, less its last ``cut`` bytes; the length of the File Meta the
    receiver wrote before it)."""
    from migrator.dicomfile.inspect import inspect_file
    from migrator.scp.incoming import IncomingFile, meta_bytes

    header = inspect_file(str(path))
    dataset = path.read_bytes()[header.dataset_offset : header.size - cut]
    syntax, sop_class = header.transfer_syntax, header.sop_class_uid
    meta = meta_bytes(sop_class, header.sop_instance_uid, syntax, "SENDER")
    incoming = IncomingFile(str(tmp_path), header.sop_instance_uid, meta, syntax=syntax)
    incoming.write(memoryview(dataset))
    incoming.close()
    try:
        return header, incoming.header(), len(meta)
    finally:
        incoming.discard()


def test_the_received_header_is_the_files_header_in_every_syntax(tmp_path: Path) -> None:
    """The receiver reads a dataset's UIDs without parsing the File Meta it wrote itself
    (``inspect_dataset``, asked directly here: it must answer, not leave it to the general
    path): the same UIDs as the whole file's, for every syntax of the mixed corpus but a
    deflated one (which only the general path reads)."""
    from migrator.dicomfile.inspect import inspect_dataset, inspect_file
    from migrator.synth import write_mixed_corpus

    syntaxes = set()
    for path in write_mixed_corpus(tmp_path / "in", seed=7):
        expected = inspect_file(str(path))
        if not expected.has_meta:
            continue
        syntaxes.add(expected.transfer_syntax)
        dataset = path.read_bytes()[expected.dataset_offset :]
        meta = (200, expected.sop_instance_uid)
        got = inspect_dataset(dataset, len(dataset), expected.transfer_syntax, meta)
        assert got is not None, path.name
        assert (got.sop_instance_uid, got.study_uid, got.series_uid) == (
            expected.sop_instance_uid,
            expected.study_uid,
            expected.series_uid,
        ), path.name
        assert got.size == 200 + len(dataset)
    assert len(syntaxes) >= 4, syntaxes


def _verdict(call: Any) -> str:
    try:
        found = call()
    except Exception as exc:  # the verdict is the error's kind
        return type(exc).__name__
    return f"ok {found.sop_instance_uid} {found.study_uid} {found.series_uid}"


def test_a_damaged_received_dataset_gets_the_verdict_of_the_file_it_makes(
    tmp_path: Path,
) -> None:
    """Every file of the mixed corpus, received cut short at several points or with a
    length field broken: the receiver's quick read refuses exactly what reading the file
    it writes refuses (small compressed datasets walked in memory included)."""
    from migrator.dicomfile.inspect import inspect_bytes, inspect_file
    from migrator.scp.incoming import IncomingFile, meta_bytes
    from migrator.synth import write_mixed_corpus

    refused = 0
    for path in write_mixed_corpus(tmp_path / "in", seed=7):
        header = inspect_file(str(path))
        if not header.has_meta or header.size > 2_000_000:
            continue
        whole = path.read_bytes()[header.dataset_offset :]
        variants = [whole[: len(whole) - cut] for cut in (1, 100, len(whole) // 3)]
        broken = bytearray(whole)
        broken[len(whole) // 2 : len(whole) // 2 + 4] = b"\xff\xff\xff\x7f"
        variants.append(bytes(broken))
        syntax = header.transfer_syntax
        for n, dataset in enumerate(variants):
            meta = meta_bytes(header.sop_class_uid, header.sop_instance_uid, syntax, "SENDER")
            incoming = IncomingFile(str(tmp_path), header.sop_instance_uid, meta, syntax=syntax)
            incoming.write(memoryview(dataset))
            incoming.close()
            try:
                mine = _verdict(incoming.header)
                written = _verdict(functools.partial(inspect_file, incoming.path))
                in_memory = _verdict(functools.partial(inspect_bytes, meta + dataset))
            finally:
                incoming.discard()
            assert mine == written == in_memory, (path.name, n)
            refused += not mine.startswith("ok")
    assert refused >= 10  # the variants did damage the files


@pytest.mark.parametrize("size", ["tiny", "small"])  # all kept in memory, or not
def test_a_received_dataset_cut_inside_its_pixel_data_is_refused(tmp_path: Path, size: str) -> None:
    """The receiver's quick header read runs the same damage checks as a file's: a dataset
    whose Pixel Data is shorter than the image is unreadable (the receiver answers 0xC000)."""
    from migrator.dicomfile.header import TruncatedError
    from migrator.synth import write_corpus

    (path,) = write_corpus(tmp_path / "in", count=1, size=size, seed=3)
    _, whole, _ = _received(tmp_path, path)
    assert whole.sop_instance_uid
    with pytest.raises(TruncatedError):
        _received(tmp_path, path, cut=100)


def test_a_dataset_in_a_thousand_tiny_pieces_is_written_whole(tmp_path: Path) -> None:
    """writev takes at most 1024 buffers: a dataset arriving in 3,000 one-byte pieces
    (--max-pdu 1024 senders, a hostile peer) is still written, byte for byte."""
    from migrator.scp.incoming import IncomingFile

    data = bytes(range(256)) * 12
    incoming = IncomingFile(str(tmp_path), "1.2.3", b"meta")
    for i in range(3000):
        incoming.write(memoryview(data)[i : i + 1])
    incoming.close()
    assert Path(incoming.path).read_bytes() == b"meta" + data[:3000]
    incoming.discard()
