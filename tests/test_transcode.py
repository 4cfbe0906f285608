"""Transcoding to an uncompressed syntax, with the real codecs (pylibjpeg, pydicom RLE)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

from migrator.errors import ConfigError, PermanentError, SourceError
from migrator.transcode import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    UNCOMPRESSED,
    LossyDecompressionRefused,
    TranscodeError,
    choose_target,
    dataset_is_lossy,
    is_compressed,
    is_encapsulated,
    is_lossy_syntax,
    transcode_bytes,
    transcode_file,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
DEFLATED = "1.2.840.10008.1.2.1.99"


def _local(name: str) -> str:
    # download=False: there is no network here; every file used is bundled with pydicom
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not available locally"
    return str(path)


def _read(path: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _parse(data: bytes, ts: str) -> Dataset:
    """Parse PDV-style dataset bytes (no preamble, no meta) as the receiver would."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    return ds


def _pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


# --- classification --------------------------------------------------------------------------


def test_uncompressed_constants_and_is_compressed() -> None:
    assert UNCOMPRESSED == (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)
    for ts in UNCOMPRESSED:
        assert not is_compressed(ts)
        assert not is_encapsulated(ts)
    for ts in (JPEG_BASELINE, J2K_LOSSLESS, RLE, JPEG_LS_LOSSLESS):
        assert is_compressed(ts)
        assert is_encapsulated(ts)
    # deflate compresses the whole dataset, not the pixel data
    assert is_compressed(DEFLATED)
    assert not is_encapsulated(DEFLATED)
    # unknown / private syntax: cannot be sent to a peer that accepts only plain syntaxes
    assert is_compressed("1.2.3.4.5.6")
    assert is_encapsulated("1.2.3.4.5.6")


@pytest.mark.parametrize(
    ("ts", "lossy"),
    [
        (JPEG_BASELINE, True),
        (JPEG_EXTENDED, True),
        (JPEG_LS_NEAR, True),
        (J2K, True),
        ("1.2.840.10008.1.2.4.203", True),  # HTJ2K (lossy-capable)
        ("1.2.840.10008.1.2.4.102", True),  # H.264
        (JPEG_LOSSLESS_SV1, False),
        (JPEG_LS_LOSSLESS, False),
        (J2K_LOSSLESS, False),
        (RLE, False),
        (DEFLATED, False),
        (EXPLICIT_LE, False),
    ],
)
def test_is_lossy_syntax(ts: str, lossy: bool) -> None:
    assert is_lossy_syntax(ts) is lossy


def _ds(flag: str | None) -> Dataset:
    ds = Dataset()
    if flag is not None:
        ds.LossyImageCompression = flag
    return ds


@pytest.mark.parametrize(
    ("ts", "flag", "lossy"),
    [
        (JPEG_BASELINE, None, True),  # inherently lossy, flag absent
        (JPEG_BASELINE, "00", True),  # a DCT codestream cannot be lossless whatever it says
        (JPEG_EXTENDED, "01", True),
        (J2K, None, True),  # possibly lossy, unknown → lossy (fail safe)
        (J2K, "01", True),
        (J2K, "00", False),  # possibly lossy, flag proves lossless
        (JPEG_LS_NEAR, None, True),
        (JPEG_LS_NEAR, "00", False),
        (J2K_LOSSLESS, None, False),
        (J2K_LOSSLESS, "01", True),  # was lossy once: stays lossy (PS3.3 C.7.6.1.1.5)
        (RLE, "00", False),
        (EXPLICIT_LE, "01", True),
        (EXPLICIT_LE, None, False),
    ],
)
def test_dataset_is_lossy_rule(ts: str, flag: str | None, lossy: bool) -> None:
    assert dataset_is_lossy(_ds(flag), ts) is lossy


def test_dataset_is_lossy_reads_ts_from_file_meta() -> None:
    assert dataset_is_lossy(_read(_local("SC_rgb_jpeg_dcmtk.dcm")))
    assert dataset_is_lossy(_read(_local("JPEG2000.dcm")))  # .91 with flag "01"
    assert not dataset_is_lossy(_read(_local("MR_small_jp2klossless.dcm")))
    assert not dataset_is_lossy(_ds(None))  # no meta, no flag: nothing says lossy


def test_choose_target_preference() -> None:
    assert choose_target([IMPLICIT_LE, EXPLICIT_BE, EXPLICIT_LE]) == EXPLICIT_LE
    assert choose_target([EXPLICIT_BE, IMPLICIT_LE, JPEG_BASELINE]) == IMPLICIT_LE
    assert choose_target([EXPLICIT_BE]) == EXPLICIT_BE
    assert choose_target([JPEG_BASELINE, RLE]) is None
    assert choose_target([]) is None
    assert choose_target(iter([IMPLICIT_LE])) == IMPLICIT_LE


# --- lossless round trips ------------------------------------------------------------------


