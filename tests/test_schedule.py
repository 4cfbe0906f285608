"""Schedules (migrator/limits/schedule.py): parsing and compiling the windows, and a real
fleet (redis-server, 2 Celery worker processes, `run`'s own inline sender) following windows
that change every few seconds, seen at the receiver."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from migrator import synth
from migrator.errors import ConfigError
from migrator.keys import limiter_key
from migrator.limits import schedule, schedule_redis
from tests.enginehelpers import assert_invariant, common_args, finish, only_job, start_run
from tests.peers.redis import RedisPeer
from tests.storehelpers import run_migrator
from tests.test_pause import timed_scp

BERLIN = ZoneInfo("Europe/Berlin")


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


def test_first_matching_window_applies_in_its_time_zone() -> None:
    s = schedule.parse("tz=Europe/Berlin; Mon-Fri 07:00-19:00 rate=20 assoc=2; * rate=400 assoc=16")
    assert s.windows[0].rate == 20 and s.windows[0].assoc == 2
    assert s.at(_at("2026-12-07T06:59:59"), 0) == 1  # a Monday, before the window
    assert s.at(_at("2026-12-07T07:00:00"), 0) == 0
    assert s.at(_at("2026-12-07T18:59:59"), 0) == 0
    assert s.at(_at("2026-12-07T19:00:00"), 0) == 1
    assert s.at(_at("2026-12-05T12:00:00"), 0) == 1  # Saturday
    changes = s.compile(_at("2026-12-05T12:00:00"), horizon_days=3)
    when = [datetime.fromtimestamp(t, BERLIN).strftime("%a %H:%M") for t, _ in changes]
    assert when == ["Sat 12:00", "Mon 07:00", "Mon 19:00", "Tue 07:00"]


def test_changes_follow_daylight_saving_time() -> None:
    s = schedule.parse("tz=Europe/Berlin; 07:00-19:00 rate=1; *")
    changes = s.compile(_at("2026-03-28T06:00:00"), horizon_days=2)  # DST starts on the 29th
    starts = [t for t, index in changes if index == 0]
    assert starts[1] - starts[0] == 23 * 3600  # 07:00 to 07:00 over the short night


def test_relative_and_second_granular_windows() -> None:
    s = schedule.parse("+0s-6s rate=20; +6s-9s rate=0; 10:00:05-10:00:07 rate=3; *")
    # 1000 s after the epoch is 00:16:40 UTC, the default zone.
    assert s.compile(1000.0, horizon_days=1) == [
        (1000.0, 0), (1006.0, 1), (1009.0, 3), (36005.0, 2), (36007.0, 3)
    ]  # fmt: skip
    assert s.windows[1].rate == 0


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("Mon-Fri 07:00-19:00 speed=3", "unknown 'speed'"),
        ("Mon-Fir rate=3", "'Mon-Fir'"),
        ("25:00-26:00 rate=1", "not a time of day"),
        ("tz=Mars/Olympus; * rate=1", "unknown time zone"),
        ("* assoc=1.5", "whole number"),
        ("+10s-5s rate=1", "ends before it starts"),
        ("  ;  ", "no window"),
    ],
)
def test_bad_schedules_say_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        schedule.parse(text)


def test_a_yaml_schedule_is_the_same_as_inline(tmp_path: Path) -> None:
    path = tmp_path / "schedule.yaml"
    path.write_text(
        "timezone: Europe/Berlin\n"
        "windows:\n"
        "  - days: Mon-Fri\n    hours: '07:00-19:00'\n    rate: 20\n    assoc: 2\n"
        "  - '* rate=400 assoc=16'\n"
    )
    inline = "tz=Europe/Berlin; Mon-Fri 07:00-19:00 rate=20 assoc=2; * rate=400 assoc=16"
    assert schedule.load(str(path)).text() == schedule.parse(inline).text()
    bad = run_migrator("run", tmp_path, "--host", "x", "--schedule", "Mon rate=x", "--dry-run")
    assert bad.returncode == 2 and "'rate=x'" in bad.stderr, bad.stderr


#: Windows of a few seconds: (start, end, files/s); 0 = a paused window.
#: The first one sees the job start: `run` plans (~1 s under load), sends from its own
#: process while the workers boot, and hands over to them, whose first files come ~0.5-1 s
#: after they report ready (their processes' first batch); the limiter does not bank the
#: idle time (GCRA: at most the burst). Measured (docs/weeks-long.md): 0, 14, 7, 7 files in
#: the first seconds, then 22, 20 once the workers send: start-up, not the limiter. So the
#: first window is checked for its cap, and measured from the second after a worker's first
#: file; it is long because under a CI stress test that came up to 7 s after the start.
WARM_UP = (0, 10, 20)
WINDOWS = [(10, 13, 0), (13, 18, 40), (18, 21, 0), (21, 26, 20)]


@pytest.mark.timeout(240)
def test_a_fleet_follows_windows_that_change_every_few_seconds(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    synth.write_corpus(tmp_path / "in", count=500, size="tiny", seed=22)
    text = "; ".join(
        [f"+{a}s-{b}s rate={r}" for a, b, r in [WARM_UP, *WINDOWS]] + ["*"]  # then no limit
    )
    url = redis_server.url
    with timed_scp() as scp:
        dest = common_args(("127.0.0.1", scp.port), "COUNTING")
        proc = start_run(
            tmp_path / "in", *dest, "--redis-url", url, "--workers", "2",  # + inline sending
            "--schedule", text, "--burst", "2", "--batch-files", "10", "--no-preflight",
        )  # fmt: skip
        ledger = only_job(redis_server.client())
        key = limiter_key(f"127.0.0.1:{scp.port}:COUNTING")
        while not ledger.client.exists(schedule_redis.info_key(key)):
            time.sleep(0.01)
        time.sleep(2)
        status = run_migrator("status", ledger.job_id, "--redis-url", url, "--json")
        window = json.loads(status.stdout)["window"]
        assert window.startswith('window "+0s-10s rate=20" (20 files/s); next change'), window
        origin = json.loads(ledger.client.get(schedule_redis.info_key(key)) or b"{}")["origin"]
        # A rate=0 window (10-13 s): the PACS is left alone. The senders stop at their next
        # file and their idle closers close within 0.5 s; on a loaded 2-core machine (a CI
        # stress run) that took more than 2 s once, so: closed before the window ends.
        time.sleep(max(0.0, origin + 10.5 - time.time()))
        while scp.open_now and time.time() < origin + 12.8:
            time.sleep(0.05)
        assert scp.open_now == 0, f"{scp.open_now} associations open in a rate=0 window"
        code, out = finish(proc, timeout=120)
    assert code == 0, out
    assert scp.distinct == 500
    assert_invariant(ledger)
    senders = Counter(
        extra.get("worker", "").split(":")[1] for _, _, extra in ledger.iter_outcomes()
    )
    # The two workers, and `run`'s own inline sender when it sent: it sends only while the
    # workers boot, and under load (a CI stress run) they can be up before its first file.
    assert len(set(senders) - {str(proc.pid)}) == 2, senders
    # The report: the time the job spent in each window and what it stored in it.
    made = run_migrator("report", ledger.job_id, "--redis-url", url, "--format", "json")
    rows = json.loads(made.stdout)["schedule"]
    spans = {f"+{a}s-{b}s rate={r}": b - a for a, b, r in [WARM_UP, *WINDOWS]}
    assert [r["window"] for r in rows] == [*spans, "*"], rows
    for row in rows[:-1]:
        assert abs(row["seconds"] - spans[row["window"]]) <= 0.2, rows
    assert sum(r["files"] for r in rows) == 500, rows
    # Each file counts in the window its answer came in: a paused window holds at most
    # the answers on the wire at the change (one per association: 3 senders x 2 lanes).
    for row in rows:
        if row["limits"] == "paused":
            assert row["files"] <= 6, rows
    # ...and on the HTML throughput chart: each window's span shaded, labelled with its limits.
    html = run_migrator("report", ledger.job_id, "--redis-url", url, "--format", "html").stdout
    bands = re.findall(r'<rect class="window" data-from="([\d.]+)" data-to="([\d.]+)" '
                       r'data-label="([^"]*)"', html)  # fmt: skip
    assert [label.split(" (")[0] for _, _, label in bands] == [*spans, "*"], bands
    for (lo, hi, label), row in zip(bands, rows, strict=True):
        assert row["limits"] in label, (label, row)
        # The chart starts at the first stored file's second, after the first window began
        # (and ends at the last's): the windows between are drawn whole.
        if row is not rows[0] and row is not rows[-1]:
            assert abs(float(hi) - float(lo) - row["seconds"]) <= 0.11, (bands, rows)
    per_second = Counter(int(t - origin) for t in scp.arrivals)
    timeline = [per_second.get(s, 0) for s in range(29)]
    # The first window: never above its rate (the second the sending began holds the
    # burst), and at it once the workers send (from the second after their first file;
    # on a machine so loaded that they began less than 2 s before its end, not measured).
    pid = str(proc.pid)
    first = min(e["at"] for _, _, e in ledger.iter_outcomes() if pid not in e.get("worker", ""))
    begun = int(min(scp.arrivals) - origin) + 1
    capped = sum(per_second.get(s, 0) for s in range(begun, WARM_UP[1])) / (WARM_UP[1] - begun)
    assert capped <= 1.1 * WARM_UP[2], (capped, timeline)
    warm = (int(first - origin) + 1, WARM_UP[1], WARM_UP[2])
    measured = [warm, *WINDOWS] if warm[1] - warm[0] >= 2 else WINDOWS
    for start, end, rate in measured:
        if rate == 0:
            # Only requests let go before the change may land in the window: at most one
            # per association (3 senders x 2 lanes), in its first second. (Not within 0.2 s:
            # under stress-ng two came 0.205 s in once; a sender that went on would send
            # 20-40 files a second.)
            late = [t - origin for t in scp.arrivals if start <= t - origin < end]
            assert len(late) <= 6 and all(t < start + 1.0 for t in late), (start, late, timeline)
            continue
        inner = range(start + 1, end) if start != warm[0] else range(start, end)
        got = sum(per_second.get(s, 0) for s in inner) / len(inner)
        # Never above the window's rate: the limiter's promise, strict.
        assert got <= 1.1 * rate, (rate, got, start, timeline)
        # ...and at it: its best second holds the rate, which tells it from its neighbours'
        # (20 after 40, 40 after 20). Not the average: under stress-ng --cpu 2 this test's
        # in-process SCP (pynetdicom) once answered every association 1.3 s late at once
        # (traced: the workers' requests left on time, all four answers came together), and
        # a 40 files/s window then averaged 34.5.
        best = max(per_second.get(s, 0) for s in inner)
        assert best >= 0.9 * rate, (rate, best, start, timeline)


@pytest.mark.timeout(240)
def test_the_association_cap_follows_the_window(tmp_path: Path, redis_server: RedisPeer) -> None:
    synth.write_corpus(tmp_path / "in", count=400, size="tiny", seed=23)
    url = redis_server.url
    with timed_scp(delay=0.02) as scp:
        dest = common_args(("127.0.0.1", scp.port), "COUNTING")
        proc = start_run(
            tmp_path / "in", *dest, "--redis-url", url, "--workers", "2", "-j", "2",
            "--schedule", "+0s-5s assoc=1; * assoc=3", "--batch-files", "10", "--no-preflight",
        )  # fmt: skip
        code, out = finish(proc, timeout=120)
    assert code == 0, out
    assert scp.distinct == 400
    ledger = only_job(redis_server.client())
    key = limiter_key(f"127.0.0.1:{scp.port}:COUNTING")
    origin = json.loads(ledger.client.get(schedule_redis.info_key(key)) or b"{}")["origin"]
    first = [n for t, n in scp.open_at if t - origin < 5]
    later = [n for t, n in scp.open_at if t - origin >= 6]
    assert first and max(first) == 1, first  # 3 senders of 2 lanes each, 1 association
    assert later and 2 <= max(later) <= 3, (Counter(first), Counter(later))


def test_limit_overrides_the_window_until_the_next_one_or_until_cleared(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    from migrator.errors import ScheduledPause
    from migrator.limits.rate import Limits
    from migrator.limits.rate_redis import RedisLimiter

    synth.write_corpus(tmp_path / "in", count=3, size="tiny", seed=24)
    url = redis_server.url
    plan = run_migrator(
        "plan", tmp_path / "in", "--host", "127.0.0.1", "--port", "9", "--called-ae", "X",
        "--redis-url", url, "--no-preflight", "--schedule", "+0s-10s rate=0; +10s-60s rate=5; *",
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    ledger = only_job(redis_server.client())
    key = limiter_key("127.0.0.1:9:X")
    limiter = RedisLimiter(ledger.client, key, Limits())
    with pytest.raises(ScheduledPause):
        limiter.reserve()  # the paused window
    lifted = run_migrator("limit", ledger.job_id, "--redis-url", url, "--rate-limit", "0")
    assert lifted.returncode == 0 and "next window" in lifted.stdout, lifted.stdout
    assert limiter.reserve() == 0.0  # overridden: no limit
    status = run_migrator("status", ledger.job_id, "--redis-url", url, "--json")
    assert "overridden by `migrator limit` until the next change" in status.stdout
    origin = json.loads(ledger.client.get(schedule_redis.info_key(key)) or b"{}")["origin"]
    assert time.time() < origin + 10, "too slow to test the override in the first window"
    time.sleep(origin + 10.2 - time.time())  # the next window ends it: 5 files/s, burst 10
    waits = [limiter.reserve() for _ in range(12)]
    assert waits[:10] == [0.0] * 10 and 0.1 < waits[11] <= 0.45, waits
    held = run_migrator("limit", ledger.job_id, "--redis-url", url, "--rate-limit", "0", "--hold")
    assert held.returncode == 0, held.stderr
    assert "--hold" in run_migrator("status", ledger.job_id, "--redis-url", url).stdout
    time.sleep(1.1)
    assert limiter.reserve() == 0.0
    cleared = run_migrator("limit", ledger.job_id, "--redis-url", url, "--clear")
    assert cleared.returncode == 0 and 'window "+10s-60s rate=5"' in cleared.stdout, cleared.stdout
    time.sleep(1.0)  # (a process trusts "no limit" for up to a second)
    waits = [limiter.reserve() for _ in range(12)]
    assert waits[:10] == [0.0] * 10 and waits[11] > 0.1, waits  # the window's 5 files/s
