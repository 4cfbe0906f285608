"""DIMSE status codes: what they mean and what the sender does about them.

PS3.4 Annex B.2.3 (Storage Service Class statuses) and PS3.7 Annex C (general statuses).
The classification follows ARCHITECTURE.md §3: 0xA7xx is "out of resources" and retried;
0xA9xx, 0xCxxx, 0x0122, 0x0124 and other failures are permanent; a missing status (abort,
timeout) means the outcome is unknown and the file is re-sent on a fresh association.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    STORED = "stored"
    WARNING = "stored-with-warning"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


_MEANINGS: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0116: "Warning: attribute value out of range",
    0xB000: "Warning: coercion of data elements",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0x0110: "Processing failure",
    0x0111: "Duplicate SOP instance",
    0x0117: "Invalid object instance",
    0x0119: "Class-instance conflict",
    0x0122: "SOP class not supported",
    0x0124: "Not authorized",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognized operation",
    0x0212: "Mistyped argument",
    0x0213: "Resource limitation",
    0xA700: "Out of resources",
    0xA900: "Data set does not match SOP class",
    0xC000: "Cannot understand",
    0xC211: "Unable to process (the SCP's handler raised an error)",
    0xFE00: "Cancel",
}

_WARNINGS = {0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}


def meaning(status: int | None) -> str:
    """Human-readable meaning of a status code, e.g. ``0xA700`` -> ``Out of resources``."""
    if status is None:
        return "No response (association aborted or timed out)"
    if status in _MEANINGS:
        return _MEANINGS[status]
    high = status & 0xFF00
    if high == 0xA700:
        return "Out of resources"
    if high == 0xA900:
        return "Data set does not match SOP class"
    if status & 0xF000 == 0xC000:
        return "Cannot understand"
    if status in _WARNINGS or status & 0xF000 == 0xB000:  # Bxxx (PS3.7 C), as classify()
        return "Warning"
    return "Failure"


def classify(status: int | None) -> Outcome:
    """Map a C-STORE status (None = no response) to what the sender does next."""
    if status is None:
        return Outcome.UNKNOWN
    if status == 0x0000:
        return Outcome.STORED
    if status in _WARNINGS or status & 0xF000 == 0xB000:
        return Outcome.WARNING
    if status & 0xFF00 == 0xA700 or status == 0x0213:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def fmt(status: int | None) -> str:
    """``0xA700`` style, or ``none`` when there was no response."""
    return "none" if status is None else f"0x{status:04X}"
