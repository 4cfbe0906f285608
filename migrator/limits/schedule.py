"""Schedules: which rate limit (and association cap) applies at which time.

A schedule is a list of windows; at any instant the first window that matches applies
(``*`` matches always, so it goes last as the default). Written inline::

    tz=Europe/Berlin; Mon-Fri 07:00-19:00 rate=20 assoc=2; Sat,Sun rate=100; * rate=400

or as YAML (``timezone:`` and ``windows:``, each window a line as above or a mapping with
``days``, ``hours``, ``after``, ``rate``, ``mbps``, ``assoc``, ``burst``). A window is:

* days: ``Mon-Fri``, ``Sat,Sun``, ``Mon`` (default: every day), and/or hours ``07:00-19:00``
  or ``07:00:30-07:00:45`` in the schedule's time zone (``22:00-06:00`` wraps past midnight;
  the day is the one the instant falls on);
* or ``+START-END``: from START to END after the schedule was set (the job's start), e.g.
  ``+0s-2h`` (a first ramp-up), ``+10s-15s`` (second-granular: what tests use);
* ``rate=`` files/s (``0``: a paused window, nothing is sent; absent: no file limit),
  ``mbps=`` MB/s, ``assoc=`` associations fleet-wide, ``burst=`` files.

The schedule is compiled here into the instants at which the window changes (for 400 days
ahead; time-zone rules and DST applied once, in Python) and stored in Redis next to the
destination's limits (``schedule_redis``); the limiter's script picks the window of Redis's
``TIME``, so every worker on every machine changes at the same instant.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from migrator.errors import ConfigError
from migrator.units import parse_duration

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: How far ahead the window changes are compiled (a migration of weeks, with room).
HORIZON_DAYS = 400
_TIME = r"\d{1,2}:\d{2}(?::\d{2})?"
_HOURS_RE = re.compile(rf"^({_TIME})-({_TIME})$")
_REL_RE = re.compile(r"^\+([0-9.]+(?:ms|s|m|h|d)?)-([0-9.]+(?:ms|s|m|h|d)?)$")
_KEYS = ("rate", "mbps", "assoc", "burst")


@dataclass(frozen=True)
class Window:
    label: str
    rate: float | None = None
    mbps: float | None = None
    assoc: int | None = None
    burst: int | None = None
    days: frozenset[int] | None = None
    hours: tuple[int, int] | None = None
    after: tuple[float, float] | None = None

    def matches(self, t: float, origin: float, zone: ZoneInfo) -> bool:
        if self.after is not None:
            return origin + self.after[0] <= t < origin + self.after[1]
        local = datetime.fromtimestamp(t, zone)
        if self.days is not None and local.weekday() not in self.days:
            return False
        if self.hours is None:
            return True
        sec = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        start, end = self.hours
        return start <= sec < end if start <= end else sec >= start or sec < end

    def limits_text(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in _KEYS if getattr(self, k) is not None]
        return " ".join(parts) or "no limit"


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...]
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def text(self) -> str:
        """The canonical inline form (kept with the job's settings)."""
        return "; ".join([f"tz={self.timezone}", *(w.label for w in self.windows)])

    def at(self, t: float, origin: float) -> int:
        """Index of the window that applies at ``t`` (-1: none; the job's own limits)."""
        zone = self.zone
        for i, w in enumerate(self.windows):
            if w.matches(t, origin, zone):
                return i
        return -1

    def compile(self, origin: float, horizon_days: int = HORIZON_DAYS) -> list[tuple[float, int]]:
        """(epoch, window index) at ``origin`` and at every change within the horizon."""
        zone = self.zone
        end = origin + horizon_days * 86400.0
        instants = {origin}
        first = datetime.fromtimestamp(origin, zone).date() - timedelta(days=1)
        clock = [w for w in self.windows if w.after is None and (w.days or w.hours)]
        for w in self.windows:
            if w.after is not None:
                instants.update(origin + a for a in w.after)
        for n in range(horizon_days + 2 if clock else 0):
            day = first + timedelta(days=n)
            instants.add(_epoch(day, 0, zone))
            for w in clock:
                if w.hours is not None:
                    instants.update(_epoch(day, s, zone) for s in w.hours)
        changes: list[tuple[float, int]] = []
        for t in sorted(i for i in instants if origin <= i <= end):
            index = self.at(t, origin)
            if not changes or changes[-1][1] != index:
                changes.append((t, index))
        return changes


def _epoch(day: date, seconds: int, zone: ZoneInfo) -> float:
    base = datetime.combine(day, dtime(0), tzinfo=zone)
    # Wall-clock seconds of that day (DST: the local time, not elapsed seconds).
    return (
        (base + timedelta(seconds=seconds)).timestamp()
        if seconds < 86400
        else (datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=zone).timestamp())
    )


