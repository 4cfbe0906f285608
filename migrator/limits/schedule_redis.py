"""A destination's schedule in Redis, where the fleet-wide limiter reads it.

``{limiter key}:sched`` is a sorted set: one member per change of window, scored by its
instant (epoch seconds), ``index|epoch|files/s|bytes/s|burst|assoc`` ('' = none, index -1 =
no window: the destination's own limits). The limiter's script (rate_redis.py) takes the
member at or before Redis ``TIME`` on every reservation, so every worker of every machine
changes window at the same instant. ``{limiter key}:schedinfo`` keeps what people read:
the schedule's text, time zone, when it was set, each window's label.

`migrator limit` on a scheduled destination overrides the window until the next change
(``override_until`` in the limits hash) or, with ``--hold``, until ``--clear``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis

from migrator.limits.rate_redis import conf_key, schedule_key
from migrator.limits.schedule import Schedule

HOLD = "hold"


def info_key(key: str) -> str:
    return f"{key}:schedinfo"


def redis_now(client: redis.Redis) -> float:
    sec, usec = client.time()
    return sec + usec / 1e6


def _opt(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def set_schedule(client: redis.Redis, key: str, schedule: Schedule) -> float:
    """Store ``schedule`` for the destination's limiter key, its relative windows counted
    from now (Redis's clock); clears an override. Returns that origin."""
    origin = redis_now(client)
    members: dict[str, float] = {}
    for at, index in schedule.compile(origin):
        w = schedule.windows[index] if index >= 0 else None
        fields = (
            [w.rate, None if w.mbps is None else w.mbps * 1e6, w.burst, w.assoc]
            if w is not None
            else [None] * 4
        )
        members["|".join([str(index), repr(at), *map(_opt, fields)])] = at
    info = {
        "text": schedule.text(),
        "timezone": schedule.timezone,
        "origin": origin,
        "windows": [w.label for w in schedule.windows],
    }
    pipe = client.pipeline(transaction=True)
    pipe.delete(schedule_key(key))
    pipe.zadd(schedule_key(key), members)
    pipe.set(info_key(key), json.dumps(info))
    pipe.hdel(conf_key(key), "override_until")
    pipe.execute()
    return origin


def _window_fields(client: redis.Redis, key: str) -> list[str] | None:
    """index, epoch, files/s, bytes/s, burst, assoc of the window in force (Redis TIME)."""
    now = redis_now(client)
    win = cast(list[bytes], client.zrevrangebyscore(schedule_key(key), now, "-inf", start=0, num=1))
    return win[0].decode().split("|") if win else None


def window_assoc(client: redis.Redis, key: str) -> int | None:
    """The association cap of the window in force (None: the window sets none, or there
    is no schedule). Read when an association is to be opened or its slot refreshed."""
    fields = _window_fields(client, key)
    return int(float(fields[5])) if fields and fields[5] else None


def window_paused(client: redis.Redis, key: str) -> bool:
    """Whether the window in force is ``rate=0`` (an override by `migrator limit` aside)."""
    fields = _window_fields(client, key)
    return bool(fields and fields[2] and float(fields[2]) == 0)


def clear_schedule(client: redis.Redis, key: str) -> None:
    client.delete(schedule_key(key), info_key(key))


def override(client: redis.Redis, key: str, *, hold: bool) -> float | None:
    """After `migrator limit` wrote new limits: they apply until the next change of window
    (returned), or until cleared (``hold``). None when the destination has no schedule."""
    now_at = current(client, key)
    if now_at is None:
        return None
    until = HOLD if hold or now_at.next_at is None else repr(now_at.next_at)
    client.hset(conf_key(key), "override_until", until)
    return None if until == HOLD else now_at.next_at


def clear_override(client: redis.Redis, key: str) -> None:
    client.hdel(conf_key(key), "override_until")


@dataclass(frozen=True)
class Now:
    """The schedule as it stands at Redis's ``now``."""

    now: float
    timezone: str
    label: str
    limits: str
    next_at: float | None
    next_label: str
    #: `migrator limit` overrides the window: until this instant, or "hold"
    overridden: str | None
    assoc: int | None


def _parse(member: bytes | str, labels: list[str]) -> tuple[str, str, int | None]:
    text = member.decode() if isinstance(member, bytes) else member
    index, _, _, _, _, assoc = text.split("|")
    label = labels[int(index)] if int(index) >= 0 else "(no window: the job's limits)"
    return label, limits_of(text), int(float(assoc)) if assoc else None


def limits_of(member: str) -> str:
    """``20 files/s, 2 associations`` (``paused``, ``no limit``) of a window change."""
    index, _, fps, bps, burst, assoc = member.split("|")
    parts = []
    if fps:
        parts.append("paused" if float(fps) == 0 else f"{float(fps):g} files/s")
    if bps:
        parts.append(f"{float(bps) / 1e6:g} MB/s")
    if burst:
        parts.append(f"burst {int(float(burst))}")
    if assoc:
        parts.append(f"{int(float(assoc))} associations")
    return ", ".join(parts) or ("no limit" if int(index) >= 0 else "")


def current(client: redis.Redis, key: str) -> Now | None:
    """The window in force and the next change; None when there is no schedule."""
    raw = client.get(info_key(key))
    if raw is None:
        return None
    info: dict[str, Any] = json.loads(raw)
    now = redis_now(client)
    skey = schedule_key(key)
    win = cast(list[bytes], client.zrevrangebyscore(skey, now, "-inf", start=0, num=1))
    nxt = cast(
        list[tuple[bytes, float]],
        client.zrangebyscore(skey, f"({now!r}", "+inf", start=0, num=1, withscores=True),
    )
    if not win:
        return None
    label, limits, assoc = _parse(win[0], info["windows"])
    next_label = _parse(nxt[0][0], info["windows"])[0] if nxt else ""
    ov = client.hget(conf_key(key), "override_until")
    overridden = None
    if ov is not None:
        text = ov.decode() if isinstance(ov, bytes) else str(ov)
        if text == HOLD or float(text) > now:
            overridden = text
    return Now(
        now, info["timezone"], label, limits, nxt[0][1] if nxt else None, next_label,
        overridden, assoc,
    )  # fmt: skip


def describe(state: Now) -> str:
    """``window "Mon-Fri 07:00-19:00 rate=20" (20 files/s) until 19:00:00 Europe/Berlin,
    then "*"``, as `status` prints it."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    text = f'window "{state.label}"' + (f" ({state.limits})" if state.limits else "")
    if state.overridden == HOLD:
        text += ", overridden by `migrator limit --hold` until `migrator limit --clear`"
    elif state.overridden is not None:
        text += ", overridden by `migrator limit` until the next change"
    if state.next_at is not None:
        when = datetime.fromtimestamp(state.next_at, ZoneInfo(state.timezone))
        text += f'; next change {when:%Y-%m-%d %H:%M:%S} {state.timezone}: "{state.next_label}"'
    return text