LOSSLESS_FILES = [
    "MR_small_jp2klossless.dcm",  # J2K lossless (.90), openjpeg
    "MR_small_RLE.dcm",  # RLE, pydicom's own decoder
    "SC_rgb_rle.dcm",  # RLE, RGB 8-bit
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (.80), libjpeg
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1 (.70), libjpeg
    "GDCMJ2K_TextGBR.dcm",  # J2K lossless, YBR_RCT → RGB (reversible transform)
    "image_dfl.dcm",  # deflated explicit LE: inflated by the reader, just re-encoded
]


@pytest.mark.parametrize("target", UNCOMPRESSED)
@pytest.mark.parametrize("name", LOSSLESS_FILES)
def test_lossless_roundtrip_pixels_equal(name: str, target: str) -> None:
    path = _local(name)
    original = _read(path)
    data = transcode_file(path, target, allow_lossy=False)

    # dataset bytes only: no preamble, no "DICM", no group 0002 — it starts with group 0008
    assert b"DICM" not in data[:132]
    tag_group = int.from_bytes(data[:2], "little" if target != EXPLICIT_BE else "big")
    assert tag_group == 0x0008

    back = _parse(data, target)
    assert "TransferSyntaxUID" not in back  # no meta element leaked into the dataset
    assert back.SOPInstanceUID == original.SOPInstanceUID  # never a new instance
    assert back.SOPClassUID == original.SOPClassUID
    assert np.array_equal(_pixels(back), _pixels(original))
    assert back.Rows == original.Rows and back.Columns == original.Columns
    # uncompressed pixel data has a defined length (PS3.5 A.4 applies only to encapsulated)
    assert not back["PixelData"].is_undefined_length
    assert "LossyImageCompression" not in back or back.LossyImageCompression == "00"


def test_explicit_le_is_exact_encoding_of_decoded_pixels() -> None:
    """The PixelData bytes are the decoded array in little-endian order, nothing else."""
    path = _local("MR_small_jp2klossless.dcm")
    expected = _pixels(_read(path)).astype("<i2" if _read(path).PixelRepresentation else "<u2")
    back = _parse(transcode_file(path, EXPLICIT_LE, allow_lossy=False), EXPLICIT_LE)
    assert back["PixelData"].VR == "OW"
    assert back.PixelData == expected.tobytes()


def test_big_endian_pixel_words_are_swapped() -> None:
    path = _local("MR_small_RLE.dcm")
    le = _parse(transcode_file(path, EXPLICIT_LE, allow_lossy=False), EXPLICIT_LE)
    be = _parse(transcode_file(path, EXPLICIT_BE, allow_lossy=False), EXPLICIT_BE)
    assert be.PixelData == np.frombuffer(le.PixelData, "<u2").astype(">u2").tobytes()
    assert np.array_equal(_pixels(be), _pixels(le))


def test_same_dataset_as_original_apart_from_pixels() -> None:
    path = _local("MR_small_jp2klossless.dcm")
    original = _read(path)
    back = _parse(transcode_file(path, IMPLICIT_LE, allow_lossy=False), IMPLICIT_LE)
    skip = {"PixelData"}
    for elem in original:
        if elem.keyword in skip or elem.tag.is_private:
            continue
        assert back[elem.tag].value == elem.value, elem.keyword


def test_transcode_bytes_equals_transcode_file() -> None:
    path = _local("MR_small_RLE.dcm")
    assert transcode_bytes(
        Path(path).read_bytes(), EXPLICIT_LE, allow_lossy=False
    ) == transcode_file(path, EXPLICIT_LE, allow_lossy=False)


def test_uncompressed_source_is_reencoded() -> None:
    path = _local("MR_small_bigendian.dcm")
    back = _parse(transcode_file(path, EXPLICIT_LE, allow_lossy=False), EXPLICIT_LE)
    assert np.array_equal(_pixels(back), _pixels(_read(path)))


def test_dataset_only_input_with_source_ts() -> None:
    """A file without File Meta: the caller names its syntax."""
    path = _local("MR_small_RLE.dcm")
    ds = _read(path)
    out = transcode_file(path, EXPLICIT_LE, allow_lossy=False)
    # feed the explicit-LE dataset bytes back as a bare dataset, say it is explicit LE
    again = transcode_bytes(out, IMPLICIT_LE, allow_lossy=False, source_ts=EXPLICIT_LE)
    assert np.array_equal(_pixels(_parse(again, IMPLICIT_LE)), _pixels(ds))


# --- lossy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
        "JPEG2000.dcm",  # J2K .91 with Lossy Image Compression 01
        "JPEGLSNearLossless_16.dcm",  # JPEG-LS .81, flag absent → treated as lossy
    ],
)
def test_lossy_refused_without_allow_lossy(name: str) -> None:
    path = _local(name)
    with pytest.raises(LossyDecompressionRefused) as info:
        transcode_file(path, EXPLICIT_LE, allow_lossy=False)
    assert isinstance(info.value, PermanentError)
    ts = str(_read(path).file_meta.TransferSyntaxUID)
    assert ts in str(info.value)


