"""The answer to a STOW-RS request, per instance (PS3.18 10.5.3, DICOM JSON, PS3.18 F.2).

HTTP 200: every instance stored; 202: some stored (``ReferencedSOPSequence``, each maybe with
a ``WarningReason``), others failed (``FailedSOPSequence`` with a ``FailureReason``); 409: all
failed. The reason codes are the C-STORE status codes, so ``migrator.status`` classifies
them as it does DIMSE answers and the report groups them alike: 0xA7xx is retried, 0xC000 or
0x0110 fail the file, 0xB000 is stored with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
#: A warning with no code given (a server that names no reason): "coercion of data elements"
DEFAULT_WARNING = 0xB000


@dataclass(frozen=True, slots=True)
class InstanceAnswer:
    """What the server said about one SOP instance: ``status`` is 0x0000 for stored, the
    WarningReason for stored with a warning, the FailureReason for failed (None: failed
    without a code)."""

    stored: bool
    status: int | None


class BadAnswer(ValueError):
    """The body is not a DICOM JSON STOW-RS response."""


def parse(body: bytes) -> dict[str, InstanceAnswer]:
    """SOP Instance UID -> answer, for every instance the body names."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadAnswer(f"not JSON: {exc}") from None
    if isinstance(data, list):  # some servers wrap the one dataset in an array
        data = data[0] if data else {}
    if not isinstance(data, dict):
        raise BadAnswer("not a DICOM JSON dataset")
    answers: dict[str, InstanceAnswer] = {}
    for item in _items(data, FAILED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            reason = _first(item, FAILURE_REASON)
            answers[uid] = InstanceAnswer(False, reason if isinstance(reason, int) else None)
    for item in _items(data, REFERENCED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            warning = _first(item, WARNING_REASON)
            if warning is not None:
                code = warning if isinstance(warning, int) else DEFAULT_WARNING
                answers[uid] = InstanceAnswer(True, code)
            else:
                answers[uid] = InstanceAnswer(True, 0x0000)
    return answers


def _items(data: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = data.get(tag)
    if not isinstance(element, dict):
        return []
    value = element.get("Value")
    return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    value = element.get("Value")
    return value[0] if isinstance(value, list) and value else None
