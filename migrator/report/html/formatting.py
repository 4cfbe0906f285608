"""How the reports write a value: escaped, numbers with thousands separators, local times
with their UTC offset.

Shared by the page's header and KPI cards, the charts and the tables.
"""

from __future__ import annotations

from html import escape

from migrator.units import iso_time, local_time

__all__ = ["esc", "iso_time", "local_time", "num", "pct"]


def esc(value: object) -> str:
    return escape(str(value))


def num(value: int) -> str:
    return f"{value:,}"


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
