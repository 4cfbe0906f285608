"""The report a migration lead opens: one self-contained HTML file with charts and tables.

Self-contained means it can be mailed, archived with the job and opened years later on a
machine without network: styles, the SVG charts (drawn in Python, :mod:`svg`) and the small
script (table sorting and a filter) are inline; nothing is fetched. The report's JSON
summary is embedded too, for programs. A job's report says what the PACS confirmed at the
job's last `migrator verify` (a KPI card and a section listing the files it lacks), or that
the job was not verified.

The parts: :mod:`~migrator.report.html.page` (``render``: head, header, KPI cards, order),
:mod:`~migrator.report.html.charts`, :mod:`~migrator.report.html.tables`,
:mod:`~migrator.report.html.assets` (style sheet and script) and
:mod:`~migrator.report.html.formatting` (escaping, numbers, times).
"""

from __future__ import annotations

from migrator.report.html.charts import COLORS, MAX_BARS
from migrator.report.html.page import render
from migrator.report.html.tables import MAX_PROBLEM_ROWS

__all__ = ["COLORS", "MAX_BARS", "MAX_PROBLEM_ROWS", "render"]
