"""The job progress line: files, bytes, rate and ETA from successive ledger samples."""

from __future__ import annotations

import time

from migrator.progress import JobProgress


def counts(settled: int, planned: int = 100, failed: int = 0) -> dict[str, int]:
    return {
        "planned": planned,
        "stored": settled - failed,
        "failed": failed,
        "skipped": 0,
        "in_flight": planned - settled,
        "bytes_stored": (settled - failed) * 1_000_000,
    }


def test_rate_and_eta_come_from_successive_samples() -> None:
    bar = JobProgress(enabled=False)
    first = bar.line(counts(10))
    assert "10/100 files" in first and "ETA -" in first
    time.sleep(0.5)
    second = bar.line(counts(60, failed=2))
    # 50 files in ~0.5 s, smoothed over ~5 s: a positive rate and a finite ETA.
    assert bar.files_per_s > 0 and "ETA -" not in second
    assert "60/100 files" in second and "2 failed" in second and "58.0 MB" in second
    done = bar.line(counts(100))
    assert "100/100" in done and "ETA -" in done
