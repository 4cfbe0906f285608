"""The follow-up list: one CSV row per file that was not stored (failed, skipped, in flight).

It is the input of whatever comes next (a fix-up script, `retry`, a ticket), so it has a
fixed header, one file per row, sorted by URI, and nothing else: stored files are not
listed, and a file appears once whatever happened to it before.
"""

from __future__ import annotations

import csv
import io

from migrator.report.model import ReportData

COLUMNS = ("uri", "sop_instance_uid", "state", "status", "reason", "attempts", "ts_sent")


def render(data: ReportData) -> str:
    out = io.StringIO()
    # LF line ends: the file is read by scripts on Linux far more than by spreadsheets.
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in data.problems:
        writer.writerow(
            [p.uri, p.sop_instance_uid, p.state, p.status_text, p.reason, p.attempts, p.ts_sent]
        )
    return out.getvalue()
