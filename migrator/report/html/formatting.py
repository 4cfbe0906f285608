"""How the HTML report writes a value: escaped, numbers with thousands separators, local times.

Shared by the page's header and KPI cards, the charts and the tables.
"""

from __future__ import annotations

import time
from html import escape


def esc(value: object) -> str:
    return escape(str(value))


def num(value: int) -> str:
    return f"{value:,}"


def local_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
