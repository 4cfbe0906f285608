"""Mapping tables: CSV files of old value(s) -> new value(s), read once per process.

The header row names the columns: first the elements matched (as the rule's ``match``
lists them), then the elements written. ``PatientID,PatientID,IssuerOfPatientID`` maps an
old Patient ID to a new one and an issuer. A table is checked whole when the rules are
loaded (the command fails with the line before anything is sent): every row has every column,
no key appears twice with different values, every new value fits its element's VR.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from migrator.coerce.paths import ElementPath, parse_path
from migrator.coerce.vr import TEXT_VRS, ValueProblem, check


class TableError(ValueError):
    """A table that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Table:
    path: str
    match: tuple[ElementPath, ...]
    write: tuple[ElementPath, ...]
    rows: dict[tuple[str, ...], tuple[str, ...]]


def load_table(path: str, text: str, match: list[str]) -> Table:
    """The table in ``text`` (the contents of ``path``), keyed by the ``match`` columns."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or not any(c.strip() for c in header):
        raise TableError(f"{path}: line 1: no header row (the element names of the columns)")
    names = [c.strip() for c in header]
    n = len(match)
    if [m.strip() for m in match] != names[:n]:
        raise TableError(
            f"{path}: line 1: the first column(s) must be the matched element(s) "
            f"{', '.join(match)}, then the elements to write; found {', '.join(names)}"
        )
    if len(names) == n:
        raise TableError(f"{path}: line 1: no column to write after {', '.join(names)}")
    try:
        keys = tuple(parse_path(c) for c in names[:n])
        outs = tuple(parse_path(c) for c in names[n:])
    except ValueError as exc:
        raise TableError(f"{path}: line 1: {exc}") from None
    for p in (*keys, *outs):
        if p.nested:
            raise TableError(f"{path}: line 1: {p.text}: tables match and write top-level elements")
        if p.vr not in TEXT_VRS:
            raise TableError(f"{path}: line 1: {p.text} has VR {p.vr}, not a text VR")
    rows: dict[tuple[str, ...], tuple[str, ...]] = {}
    seen: dict[tuple[str, ...], int] = {}
    for record in reader:
        line = reader.line_num
        if not record or not any(c.strip() for c in record):
            continue
        if len(record) != len(names):
            raise TableError(
                f"{path}: line {line}: {len(record)} column(s), the header has {len(names)}"
            )
        cells = [c.strip() for c in record]
        key, new = tuple(cells[:n]), tuple(cells[n:])
        for p, value in zip(outs, new, strict=True):
            try:
                check(value, p.vr)
            except ValueProblem as exc:
                raise TableError(f"{path}: line {line}: column {p.text}: {exc}") from None
        if key in rows and rows[key] != new:
            raise TableError(
                f"{path}: line {line}: the same {', '.join(match)} as line {seen[key]} "
                "with other new values (a value must map to one result everywhere)"
            )
        rows[key] = new
        seen.setdefault(key, line)
    return Table(path, keys, outs, rows)
