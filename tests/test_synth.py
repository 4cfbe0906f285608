"""Unit tests for migrator.synth: sizes, round trips, encodings and determinism (no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from migrator import synth

UNCOMPRESSED = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("ts", UNCOMPRESSED)
@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("CT", {}),
        ("MR", {"rows": 33, "cols": 17}),
        ("SC", {"bits": 8, "samples": 3, "rows": 15, "cols": 15}),  # odd length → pad byte
        ("DX", {}),
        ("US", {"bits": 8, "frames": 3}),
        ("MF", {"frames": 4}),
    ],
)
def test_written_file_reads_back_equal_to_generating_dataset(
    tmp_path: Path, ts: UID, kind: str, options: dict[str, int]
) -> None:
    """What pydicom reads back equals what make_dataset built, pixels included."""
    ds = synth.make_dataset(kind, transfer_syntax=ts, **options)  # type: ignore[arg-type]
    path = synth.write_dataset(ds, tmp_path / "x.dcm")
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ts
    assert back == ds
    expected = back.Rows * back.Columns * back.get("NumberOfFrames", 1) * back.SamplesPerPixel
    assert back.pixel_array.size == expected
    assert back.pixel_array.max() < 2**back.BitsStored


def test_pixel_values_survive_big_endian(tmp_path: Path) -> None:
    """Big-endian pixel bytes decode to the same values as the little-endian file."""
    le = synth.make_dataset("CT", transfer_syntax=ExplicitVRLittleEndian)
    be = synth.make_dataset("CT", transfer_syntax=ExplicitVRBigEndian)
    synth.write_dataset(le, tmp_path / "le.dcm")
    synth.write_dataset(be, tmp_path / "be.dcm")
    a = pydicom.dcmread(tmp_path / "le.dcm").pixel_array
    b = pydicom.dcmread(tmp_path / "be.dcm").pixel_array
    assert np.array_equal(a, b)
    assert le.PixelData != be.PixelData


@pytest.mark.parametrize("ts", [JPEG2000Lossless, RLELossless])
def test_compressed_syntaxes_are_lossless(tmp_path: Path, ts: UID) -> None:
    """J2K and RLE files decode to the native pixels and keep the requested SOP UID."""
    native = synth.make_dataset("MR").pixel_array
    ds = synth.make_dataset("MR", transfer_syntax=ts, sop_uid="1.2.3.4")
    back = pydicom.dcmread(synth.write_dataset(ds, tmp_path / "c.dcm"))
    assert back.file_meta.TransferSyntaxUID == ts
    assert back.SOPInstanceUID == "1.2.3.4"
    assert np.array_equal(back.pixel_array, native)


def test_unsupported_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        synth.make_dataset("XX")
    with pytest.raises(ValueError, match="bits"):
        synth.make_dataset(bits=12)
    with pytest.raises(ValueError, match="transfer syntax"):
        synth.make_dataset(transfer_syntax="1.2.840.10008.1.2.4.50")


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_no_meta_file_has_no_preamble_and_reads_with_force(tmp_path: Path, ts: UID) -> None:
    """Dataset-only files start with the first element and decode in the given syntax."""
    ds = synth.make_dataset("CT", transfer_syntax=ts)
    path = synth.write_dataset(ds, tmp_path / "n.dcm", no_meta=True)
    raw = path.read_bytes()
    assert b"DICM" not in raw[:200]
    first_group = raw[:2]
    assert first_group == (b"\x08\x00" if ts.is_little_endian else b"\x00\x08")
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)
    back = pydicom.dcmread(path, force=True)
    assert "TransferSyntaxUID" not in back.file_meta
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.PixelData == ds.PixelData
    assert hasattr(ds, "file_meta")  # the caller's dataset keeps its File Meta


def test_big_endian_file_meta_says_big_endian(tmp_path: Path) -> None:
    ds = synth.make_dataset("MR", transfer_syntax=ExplicitVRBigEndian)
    path = synth.write_dataset(ds, tmp_path / "be.dcm")
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRBigEndian


def test_same_seed_gives_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = synth.write_corpus(tmp_path / "a", count=12, seed=7)
    b = synth.write_corpus(tmp_path / "b", count=12, seed=7)
    c = synth.write_corpus(tmp_path / "c", count=12, seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert synth.make_dataset(seed=1) == synth.make_dataset(seed=1)


@pytest.mark.parametrize("ts", UNCOMPRESSED)
def test_corpus_fast_path_matches_write_dataset_byte_for_byte(tmp_path: Path, ts: UID) -> None:
    """The template writer used for corpora produces exactly what write_dataset would."""
    paths = synth.write_corpus(
        tmp_path / "c", count=6, studies=2, series_per_study=2, kind="CT", transfer_syntax=ts
    )
    for i, path in enumerate(paths):
        r = pydicom.dcmread(path)
        ds = synth.make_dataset(
            "CT",
            study_uid=r.StudyInstanceUID,
            series_uid=r.SeriesInstanceUID,
            sop_uid=r.SOPInstanceUID,
            transfer_syntax=ts,
            patient_id=r.PatientID,
            instance_number=i + 1,
            series_number=r.SeriesNumber,
        )
        expected = synth.write_dataset(ds, tmp_path / "ref.dcm").read_bytes()
        assert path.read_bytes() == expected, f"file {i} differs"


def test_corpus_hierarchy_and_order(tmp_path: Path) -> None:
    """Files come in study/series order, with unique SOP UIDs, one patient per study."""
    paths = synth.write_corpus(tmp_path, count=20, studies=3, series_per_study=2)
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    rows = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    keys = [(r.StudyInstanceUID, r.SeriesInstanceUID) for r in rows]
    assert len(set(keys)) == 6
    # each (study, series) is one contiguous run
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    assert len(runs) == 6
    assert len({r.SOPInstanceUID for r in rows}) == 20
    assert len({r.PatientID for r in rows}) == 3
    assert [r.InstanceNumber for r in rows] == list(range(1, 21))


@pytest.mark.parametrize(
    ("size", "low", "high"),
    [("tiny", 8_000, 12_000), ("small", 500_000, 560_000), ("medium", 5_000_000, 5_300_000)],
)
def test_corpus_sizes_are_as_advertised(tmp_path: Path, size: str, low: int, high: int) -> None:
    (path,) = synth.write_corpus(tmp_path, count=1, size=size)
    assert low <= path.stat().st_size <= high


def test_large_corpus_file_is_multiframe_near_60_mb(tmp_path: Path) -> None:
    (path,) = synth.write_corpus(tmp_path, count=1, size="large")
    assert 55_000_000 <= path.stat().st_size <= 65_000_000
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(ds.NumberOfFrames) > 1


def test_mixed_corpus_covers_every_case(tmp_path: Path) -> None:
    """Each acceptance case is present, with Study/Series UIDs and distinct SOP UIDs."""
    paths = synth.write_mixed_corpus(tmp_path)
    by_name = {p.name: p for p in paths}
    syntaxes: dict[str, str | None] = {}
    sops = set()
    for p in paths:
        ds = pydicom.dcmread(p, force=True, stop_before_pixels=True)
        assert ds.StudyInstanceUID and ds.SeriesInstanceUID
        sops.add(ds.SOPInstanceUID)
        syntaxes[p.name] = ds.file_meta.get("TransferSyntaxUID")  # empty meta when dataset-only
    assert len(sops) == len(paths)
    assert syntaxes["ct_implicit.dcm"] == ImplicitVRLittleEndian
    assert syntaxes["mr_bigendian.dcm"] == ExplicitVRBigEndian
    assert syntaxes["mr_j2k.dcm"] == JPEG2000Lossless
    assert syntaxes["nometa_implicit.dcm"] is None
    assert syntaxes["nometa_bigendian.dcm"] is None
    assert by_name["dx_10mb.dcm"].stat().st_size > 9_500_000
    assert by_name["multiframe_55mb.dcm"].stat().st_size > 50 * 1024 * 1024
    modalities = {
        pydicom.dcmread(by_name[n], stop_before_pixels=True).SOPClassUID
        for n in ("ct.dcm", "mr.dcm", "sc_rgb.dcm")
    }
    assert len(modalities) == 3


def test_many_contexts_corpus_has_more_than_128_pairs(tmp_path: Path) -> None:
    paths = synth.write_many_contexts_corpus(tmp_path)
    pairs = set()
    for p in paths:
        ds = pydicom.dcmread(p)
        assert ds.StudyInstanceUID and ds.SeriesInstanceUID
        pairs.add((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID))
    assert len(pairs) >= 129
    assert len(pairs) == len(paths)


def test_many_contexts_classes_are_storage_classes_orthanc_accepts() -> None:
    from pynetdicom.sop_class import _STORAGE_CLASSES

    classes = synth.many_contexts_sop_classes()
    assert set(classes) <= set(_STORAGE_CLASSES.values())
    assert "1.2.840.10008.5.1.4.1.1.6.3" not in classes  # Photoacoustic: too new for Orthanc
    with pytest.raises(ValueError):
        synth.write_many_contexts_corpus("/nonexistent", pairs=10_000)


def test_deflated_file_reads_back_equal(tmp_path: Path) -> None:
    ds = synth.make_dataset("CT", transfer_syntax=DeflatedExplicitVRLittleEndian)
    path = synth.write_dataset(ds, tmp_path / "d.dcm")
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert back == ds
    with pytest.raises(ValueError, match="dataset-only"):
        synth.write_dataset(ds, tmp_path / "n.dcm", no_meta=True)
