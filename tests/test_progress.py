"""The progress line: an honest rate over a sliding window, a line that fits the terminal,
plain periodic lines when stderr is not a terminal."""

from __future__ import annotations

import pytest

from migrator import progress
from migrator.progress import JobProgress, fit


def counts(settled: int, planned: int = 100, failed: int = 0) -> dict[str, int]:
    return {
        "planned": planned,
        "stored": settled - failed,
        "failed": failed,
        "skipped": 0,
        "in_flight": planned - settled,
        "bytes_stored": (settled - failed) * 1_000_000,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_the_rate_is_measured_over_a_window_not_from_zero(clock: Clock) -> None:
    bar = JobProgress(enabled=False)
    first = bar.line(counts(10), width=200)
    assert "10/100 files" in first and "ETA -" in first and "files/s" not in first
    clock.now += 0.5
    bar.line(counts(30), width=200)
    assert bar.files_per_s == 0  # the window spans half a second: no rate yet
    clock.now += 1.5
    second = bar.line(counts(60, failed=2), width=200)
    # 50 files in 2 s: 25 files/s from the first sample, not from a start at zero.
    assert bar.files_per_s == pytest.approx(25.0)
    assert "25 files/s" in second and "ETA 2s" in second and "2 failed" in second
    assert "58.0 MB" in second
    # A pause longer than the window: the rate is what moved within it (nothing), not a
    # number decaying from the old one.
    clock.now += 30
    bar.line(counts(60, failed=2), width=200)
    assert bar.files_per_s == 0
    done = bar.line(counts(100), width=200)
    assert "100/100" in done and "ETA -" in done


@pytest.mark.parametrize("width", [38, 60, 77, 120])
def test_the_line_fits_the_terminal(clock: Clock, width: int) -> None:
    bar = JobProgress(enabled=False)
    bar.line(counts(1000, planned=123456), width=width)
    clock.now += 3
    line = bar.line(counts(54321, planned=123456, failed=17), width=width)
    assert len(line) <= width, (width, line)
    assert "54321/123456 files" in line  # the most important part stays
    assert fit(["a" * 10, "b" * 10], 15) == "a" * 10


def test_plain_lines_when_stderr_is_not_a_terminal(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    bar = JobProgress(enabled=True, tty=False)
    for i in range(20):  # 20 polls within a few seconds: one line
        bar.update(counts(i))
        clock.now += 0.1
    clock.now += progress.PLAIN_EVERY
    bar.update(counts(50))
    bar.close(counts(100))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3, err  # the first, one PLAIN_EVERY later, and the last
    assert "\r" not in err and "\033" not in err
    assert lines[-1].strip().startswith("100/100 files")


def test_a_terminal_gets_one_line_redrawn_in_place(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    bar = JobProgress(enabled=True, tty=True)
    for i in range(5):
        bar.update(counts(i * 10))
        clock.now += 1
    bar.note("⚠ pacs failing")
    bar.close(counts(100))
    err = capsys.readouterr().err
    assert err.count("\r  ") == 6 and err.count("\033[K") >= 6
    assert err.count("\n") == 2  # the note's line, and the end
