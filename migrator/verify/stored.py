"""What the ledger says was stored: the files a verification asks the PACS about.

Read in chunks of ``FILES_CHUNK`` files, so that memory holds UIDs, not the whole job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from migrator.ledger import Ledger
from migrator.outcomes import State
from migrator.verify.result import FILES_CHUNK, FileProblem


def stored_files(ledger: Ledger) -> Iterator[list[tuple[str, str, str, str, str]]]:
    """Chunks of (file id, uri, SOP class, SOP instance, study) of the stored files."""
    chunk: list[tuple[str, str, str, str]] = []

    def flush() -> list[tuple[str, str, str, str, str]]:
        planned = {p.file_id: p for p in ledger.files([c[0] for c in chunk])}
        rows = []
        for fid, uri, cls, sop in chunk:
            p = planned.get(fid)
            # The outcome holds the UIDs as sent; the plan is the fallback (and has the study).
            rows.append(
                (
                    fid,
                    uri,
                    cls or (p.sop_class_uid if p else ""),
                    sop or (p.sop_instance_uid if p else ""),
                    p.study_uid if p else "",
                )
            )
        chunk.clear()
        return rows

    for fid, outcome, _ in ledger.iter_outcomes():
        if outcome.state is State.STORED:
            chunk.append((fid, outcome.uri, outcome.sop_class_uid, outcome.sop_instance_uid))
            if len(chunk) >= FILES_CHUNK:
                yield flush()
    if chunk:
        yield flush()


def files_for(ledger: Ledger, reasons: Mapping[str, str]) -> list[FileProblem]:
    """The stored files holding these SOP Instance UIDs (a second pass keeps memory to UIDs)."""
    found = []
    for rows in stored_files(ledger):
        for fid, uri, _, sop, study in rows:
            if sop in reasons:
                found.append(FileProblem(fid, uri, sop, study, reasons[sop]))
    return sorted(found, key=lambda p: (p.study_uid, p.sop_instance_uid, p.uri))
