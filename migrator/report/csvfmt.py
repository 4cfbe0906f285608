"""The follow-up list: one CSV row per file that was not stored (failed, skipped, in flight),
or that was stored per ledger but is not held by the PACS at the job's last `migrator verify`
(``missing_at_pacs``, ``unconfirmed_at_pacs``; status empty, reason from `verify`).

``render_studies`` is the other CSV (`migrator report JOB --format csv --by study`): one row
per study of the job, incomplete ones first, with its instances by state.

It is the input of whatever comes next (a fix-up script, `retry`, a ticket), so it has a
fixed header, one file per row, sorted by URI, and nothing else: stored files the PACS
confirmed are not listed, and a file appears once whatever happened to it before (a file
`verify` found missing is a stored file, so it is never also a failed one).
"""

from __future__ import annotations

import csv
import io

from migrator.report.model import IN_FLIGHT, ReportData

COLUMNS = ("uri", "sop_instance_uid", "state", "status", "reason", "attempts", "ts_sent")


def render(data: ReportData) -> str:
    out = io.StringIO()
    # LF line ends: the file is read by scripts on Linux far more than by spreadsheets.
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows = [
        (p.uri, p.sop_instance_uid, p.state, p.status_text, p.reason, p.attempts, p.ts_sent)
        for p in data.problems
    ]
    if data.verification is not None:
        rows += [
            (f.uri, f.sop_instance_uid, f.state, "", f.reason, f.attempts, f.ts_sent)
            for f in data.verification.files
        ]
        rows.sort(key=lambda r: r[0])  # stable: the problems keep their order
    writer.writerows(rows)
    return out.getvalue()


STUDY_COLUMNS = (
    "study_instance_uid",
    "accession_number",
    "modality",
    "planned",
    "stored",
    "failed",
    "skipped",
    "in_flight",
    "complete",
)


#: Added to ``STUDY_COLUMNS`` when the job was reconciled with its source (`verify` of a
#: dimse:// job): instances at the source and at the destination as it counted them (the
#: ``stored`` column is the ledger's now).
COMPLETENESS_COLUMNS = ("at_source", "at_destination")


def render_studies(data: ReportData) -> str:
    """One row per study: incomplete studies first; ``complete`` is ``yes`` or ``no``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    reconciled = data.completeness.by_study() if data.completeness is not None else None
    writer.writerow(STUDY_COLUMNS + (COMPLETENESS_COLUMNS if reconciled is not None else ()))
    for r in data.study_rows():
        s = r.states
        counted = reconciled.get(r.study_uid) if reconciled is not None else None
        extra: tuple[object, ...] = ()
        if reconciled is not None:
            extra = (counted.at_source, counted.at_destination) if counted else ("", "")
        writer.writerow(
            (
                r.study_uid,
                # A plan from an old PACS has no accession; its reconciliation asked for it.
                r.accession or (counted.accession if counted else ""),
                r.modality,
                r.planned,
                s["stored"],
                s["failed"],
                s["skipped"],
                s[IN_FLIGHT],
                "yes" if r.complete else "no",
                *extra,
            )
        )
    return out.getvalue()
