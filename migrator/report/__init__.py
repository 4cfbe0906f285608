"""Reports of a migration: text, JSON, CSV and a self-contained HTML page.

Build one :class:`ReportData` (:func:`from_store_result` for `store`, :func:`from_ledger` for
a job), then render it in any format; every format reads the same counts.

    data = from_ledger(ledger)
    write_report("run.html", data)          # the format follows the extension
    print(render(data, "text"))
"""

from __future__ import annotations

import os
import tempfile

from migrator.errors import ConfigError
from migrator.report.builder import from_ledger, from_store_result
from migrator.report.model import ReportData

__all__ = [
    "FORMATS",
    "ReportData",
    "format_for_path",
    "from_ledger",
    "from_store_result",
    "render",
    "write_atomic",
    "write_report",
]

FORMATS = ("text", "json", "csv", "html")
_EXTENSIONS = {
    ".json": "json",
    ".csv": "csv",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
    ".text": "text",
    ".log": "text",
}


def format_for_path(path: str, default: str = "json") -> str:
    """The format a report file's extension asks for; ``default`` for any other name."""
    return _EXTENSIONS.get(os.path.splitext(path)[1].lower(), default)


def render(data: ReportData, fmt: str) -> str:
    if fmt == "text":
        from migrator.report import text

        return text.render(data) + "\n"
    if fmt == "json":
        from migrator.report import jsonfmt

        return jsonfmt.render(data)
    if fmt == "csv":
        from migrator.report import csvfmt

        return csvfmt.render(data)
    if fmt == "html":
        from migrator.report import html

        return html.render(data)
    raise ConfigError(f"unknown report format {fmt!r} (one of: {', '.join(FORMATS)})")


def write_atomic(path: str, content: str) -> None:
    """Write a file so that a reader never sees half of it (a report watched by a script,
    or overwritten by the next run while someone has it open)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".report-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(content)
        # mkstemp makes the file 0600; a report is for sharing: the mode open() would give.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(path: str, data: ReportData, fmt: str | None = None) -> str:
    """Render ``data`` in ``fmt`` (default: from the extension) to ``path``; returns fmt."""
    fmt = fmt or format_for_path(path)
    write_atomic(path, render(data, fmt))
    return fmt


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, racing threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o077  # unknown: stay as private as mkstemp made it
