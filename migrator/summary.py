"""Human and machine renderings of a StoreResult: the radx-style summary and the JSON report.

Kept for `store` and library users; both are now thin wrappers over :mod:`migrator.report`,
which also renders CSV and HTML and reports on distributed jobs from their ledger.
"""

from __future__ import annotations

import json
from typing import Any

from migrator.outcomes import StoreResult
from migrator.report import ReportData, from_store_result, jsonfmt, text, write_atomic
from migrator.report.builder import store_view


def render_text(
    result: StoreResult, *, max_failures: int = 50, job_report: ReportData | None = None
) -> str:
    """The summary of ``result``. ``job_report``: the job's report read from the ledger
    together with ``result.outcomes`` (``from_ledger(..., outcomes=...)``, as `migrator run`
    does): the summary's counts are taken from it instead of going over the outcomes again."""
    data = store_view(job_report, result) if job_report is not None else None
    if data is None and job_report is not None and job_report.in_flight:
        # A job not done: its own report counts the files in flight (the result cannot).
        job_report.fatal, job_report.fatal_exit = result.fatal, result.fatal_exit
        data = job_report
    if data is None:
        data = from_store_result(result, keep_files=False)
    return text.render(data, max_failures=max_failures)


def report_dict(result: StoreResult, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: totals, statuses, settings (secrets masked) and one entry per file."""
    return jsonfmt.to_dict(from_store_result(result, settings))


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write a report so that a reader never sees half a file."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")
