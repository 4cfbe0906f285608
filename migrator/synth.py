"""Deterministic synthetic DICOM corpora for the demo, the benchmarks and the tests.

Everything here is a pure function of its arguments: the same seed gives the same UIDs, the same
pixels and the same bytes on disk, so benchmark runs and test failures reproduce. UIDs live under
the ``2.25`` root (PS3.5 §B.2: a UUID written as one decimal integer), derived with uuid5 from
the seed and the object's place in the corpus, so no organisational root is needed.

Pixel data is noise from a numpy RNG, but only one small block is drawn per (seed, depth); every
image is that block rotated by an instance-dependent offset and tiled. That keeps 2000 files or a
60 MB multi-frame object cheap to make while neighbouring files still differ.

Writing (pydicom 3.0.2):

* Implicit VR LE, Explicit VR LE and Explicit VR BE are written as the File Meta says
  (``enforce_file_format=True``). pydicom never byte-swaps raw ``PixelData``, so for big endian
  the pixel bytes are generated big endian here.
* Compressed: JPEG 2000 Lossless through pylibjpeg-openjpeg (needs images of at least 32 × 32:
  smaller ones make ``opj_start_compress()`` fail with the default decomposition levels), RLE
  Lossless through pydicom's own encoder, Deflated Explicit VR LE through pydicom's writer.
* Dataset-only files (no preamble, no File Meta, PS3.10 §7.1 absent) with ``no_meta=True``.
"""

from __future__ import annotations

import copy
import math
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset as _pydicom_write_dataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

__all__ = [
    "KINDS",
    "NATIVE_TRANSFER_SYNTAXES",
    "SIZES",
    "CorpusSize",
    "derived_uid",
    "make_dataset",
    "many_contexts_sop_classes",
    "write_corpus",
    "write_dataset",
    "write_many_contexts_corpus",
    "write_mixed_corpus",
]

# Fixed namespace: changing it changes every UID of every corpus.
_UID_NAMESPACE = uuid.UUID("6f1c2a4e-8d0b-5b7e-9a55-0c9d3e1f2a77")

# Storage SOP Class UIDs (PS3.4 Annex B.5).
_CT = "1.2.840.10008.5.1.4.1.1.2"
_MR = "1.2.840.10008.5.1.4.1.1.4"
_SC = "1.2.840.10008.5.1.4.1.1.7"
_MF_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
_MF_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
_MF_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
_DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
_CR = "1.2.840.10008.5.1.4.1.1.1"
_US = "1.2.840.10008.5.1.4.1.1.6.1"
_US_MF = "1.2.840.10008.5.1.4.1.1.3.1"

#: Transfer syntaxes written without pixel encoding.
NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
# Compressed syntaxes this module can encode, with the pydicom encoding plugin that works.
_ENCODERS: dict[str, str] = {JPEG2000Lossless: "pylibjpeg", RLELossless: "pydicom"}

# Acquisition date and time are fixed: a clock would break byte-for-byte determinism.
_DATE = "20240101"
_TIME = "120000"


@dataclass(frozen=True)
class _Kind:
    sop_class: str
    modality: str
    image_type: tuple[str, ...]


#: Accepted ``kind`` values. ``MF`` is always a multi-frame Secondary Capture object; any other
#: kind with ``frames > 1`` becomes the multi-frame SC class for its depth (US: US Multi-frame).
KINDS: dict[str, _Kind] = {
    "CT": _Kind(_CT, "CT", ("ORIGINAL", "PRIMARY", "AXIAL")),
    "MR": _Kind(_MR, "MR", ("ORIGINAL", "PRIMARY", "OTHER")),
    "SC": _Kind(_SC, "OT", ("DERIVED", "SECONDARY")),
    "DX": _Kind(_DX, "DX", ("ORIGINAL", "PRIMARY")),
    "CR": _Kind(_CR, "CR", ("ORIGINAL", "PRIMARY")),
    "US": _Kind(_US, "US", ("ORIGINAL", "PRIMARY")),
    "MF": _Kind(_MF_WORD_SC, "OT", ("DERIVED", "SECONDARY")),
}


