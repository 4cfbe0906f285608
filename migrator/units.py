"""Parsing of human-friendly durations and sizes used by command-line options."""

from __future__ import annotations

import re

from migrator.errors import ConfigError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"250ms"`` or a bare number of seconds -> seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ConfigError(f"invalid duration {text!r} (examples: 30, 30s, 5m, 2h, 500ms)")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def local_time(epoch: float | None) -> str:
    """``2024-05-02 14:03:41 +0200``: local time with its offset from UTC, so that a report
    read in another time zone (mailed, attached to a ticket) is not an hour off."""
    if not epoch:
        return "-"
    from datetime import datetime

    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def iso_time(epoch: float | None) -> str | None:
    """ISO 8601 with the UTC offset (``2024-05-02T14:03:41+02:00``), for machines."""
    if not epoch:
        return None
    from datetime import datetime

    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
