"""The coercing transform: the header region parsed, the rules applied, the file spliced.

A file no rule changes goes on as it came (the same payload object: the zero-copy path). A
changed one is sent as its rewritten region followed by the rest of the file, streamed
from where the region ended: the pixel data is never decoded or copied through Python.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from migrator.coerce.apply import Applied, apply_rules
from migrator.coerce.elements import Dataset, Encoding, encode, parse_region
from migrator.coerce.errors import CoercionError
from migrator.coerce.rules import SPECIFIC_CHARACTER_SET, RuleSet
from migrator.coerce.splice import FIRST_READ, RegionReader
from migrator.coerce.vr import ValueProblem, codec_for
from migrator.dicomfile import DicomHeader, NeedMoreBytes
from migrator.sources.base import Payload

#: Header fields the sender uses, from the elements a rule with allow_uid may change
_UIDS = {
    "sop_class_uid": 0x00080016,
    "sop_instance_uid": 0x00080018,
    "study_uid": 0x0020000D,
    "series_uid": 0x0020000E,
}
_UID_STOP = max(_UIDS.values())


class Coercer:
    """A ``Transform`` applying ``rules``."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        # A rule that may change a UID: the region reaches the UIDs the sender needs.
        self.stop = rules.stop_after
        self.uids = any(r.target is not None and r.target.vr == "UI" for r in rules.rules) or any(
            r.table is not None and any(p.vr == "UI" for p in r.table.write) for r in rules.rules
        )
        if self.uids:
            self.stop = max(self.stop, _UID_STOP)

    def __call__(self, header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        return self._coerce(header, payload, trace=False)[:2]

    def preview(
        self, header: DicomHeader, payload: Payload
    ) -> tuple[DicomHeader, Payload, Applied]:
        """As a sender would coerce the file (same checks, same errors), with each change's
        values in ``Applied.trace``: ``--dry-run``."""
        return self._coerce(header, payload, trace=True)

    def _coerce(
        self, header: DicomHeader, payload: Payload, *, trace: bool
    ) -> tuple[DicomHeader, Payload, Applied]:
        try:
            enc = Encoding.of(header.transfer_syntax)
        except CoercionError as exc:
            raise CoercionError(f"not sent: {exc} is not supported") from None
        reader = RegionReader(header, payload)
        n = FIRST_READ
        while True:
            data, at_end = reader.read(n)
            try:
                ds, length = parse_region(data, enc, self.stop, at_end=at_end)
                break
            except NeedMoreBytes:
                if at_end:
                    raise CoercionError("not sent: the dataset is truncated") from None
                n *= 4
            except CoercionError as exc:
                raise CoercionError(f"not sent: cannot coerce: {exc}") from None
        try:
            codec = codec_for(_charset(ds))
        except ValueProblem as exc:
            raise CoercionError(f"not sent: {exc}") from None
        try:
            applied = apply_rules(self.rules, ds, codec, trace=trace)
        except CoercionError as exc:
            if type(exc) is CoercionError:
                raise CoercionError(f"not sent: {exc}") from None
            raise
        if not applied.fired:
            return header, payload, applied
        try:
            head = encode(ds, enc)
        except CoercionError as exc:
            raise CoercionError(f"not sent: {exc}") from None
        spliced = Payload(payload.path, payload.data, head, header.dataset_offset + length)
        note = applied.note()
        changes: dict[str, Any] = {"note": f"{header.note}; {note}" if header.note else note}
        if self.uids:
            for field, tag in _UIDS.items():
                element = ds.get(tag)
                if element is not None:
                    changes[field] = element.value.rstrip(b"\0 ").decode("ascii", "replace")
        return dataclasses.replace(header, **changes), spliced, applied


def _charset(ds: Dataset) -> str:
    element = ds.get(SPECIFIC_CHARACTER_SET)
    if element is None:
        return ""
    return element.value.decode("ascii", "replace").strip(" \0")
