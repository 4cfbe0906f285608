"""What inspecting a DICOM file yields: its header, or the error that says why it cannot be sent.

A file that is not DICOM is skipped (``NotDicomError``); DICOM that cannot be sent as it is
fails (``DamagedError``: truncated, or without the UIDs every instance must have), so that
someone looks at it. ``build_header`` is shared by the header scan and the pydicom fallback,
so both refuse the same files for the same reasons.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from migrator.errors import SourceError


class NotDicomError(SourceError):
    """Not DICOM (or not a regular file at all): skipped, with the reason."""


class DamagedError(SourceError):
    """DICOM that cannot be sent as it is: failed rather than skipped, so someone looks."""


class TruncatedError(DamagedError):
    """DICOM that ends before its own header or its pixel data says it does."""


class InvalidInstanceError(DamagedError):
    """DICOM without the SOP Class or SOP Instance UID every instance must have."""


#: What reading or decoding a damaged file can raise besides our own errors (pydicom, the
#: codecs, numpy, struct, zlib): caught to fail that one file. Deliberately not ``Exception``:
#: Celery's SoftTimeLimitExceeded is one, and a time limit must stop the batch, not a file.
DAMAGED_INPUT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    ArithmeticError,
    RuntimeError,
    EOFError,
    OSError,
    MemoryError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True, slots=True)
class DicomHeader:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    #: Where the dataset starts: after the File Meta, or 0 for dataset-only files.
    dataset_offset: int
    size: int
    has_meta: bool
    #: Something the report should say about a file that is sent anyway (no File Meta...)
    note: str = ""
    #: Accession Number and Modality when the header has them (the report's study table)
    accession: str = ""
    modality: str = ""
    #: Study Date (YYYYMMDD) when the header has it: the planner's --order key
    study_date: str = ""
    #: Patient ID when the header has it: only matched against --priority-list
    patient_id: str = ""


def build_header(
    sop_class: str,
    sop_instance: str,
    ts: str,
    found: dict[str, str],
    offset: int,
    size: int,
    has_meta: bool,
    note: str = "",
) -> DicomHeader:
    if not sop_class or not sop_instance:
        missing = [
            n for n, v in (("SOP Class", sop_class), ("SOP Instance", sop_instance)) if not v
        ]
        what = " and ".join(f"{m} UID" for m in missing)
        if has_meta or found:
            # Recognisably DICOM (a File Meta, or other UIDs): a damaged instance that will
            # not arrive, which is a failure to look at rather than a file to pass over.
            raise InvalidInstanceError(
                f"invalid instance: no {what} in the dataset or the File Meta (Type 1); not sent"
            )
        raise NotDicomError(f"not a DICOM file: no {what} in what reads as a bare dataset")
    if offset > size:
        raise TruncatedError("truncated inside the File Meta header")
    return DicomHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax=ts,
        study_uid=found.get("study_uid", ""),
        series_uid=found.get("series_uid", ""),
        dataset_offset=offset,
        size=size,
        has_meta=has_meta,
        note=note,
        accession=found.get("accession", ""),
        modality=found.get("modality", ""),
        study_date=found.get("study_date", ""),
        patient_id=found.get("patient_id", ""),
    )