def _clock(text: str) -> int:
    parts = [int(p) for p in text.split(":")]
    h, m, s = [*parts, 0][:3]
    if h > 24 or m > 59 or s > 59 or (h == 24 and (m or s)):
        raise ConfigError(f"schedule: {text!r} is not a time of day (HH:MM or HH:MM:SS)")
    return h * 3600 + m * 60 + s


def _days(token: str) -> frozenset[int] | None:
    out: set[int] = set()
    for part in token.lower().split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e[:3] not in DAYS or len(e) < 3 for e in ends):
            return None
        a, b = DAYS.index(ends[0][:3]), DAYS.index(ends[-1][:3])
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


def _duration(text: str) -> float:
    if text.endswith("d") and not text.endswith("ms"):
        return float(text[:-1]) * 86400
    return parse_duration(text)


def parse_window(entry: str) -> Window:
    """One window in the inline syntax (``Mon-Fri 07:00-19:00 rate=20 assoc=2``)."""
    tokens = entry.split()
    where = [t for t in tokens if "=" not in t]
    values: dict[str, float] = {}
    for t in tokens:
        if "=" not in t:
            continue
        key, _, raw = t.partition("=")
        if key.lower() not in _KEYS:
            raise ConfigError(f"schedule: unknown {key!r} in {entry!r} (use {', '.join(_KEYS)})")
        try:
            values[key.lower()] = float(raw)
        except ValueError:
            raise ConfigError(f"schedule: {t!r} in {entry!r} is not a number") from None
        if values[key.lower()] < 0:
            raise ConfigError(f"schedule: {t!r} in {entry!r} is negative")
    days: frozenset[int] | None = None
    hours: tuple[int, int] | None = None
    after: tuple[float, float] | None = None
    for t in where:
        if t == "*":
            continue
        if m := _HOURS_RE.match(t):
            hours = (_clock(m.group(1)), _clock(m.group(2)))
        elif m := _REL_RE.match(t):
            after = (_duration(m.group(1)), _duration(m.group(2)))
            if after[1] <= after[0]:
                raise ConfigError(f"schedule: {t!r} ends before it starts")
        elif (d := _days(t)) is not None:
            days = d
        else:
            raise ConfigError(
                f"schedule: {t!r} in {entry!r} is neither days (Mon-Fri), hours (07:00-19:00), "
                "a span after the start (+0s-2h) nor *"
            )
    for key in ("assoc", "burst"):
        if key in values and (values[key] < 1 or values[key] != int(values[key])):
            raise ConfigError(f"schedule: {key}= in {entry!r} must be a whole number >= 1")
    label = " ".join(where) or "*"
    limits = " ".join(f"{k}={v:g}" for k, v in values.items())
    return Window(
        f"{label} {limits}".strip(),
        rate=values.get("rate"),
        mbps=values.get("mbps"),
        assoc=int(values["assoc"]) if "assoc" in values else None,
        burst=int(values["burst"]) if "burst" in values else None,
        days=days,
        hours=hours,
        after=after,
    )


def parse(text: str, timezone: str | None = None) -> Schedule:
    """The inline syntax: windows separated by ``;`` or new lines, ``tz=Zone`` anywhere."""
    windows: list[Window] = []
    tz = timezone
    for raw in re.split(r"[;\n]", text):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.lower().startswith("tz="):
            tz = entry[3:].strip()
            continue
        windows.append(parse_window(entry))
    if not windows:
        raise ConfigError("schedule: no window given")
    tz = tz or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"schedule: unknown time zone {tz!r} (e.g. Europe/Berlin)") from None
    return Schedule(tuple(windows), tz)


def load(value: str) -> Schedule:
    """``--schedule``: a YAML file (a path that exists) or the inline syntax."""
    if not os.path.isfile(value):
        return parse(value)
    import yaml  # (no stubs: yaml.* is in mypy's ignore_missing_imports)

    try:
        with open(value, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"schedule {value}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("windows"), list):
        raise ConfigError(f"schedule {value}: expected 'timezone:' and a list 'windows:'")
    lines = []
    for item in doc["windows"]:
        if isinstance(item, str):
            lines.append(item)
        elif isinstance(item, dict):
            where = [str(item[k]) for k in ("days", "hours") if item.get(k)]
            if item.get("after"):
                where.append("+" + str(item["after"]).lstrip("+"))
            keys = [f"{k}={item[k]}" for k in _KEYS if item.get(k) is not None]
            lines.append(" ".join(where or ["*"]) + " " + " ".join(keys))
        else:
            raise ConfigError(f"schedule {value}: a window is a line or a mapping, not {item!r}")
    try:
        return parse("\n".join(lines), doc.get("timezone"))
    except ConfigError as exc:
        raise ConfigError(f"{value}: {exc}") from None
