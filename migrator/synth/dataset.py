"""One synthetic instance: ``make_dataset`` builds it, ``write_dataset`` writes it.

UIDs come from ``derived_uid``; the attributes a PACS needs and consistent pixel attributes
are set for each of the ``KINDS``.

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
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
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
DATE = "20240101"
TIME = "120000"


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


# Elements that differ between the instances of one series (see set_instance_elements).
INSTANCE_TAGS = frozenset({0x00080018, 0x00200013, 0x00200032, 0x7FE00010})


def set_instance_elements(ds: Dataset, seed: int, instance_number: int, ts: UID) -> None:
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
    accession: str = "",
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
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = TIME
    ds.AccessionNumber = accession
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

    set_instance_elements(ds, seed, instance_number, ts)

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