@pytest.mark.parametrize(
    "name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_small_odd_jpeg.dcm"]
)
def test_jpeg_baseline_allowed_is_rgb(name: str) -> None:
    path = _local(name)
    original = _read(path)
    assert original.PhotometricInterpretation.startswith("YBR")
    back = _parse(transcode_file(path, EXPLICIT_LE, allow_lossy=True), EXPLICIT_LE)
    # lossy YCbCr → RGB (DCMTK dcmdjpeg's default), same values as pydicom's pixel_array
    assert back.PhotometricInterpretation == "RGB"
    assert back.PlanarConfiguration == 0
    assert back.LossyImageCompression == "01"
    assert back.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(_pixels(back), _pixels(original))
    assert len(back.PixelData) == back.Rows * back.Columns * 3 + (back.Rows * back.Columns) % 2


def test_inherently_lossy_without_flag_gets_flagged() -> None:
    path = _local("SC_rgb_jpeg_dcmtk.dcm")
    ds = _read(path)
    del ds.LossyImageCompression
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    back = _parse(transcode_bytes(buf.getvalue(), EXPLICIT_LE, allow_lossy=True), EXPLICIT_LE)
    assert back.LossyImageCompression == "01"
    assert back.LossyImageCompressionMethod == "ISO_10918_1"


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPEGLSNearLossless_16.dcm"])
def test_possibly_lossy_allowed(name: str) -> None:
    path = _local(name)
    back = _parse(transcode_file(path, IMPLICIT_LE, allow_lossy=True), IMPLICIT_LE)
    assert np.array_equal(_pixels(back), _pixels(_read(path)))


def test_j2k_91_flagged_lossless_is_not_refused() -> None:
    ds = _read(_local("JPEG2000.dcm"))
    ds.LossyImageCompression = "00"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    back = _parse(transcode_bytes(buf.getvalue(), EXPLICIT_LE, allow_lossy=False), EXPLICIT_LE)
    assert np.array_equal(_pixels(back), _pixels(ds))


# --- failures ------------------------------------------------------------------------------


def _corrupt(name: str, how: str) -> bytes:
    ds = _read(_local(name))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    if how == "truncate":
        bad = frame[: len(frame) // 2]
    elif how == "head":
        bad = frame[:16]
    else:  # "zero": a valid start, then zeros
        bad = frame[:8] + bytes(len(frame) - 8)
    ds.PixelData = encapsulate([bad + b"\0" * (len(bad) % 2)])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("how", ["truncate", "head", "zero"])
@pytest.mark.parametrize(
    ("name", "ts"),
    [
        ("MR_small_jp2klossless.dcm", J2K_LOSSLESS),
        ("MR_small_RLE.dcm", RLE),
        # libjpeg decodes truncated JPEG-LS / lossless JPEG without complaint (garbage
        # pixels): only our end-of-image check catches these
        ("MR_small_jpeg_ls_lossless.dcm", JPEG_LS_LOSSLESS),
        ("SC_rgb_jpeg_gdcm.dcm", JPEG_LOSSLESS_SV1),
    ],
)
def test_corrupt_codestream_is_permanent_error(name: str, ts: str, how: str) -> None:
    with pytest.raises(TranscodeError) as info:
        transcode_bytes(_corrupt(name, how), EXPLICIT_LE, allow_lossy=False)
    assert isinstance(info.value, PermanentError)
    assert ts in str(info.value)


def test_undecodable_jpeg_names_the_syntax() -> None:
    # pydicom's JPEG-lossy.dcm (12-bit extended) is rejected by libjpeg 2.5.0 itself
    with pytest.raises(TranscodeError, match=JPEG_EXTENDED):
        transcode_file(_local("JPEG-lossy.dcm"), EXPLICIT_LE, allow_lossy=True)


def test_unknown_syntax_is_permanent_error() -> None:
    ds = _read(_local("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.99")
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(PermanentError, match=r"1\.2\.3\.4\.99"):
        transcode_bytes(buf.getvalue(), EXPLICIT_LE, allow_lossy=True)


def test_target_must_be_uncompressed() -> None:
    with pytest.raises(ConfigError, match="JPEG Baseline"):
        transcode_file(_local("MR_small_RLE.dcm"), JPEG_BASELINE, allow_lossy=True)


def test_not_dicom_and_missing_file_are_source_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(SourceError):
        transcode_file(str(junk), EXPLICIT_LE, allow_lossy=False)
    with pytest.raises(SourceError):
        transcode_file(str(tmp_path / "missing.dcm"), EXPLICIT_LE, allow_lossy=False)
