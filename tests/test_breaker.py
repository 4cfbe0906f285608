"""A PACS that keeps failing stops the fleet, is probed, and a job can give up on it; a job
that did not finish never says it did (issue 15).

Real processes: `migrator run` on the embedded default, its worker processes, and
`migrator scp` answering 0xA700 to every file (a full disk) or never answering (a hung
PACS); the per-file breaker logic on its own, with a clock, for the probe schedule.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from migrator import synth
from migrator.limits.breaker import FIRST_PROBE, MAX_PROBE, THRESHOLD, LocalBreaker
from tests.enginehelpers import common_args, finish, start_run
from tests.peers.counting_scp import counting_scp
from tests.peers.migrator_scp import start_migrator_scp
from tests.storehelpers import load_report

pytestmark = pytest.mark.timeout(180)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_and_probes_with_growing_pauses() -> None:
    clock = Clock()
    b = LocalBreaker(clock)
    for _ in range(THRESHOLD - 1):
        b.failed("0xA700")
    b.succeeded()  # a success in between: the count starts again
    for _ in range(THRESHOLD - 1):
        b.failed("0xA700")
    assert b.state() is None
    b.failed("0xA700 Out of resources")
    state = b.state()
    assert state is not None and state.reason == "0xA700 Out of resources"
    assert not b.try_probe()  # not due yet
    pauses = []
    for _ in range(6):
        clock.now = b.state().probe_at  # type: ignore[union-attr]
        assert b.try_probe()
        b.probe_failed("0xA700")
        pauses.append(b.state().interval)  # type: ignore[union-attr]
    assert pauses == [min(MAX_PROBE, FIRST_PROBE * 2**n) for n in range(1, 7)]
    b.succeeded()
    assert b.state() is None


def _corpus(folder: Path, count: int, seed: int) -> Path:
    synth.write_corpus(folder, count=count, size="tiny", seed=seed)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "extra"),
    [
        (("--fail-status", "A700"), ()),
        # Answers nothing (each C-STORE waits an hour); the sender's DIMSE timeout is 1 s.
        (("--response-delay", "3600000"), ("--dimse-timeout", "1s")),
    ],
    ids=["out-of-resources", "silent"],
)
def test_a_failing_pacs_trips_the_breaker_and_the_job_gives_up_with_every_file_accounted(
    tmp_path: Path, fault: tuple[str, ...], extra: tuple[str, ...]
) -> None:
    inputs = _corpus(tmp_path / "in", 300, seed=1502)
    report = tmp_path / "r.json"
    with start_migrator_scp(tmp_path / "scp", *fault) as scp:
        t0 = time.monotonic()
        proc = start_run(
            inputs,
            *common_args((scp.host, scp.port), scp.ae_title, *extra),
            "--state-dir",
            str(tmp_path / "state"),
            "--workers",
            "2",
            "--batch-files",
            "20",
            "--give-up-after",
            "3s",
            "--report",
            str(report),
        )
        code, out = finish(proc, timeout=150)
        elapsed = time.monotonic() - t0
    # The run says what is happening, once, with the reason and the files waiting.
    said = re.search(
        r"⚠ 127\.0\.0\.1:\d+ \(\S+\) failing since [\d:]+ \((.+)\); sending paused", out
    )
    assert said is not None, out
    assert elapsed < 120, (elapsed, out)
    # Nothing could be stored: exit 3 as for a PACS that cannot be reached, with the advice.
    assert code == 3 and "Once fixed: migrator retry" in out, out
    data = load_report(report)  # planned = stored + failed + skipped, one entry per file
    assert data["totals"]["planned"] == 300 and data["totals"]["stored"] == 0, data["totals"]
    reasons = {f["reason"] for f in data["files"]}
    assert any(r.startswith("gave up: ") and "--give-up-after 3 s" in r for r in reasons), reasons
    # The workers' log is kept with the job, private, and its last lines are shown.
    log = tmp_path / "state" / "workers.log"
    assert log.stat().st_mode & 0o777 == 0o600, oct(log.stat().st_mode)
    assert f"Last lines of the workers' log ({log}):" in out, out


@pytest.mark.slow
def test_a_job_that_did_not_finish_says_so_and_exits_6(tmp_path: Path) -> None:
    """`run --timeout` ends the wait with files in flight: the summary must not say ✓."""
    inputs = _corpus(tmp_path / "in", 400, seed=1503)
    with counting_scp(response_delay=0.05) as scp:
        proc = start_run(
            inputs,
            *common_args(("127.0.0.1", scp.port), "COUNTING"),
            "--state-dir",
            str(tmp_path / "state"),
            "--workers",
            "1",
            "-j",
            "1",
            "--timeout",
            "3s",
        )
        code, out = finish(proc, timeout=60)
    assert code == 6, out
    assert "⚠ Incomplete:" in out and "still in flight" in out, out
    assert "✓" not in out, out
    m = re.search(
        r"Invariant:\s+⚠ planned (\d+) = stored (\d+) \+ failed (\d+) \+ skipped (\d+) "
        r"\+ in flight (\d+)",
        out,
    )
    assert m is not None, out
    planned, *parts = map(int, m.groups())
    assert planned == 400 == sum(parts) and parts[-1] > 0, out
    assert "run the same command again to resume" in out, out
