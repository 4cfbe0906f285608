"""Header-only inspection of DICOM files (PS3.10 file format, PS3.5 data encoding).

What `store`, the planner and the workers learn from a file before sending it, in microseconds
per file: its SOP Class and Instance, Study and Series UIDs and transfer syntax, or why it
cannot be sent. The package holds:

* :mod:`~migrator.dicomfile.inspect`: ``inspect_file`` and ``inspect_bytes``, the header scan
  up to Series Instance UID;
* :mod:`~migrator.dicomfile.damage`: the damage checks past the UIDs (truncation);
* :mod:`~migrator.dicomfile.fallback`: pydicom, for what the scan leaves (imported only then);
* :mod:`~migrator.dicomfile.header`: ``DicomHeader`` and the errors that say why not;
* :mod:`~migrator.dicomfile.encoding`: the PS3.5 encoding the scan and the checks share.

Importing this package does not import pydicom: the CLI's start-up is measured.
"""

from __future__ import annotations

from migrator.dicomfile.encoding import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NeedMoreBytes,
    Reader,
)
from migrator.dicomfile.header import (
    DAMAGED_INPUT_ERRORS,
    DamagedError,
    DicomHeader,
    InvalidInstanceError,
    NotDicomError,
    TruncatedError,
)
from migrator.dicomfile.inspect import HEAD_BYTES, inspect_bytes, inspect_file

__all__ = [
    "DAMAGED_INPUT_ERRORS",
    "DEFLATED_LE",
    "EXPLICIT_BE",
    "EXPLICIT_LE",
    "HEAD_BYTES",
    "IMPLICIT_LE",
    "DamagedError",
    "DicomHeader",
    "InvalidInstanceError",
    "NeedMoreBytes",
    "NotDicomError",
    "Reader",
    "TruncatedError",
    "inspect_bytes",
    "inspect_file",
]