def derived_uid(*parts: object) -> str:
    """A ``2.25.<int>`` UID that depends only on ``parts`` (at most 44 characters)."""
    name = "/".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _sop_class(kind: str, frames: int, bits: int, samples: int) -> str:
    spec = KINDS[kind]
    if kind == "US":
        return _US_MF if frames > 1 else _US
    if kind == "MF" or frames > 1:
        if samples == 3:
            return _MF_COLOR_SC
        return _MF_BYTE_SC if bits == 8 else _MF_WORD_SC
    return spec.sop_class


_BLOCK_BYTES = 128 * 1024  # one RNG draw per (seed, depth); images tile it


@lru_cache(maxsize=16)
def _noise_block(seed: int, bits: int) -> bytes:
    """Little-endian noise; 16-bit values stay below 2**12 to match BitsStored 12."""
    rng = np.random.default_rng(seed)
    if bits == 8:
        return rng.integers(0, 256, _BLOCK_BYTES, dtype=np.uint8).tobytes()
    return rng.integers(0, 4096, _BLOCK_BYTES // 2, dtype="<u2").tobytes()


def _pixel_bytes(seed: int, bits: int, nbytes: int, offset: int, big_endian: bool) -> bytes:
    block = _noise_block(seed, bits)
    # Rotate by a whole number of samples so 16-bit values stay aligned.
    step = bits // 8
    off = (offset * 2654435761 * step) % len(block)  # Knuth's multiplicative hash spreads it
    off -= off % step
    rotated = block[off:] + block[:off]
    data = (rotated * (nbytes // len(rotated) + 1))[:nbytes]
    if big_endian and bits == 16:
        # pydicom writes raw PixelData as is, so the bytes themselves must be big endian.
        data = np.frombuffer(data, dtype="<u2").astype(">u2").tobytes()
    return data


# Elements that differ between the instances of one series (see _set_instance_elements).
_INSTANCE_TAGS = frozenset({0x00080018, 0x00200013, 0x00200032, 0x7FE00010})


def _set_instance_elements(ds: Dataset, seed: int, instance_number: int, ts: UID) -> None:
    """Set InstanceNumber, the slice position and PixelData: all that varies within a series
    besides the SOP Instance UID. The pixel module must already be set."""
    ds.InstanceNumber = instance_number
    if "ImagePositionPatient" in ds:
        ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    bits = int(ds.BitsAllocated)
    frames = int(ds.get("NumberOfFrames", 1))
    nbytes = int(ds.Rows) * int(ds.Columns) * frames * int(ds.SamplesPerPixel) * (bits // 8)
    pixels = _pixel_bytes(seed, bits, nbytes, instance_number, ts == ExplicitVRBigEndian)
    if len(pixels) % 2:
        pixels += b"\0"  # values have even length (PS3.5 §7.1.1)
    # Implicit VR Pixel Data is always OW (PS3.5 §A.1); it is also what pydicom reads back.
    vr = "OW" if bits == 16 or ts == ImplicitVRLittleEndian else "OB"
    ds.add_new(0x7FE00010, vr, pixels)


def make_dataset(
    kind: str = "CT",
    *,
    rows: int = 64,
    cols: int = 64,
    frames: int = 1,
    bits: int = 16,
    samples: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    patient_id: str = "SYNTH0001",
    instance_number: int = 1,
    series_number: int = 1,
) -> Dataset:
    """One synthetic instance with the attributes a PACS needs and consistent pixel attributes.

    UIDs left as ``None`` are derived from the seed, the patient and the numbers, so equal
    arguments give equal datasets. ``transfer_syntax`` may be any of
    ``NATIVE_TRANSFER_SYNTAXES``, JPEG 2000 Lossless (rows and cols ≥ 32) or RLE Lossless;
    compressed pixel data is encoded here, and ``file_meta`` always says what to write.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    if samples not in (1, 3) or (samples == 3 and bits != 8):
        raise ValueError("samples must be 1, or 3 with bits=8 (RGB)")
    if rows < 1 or cols < 1 or frames < 1:
        raise ValueError("rows, cols and frames must be positive")
    ts = UID(transfer_syntax)
    if ts not in NATIVE_TRANSFER_SYNTAXES and ts not in _ENCODERS:
        raise ValueError(f"cannot write transfer syntax {ts} ({ts.name})")

    spec = KINDS[kind]
    sop_class = _sop_class(kind, frames, bits, samples)
    study_uid = study_uid or derived_uid("study", seed, patient_id)
    series_uid = series_uid or derived_uid("series", seed, study_uid, series_number)
    sop_uid = sop_uid or derived_uid("sop", seed, series_uid, instance_number)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(spec.image_type)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = _TIME
    ds.AccessionNumber = ""
    ds.Modality = spec.modality
    ds.Manufacturer = "pacs-migrator synth"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Synthetic {kind} study"
    ds.SeriesDescription = f"Synthetic {kind} series {series_number}"
    ds.PatientName = "SYNTH^PATIENT"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""

    if kind in ("CT", "MR"):
        # Image Plane module (PS3.3 §C.7.6.2), required by the CT and MR IODs.
        ds.FrameOfReferenceUID = derived_uid("for", seed, study_uid)
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]  # set per instance below
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
    if kind == "CT":
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
    elif kind == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500.0
        ds.EchoTime = 20.0
        ds.MagneticFieldStrength = 1.5
    elif kind in ("SC", "MF"):
        ds.ConversionType = "WSD"
    elif kind == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.15, 0.15]

    # Image Pixel module (PS3.3 §C.7.6.3); PixelData length follows from it exactly.
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1 or sop_class in (_MF_BYTE_SC, _MF_WORD_SC, _MF_COLOR_SC, _US_MF):
        ds.NumberOfFrames = frames
        # Multi-frame module (PS3.3 §C.7.6.6): frames are indexed by Frame Time.
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063

    _set_instance_elements(ds, seed, instance_number, ts)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts in _ENCODERS else ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if ts in _ENCODERS:
        # pydicom 3 would otherwise give the object a fresh random SOP Instance UID.
        ds.compress(ts, encoding_plugin=_ENCODERS[ts], generate_instance_uid=False)
    return ds


def write_dataset(ds: Dataset, path: str | Path, *, no_meta: bool = False) -> Path:
    """Write ``ds`` as a PS3.10 file in the syntax its File Meta names, or dataset-only.

    With ``no_meta`` the file holds only the dataset (no preamble, no ``DICM``, no group 0002),
    encoded in the File Meta's transfer syntax, which must then be uncompressed and not deflated.
    """
    path = Path(path)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if not no_meta:
        ds.save_as(path, enforce_file_format=True)
        return path
    if ts not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
        raise ValueError(f"a dataset-only file cannot use {ts.name}")
    bare = copy.copy(ds)  # shares the elements; only the file_meta attribute goes
    del bare.file_meta
    pydicom.dcmwrite(path, bare, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian)
    return path


def _encode(ds: Dataset, implicit_vr: bool, little_endian: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit_vr, little_endian
    _pydicom_write_dataset(fp, ds)
    return bytes(fp.getvalue())


class _TemplateWriter:
    """Writes the instances of one series from pre-encoded bytes of its shared elements.

    pydicom spends ~1.5 ms per file encoding ~45 elements and validating the File Meta; here
    only the elements in ``_INSTANCE_TAGS`` and the SOP Instance UID are encoded per file. The
    output is byte-identical to ``write_dataset`` (tests/test_synth.py checks it). Only for
    uncompressed, non-deflated syntaxes, where elements encode independently in tag order.
    """

    def __init__(self, template: Dataset) -> None:
        ts = UID(template.file_meta.TransferSyntaxUID)
        self._implicit, self._little = ts.is_implicit_VR, ts.is_little_endian
        meta = copy.deepcopy(template.file_meta)
        validate_file_meta(meta, enforce_standard=True)  # adds what dcmwrite would add
        if "FileMetaInformationGroupLength" in meta:
            del meta.FileMetaInformationGroupLength  # recomputed per file
        self._meta_runs = self._split(meta, frozenset({0x00020003}), False, True)
        self._body_runs = self._split(
            template, _INSTANCE_TAGS | {0x00080018}, self._implicit, self._little
        )

    @staticmethod
    def _split(
        ds: Dataset, varying: frozenset[int], implicit_vr: bool, little_endian: bool
    ) -> list[bytes | int]:
        """Encoded runs of constant elements, with the tag of each varying element between."""
        runs: list[bytes | int] = []
        static = Dataset()
        for elem in ds:  # iterates in ascending tag order, the order they are written in
            if elem.tag in varying:
                if len(static):
                    runs.append(_encode(static, implicit_vr, little_endian))
                    static = Dataset()
                runs.append(int(elem.tag))
            else:
                static.add(elem)
        if len(static):
            runs.append(_encode(static, implicit_vr, little_endian))
        return runs

    @staticmethod
    def _join(runs: list[bytes | int], ds: Dataset, implicit_vr: bool, little: bool) -> bytes:
        parts: list[bytes] = []
        for run in runs:
            if isinstance(run, bytes):
                parts.append(run)
            else:
                one = Dataset()
                one.add(ds[run])
                parts.append(_encode(one, implicit_vr, little))
        return b"".join(parts)

    def write(self, ds: Dataset, path: Path) -> Path:
        """Write ``ds``, which must equal the template outside ``_INSTANCE_TAGS`` and the UIDs."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
        rest = self._join(self._meta_runs, meta, False, True)
        # (0002,0000) UL: byte count of the rest of the File Meta group (PS3.10 §7.1).
        group_length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(rest))
        body = self._join(self._body_runs, ds, self._implicit, self._little)
        with open(path, "wb") as fh:
            fh.write(b"\0" * 128 + b"DICM" + group_length + rest)
            fh.write(body)
        return path


@dataclass(frozen=True)
class CorpusSize:
    """One benchmark corpus shape (BENCHMARKS.md)."""

    kind: str
    rows: int
    cols: int
    frames: int
    bits: int = 16


#: tiny ≈ 10 KB, small ≈ 0.5 MB, medium ≈ 5 MB, large ≈ 60 MB per file.
SIZES: dict[str, CorpusSize] = {
    "tiny": CorpusSize("SC", 64, 64, 1),
    "small": CorpusSize("CT", 512, 512, 1),
    "medium": CorpusSize("DX", 1600, 1600, 1),
    "large": CorpusSize("MF", 512, 512, 115),
}


def write_corpus(
    out_dir: str | Path,
    *,
    count: int,
    size: str = "tiny",
    rows: int | None = None,
    cols: int | None = None,
    frames: int | None = None,
    bits: int | None = None,
    kind: str | None = None,
    studies: int | None = None,
    series_per_study: int | None = None,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write ``count`` files ``000000.dcm``… in study, then series, then instance order.

    ``size`` picks a preset from ``SIZES``; ``rows``/``cols``/``frames``/``bits``/``kind``
    override it. Files are spread evenly over ``studies`` (default one per 100 files) of
    ``series_per_study`` series (default 2), one patient per study. Returns the paths in order.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    if count < 0:
        raise ValueError("count must not be negative")
    preset = SIZES[size]
    n_studies = max(1, studies if studies is not None else math.ceil(count / 100))
    n_series = max(1, series_per_study if series_per_study is not None else 2)
    buckets = max(1, min(n_studies * n_series, count))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    ts = UID(transfer_syntax)
    # Uncompressed syntaxes take the template shortcut; compressed files are built one by one.
    fast = ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)

    # Two corpora with the same seed but another shape must not share UIDs (a demo or a test
    # sending both would otherwise overwrite instances at the receiver).
    key = (seed, size, kind, rows, cols, frames, bits, str(ts))

    def build(i: int, study: int, series: int) -> Dataset:
        return make_dataset(
            kind or preset.kind,
            rows=rows or preset.rows,
            cols=cols or preset.cols,
            frames=frames or preset.frames,
            bits=bits or preset.bits,
            study_uid=derived_uid("corpus-study", *key, study),
            series_uid=derived_uid("corpus-series", *key, study, series),
            sop_uid=derived_uid("corpus-sop", *key, i),
            transfer_syntax=ts,
            seed=seed,
            patient_id=f"SYNTH{study + 1:04d}",
            instance_number=i + 1,
            series_number=series + 1,
        )

    paths: list[Path] = []
    current: tuple[int, Dataset, _TemplateWriter] | None = None  # (bucket, template, writer)
    for i in range(count):
        bucket = i * buckets // count
        study, series = divmod(bucket, n_series)
        path = out / f"{i:06d}.dcm"
        if not fast or current is None or current[0] != bucket:
            ds = build(i, study, series)
            if fast:
                current = (bucket, ds, _TemplateWriter(ds))
            paths.append(write_dataset(ds, path))
            continue
        _, ds, writer = current
        ds.SOPInstanceUID = derived_uid("corpus-sop", *key, i)
        _set_instance_elements(ds, seed, i + 1, ts)
        paths.append(writer.write(ds, path))
    return paths


def write_mixed_corpus(out_dir: str | Path, *, seed: int = 0) -> list[Path]:
    """The store command's acceptance corpus: one file per case, distinct SOP Instance UIDs.

    CT, MR, RGB SC, a ~10 MB DX, a > 50 MiB multi-frame, implicit VR LE, explicit VR BE,
    two dataset-only files (implicit LE, explicit BE) and a JPEG 2000 Lossless file. All share
    patient ``SYNTHMIX`` and carry Study and Series UIDs (Orthanc answers 0xA700 without them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = derived_uid("mixed-study", seed)
    cases: list[tuple[str, dict[str, object], bool]] = [
        ("ct.dcm", {"kind": "CT", "rows": 128, "cols": 128}, False),
        ("mr.dcm", {"kind": "MR", "rows": 128, "cols": 128}, False),
        ("sc_rgb.dcm", {"kind": "SC", "bits": 8, "samples": 3}, False),
        ("dx_10mb.dcm", {"kind": "DX", "rows": 2240, "cols": 2240}, False),
        ("multiframe_55mb.dcm", {"kind": "MF", "rows": 512, "cols": 512, "frames": 105}, False),
        ("ct_implicit.dcm", {"kind": "CT", "transfer_syntax": ImplicitVRLittleEndian}, False),
        ("mr_bigendian.dcm", {"kind": "MR", "transfer_syntax": ExplicitVRBigEndian}, False),
        ("nometa_implicit.dcm", {"kind": "CT", "transfer_syntax": ImplicitVRLittleEndian}, True),
        ("nometa_bigendian.dcm", {"kind": "MR", "transfer_syntax": ExplicitVRBigEndian}, True),
        ("mr_j2k.dcm", {"kind": "MR", "transfer_syntax": JPEG2000Lossless}, False),
    ]
    paths: list[Path] = []
    for number, (name, options, no_meta) in enumerate(cases, start=1):
        ds = make_dataset(
            seed=seed,
            patient_id="SYNTHMIX",
            study_uid=study,
            series_uid=derived_uid("mixed-series", seed, name),
            sop_uid=derived_uid("mixed-sop", seed, name),
            instance_number=number,
            series_number=number,
            **options,  # type: ignore[arg-type]
        )
        paths.append(write_dataset(ds, out / name, no_meta=no_meta))
    return paths


# Storage SOP classes that pynetdicom 3.0.4 lists but Orthanc 1.10.1 (DCMTK 3.6.7's list, with
# UnknownSopClassAccepted false) rejects with result 3: probed by proposing every class in
# pynetdicom's list. They are newer than DCMTK 3.6.7, so the corpus leaves them out.
_REJECTED_BY_ORTHANC_1_10: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.3",  # Photoacoustic Image
        "1.2.840.10008.5.1.4.1.1.9.1.4",  # General 32-bit ECG Waveform
        "1.2.840.10008.5.1.4.1.1.9.100.1",  # Waveform Presentation State
        "1.2.840.10008.5.1.4.1.1.9.100.2",  # Waveform Acquisition Presentation State
        "1.2.840.10008.5.1.4.1.1.11.12",  # Variable Modality LUT Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation
        "1.2.840.10008.5.1.4.1.1.66.8",  # Height Map Segmentation
        "1.2.840.10008.5.1.4.1.1.77.1.8",  # Confocal Microscopy Image
        "1.2.840.10008.5.1.4.1.1.77.1.9",  # Confocal Microscopy Tiled Pyramidal Image
        "1.2.840.10008.5.1.4.1.1.88.77",  # Waveform Annotation SR
        "1.2.840.10008.5.1.4.1.1.481.23",  # Enhanced RT Image
        "1.2.840.10008.5.1.4.1.1.481.24",  # Enhanced Continuous RT Image
        "1.2.840.10008.5.1.4.1.1.481.25",  # RT Patient Position Acquisition Instruction
    }
)


def many_contexts_sop_classes() -> list[str]:
    """Storage SOP Class UIDs usable with Orthanc 1.10.1, in pynetdicom's (stable) order."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    return [str(uid) for uid in _STORAGE_CLASSES.values() if uid not in _REJECTED_BY_ORTHANC_1_10]


# Two uncompressed syntaxes per class: every SCP accepts them, so a rejected context is never
# the reason a file fails.
_MANY_CONTEXTS_SYNTAXES: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def write_many_contexts_corpus(
    out_dir: str | Path, pairs: int = 140, *, seed: int = 0
) -> list[Path]:
    """Files covering ``pairs`` distinct (SOP Class, Transfer Syntax) pairs, > 128 by default.

    A single association carries at most 128 presentation contexts (PS3.8 §9.3.2.2: odd IDs
    1–255), so a sender must split this corpus. Datasets carry no pixel data: Orthanc does not
    check IOD modules, only that Study and Series UIDs are present.
    """
    classes = many_contexts_sop_classes()
    available = len(classes) * len(_MANY_CONTEXTS_SYNTAXES)
    if not 0 < pairs <= available:
        raise ValueError(f"pairs must be in 1..{available}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = derived_uid("contexts-study", seed)
    paths: list[Path] = []
    for i in range(pairs):
        sop_class = classes[i // len(_MANY_CONTEXTS_SYNTAXES)]
        ts = _MANY_CONTEXTS_SYNTAXES[i % len(_MANY_CONTEXTS_SYNTAXES)]
        sop_uid = derived_uid("contexts-sop", seed, i)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = _DATE
        ds.StudyTime = _TIME
        ds.AccessionNumber = ""
        ds.Modality = "OT"
        ds.ReferringPhysicianName = ""
        ds.PatientName = "SYNTH^PATIENT"
        ds.PatientID = "SYNTHCTX"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = derived_uid("contexts-series", seed, sop_class)
        ds.StudyID = "1"
        ds.SeriesNumber = i // len(_MANY_CONTEXTS_SYNTAXES) + 1
        ds.InstanceNumber = i % len(_MANY_CONTEXTS_SYNTAXES) + 1
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(ts)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        paths.append(write_dataset(ds, out / f"{i:04d}.dcm"))
    return paths
