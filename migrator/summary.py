"""Human and machine renderings of a StoreResult: the radx-style summary and the JSON report.

Kept for `store` and library users; both are now thin wrappers over :mod:`migrator.report`,
which also renders CSV and HTML and reports on distributed jobs from their ledger.
"""

from __future__ import annotations

import json
from typing import Any

from migrator.outcomes import StoreResult
from migrator.report import from_store_result, jsonfmt, text, write_atomic


def render_text(result: StoreResult, *, max_failures: int = 50) -> str:
    return text.render(from_store_result(result, keep_files=False), max_failures=max_failures)


def report_dict(result: StoreResult, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: totals, statuses, settings (secrets masked) and one entry per file."""
    return jsonfmt.to_dict(from_store_result(result, settings))


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write a report so that a reader never sees half a file."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")
