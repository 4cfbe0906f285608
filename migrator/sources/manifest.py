"""Manifests: the list of files to migrate, as exported from an old PACS database or an S3
inventory report, instead of a listing.

One entry per line, streamed (a 100-million-line manifest is never held in memory):

* NDJSON (``.ndjson``, ``.jsonl``, ``.json``): ``{"uri": "...", "size": 123,
  "sop_instance_uid": "...", "study_instance_uid": "..."}``; only ``uri`` is required.
* CSV (``.csv``, or anything else): a header row naming the columns, ``uri`` required,
  the others optional, in any order.

A line that cannot be used (bad JSON, no uri, a size that is not a number) is reported with
its line number and the rest goes on. Files from a manifest are planned without reading
their headers (that is what makes planning millions of lines fast); the worker reads each
header just before sending, so a file that is not DICOM still ends skipped with a reason.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass

from migrator.errors import SourceError


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    line: int
    uri: str
    size: int = 0
    sop_instance_uid: str = ""
    study_uid: str = ""


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def read_manifest(path: str) -> Iterator[ManifestEntry | BadLine]:
    try:
        f = open(path, encoding="utf-8", errors="replace", newline="")  # noqa: SIM115
    except OSError as exc:
        raise SourceError(f"manifest {path}: {exc.strerror or exc}") from exc
    with f:
        if path.lower().endswith((".ndjson", ".jsonl", ".json")):
            yield from _ndjson(f)
        else:
            yield from _csv(f)


def _entry(line: int, row: dict[str, object]) -> ManifestEntry | BadLine:
    uri = str(row.get("uri") or "").strip()
    if not uri:
        return BadLine(line, "no uri")
    raw_size = row.get("size")
    try:
        size = int(str(raw_size)) if raw_size not in (None, "") else 0
    except ValueError:
        return BadLine(line, f"size is not a whole number: {str(raw_size)[:40]!r}")
    if size < 0:
        return BadLine(line, "negative size")
    return ManifestEntry(
        line,
        uri,
        size,
        str(row.get("sop_instance_uid") or "").strip(),
        str(row.get("study_instance_uid") or row.get("study_uid") or "").strip(),
    )


def _ndjson(lines: Iterator[str]) -> Iterator[ManifestEntry | BadLine]:
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield BadLine(n, f"not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            yield BadLine(n, "not a JSON object")
            continue
        yield _entry(n, row)


def _csv(lines: Iterator[str]) -> Iterator[ManifestEntry | BadLine]:
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or "uri" not in [f.strip() for f in reader.fieldnames]:
        yield BadLine(1, "the CSV header has no 'uri' column")
        return
    for row in reader:
        clean = {(k or "").strip(): v for k, v in row.items()}
        yield _entry(reader.line_num, clean)
