"""A one-line progress display on stderr (only on a terminal)."""

from __future__ import annotations

import sys
import threading
import time

from migrator.outcomes import FileOutcome, State
from migrator.units import human_bytes


class Progress:
    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.total = 0
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def start(self, total: int) -> None:
        self.total = total
        self._t0 = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
            self._thread.start()

    def add(self, outcome: FileOutcome) -> None:
        with self._lock:
            self.done += 1
            if outcome.state is State.FAILED:
                self.failed += 1
            if outcome.state is State.STORED:
                self.bytes += outcome.bytes

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._draw()

    def _draw(self) -> None:
        elapsed = max(1e-6, time.monotonic() - self._t0)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "█" * filled + "░" * (width - filled)
        sys.stderr.write(
            f"\r  {bar} {self.done}/{self.total} files, {human_bytes(self.bytes)}, "
            f"{rate:.0f} files/s, {self.bytes / 1e6 / elapsed:.1f} MB/s, "
            f"{self.failed} failed, ETA {eta:.0f}s   "
        )
        sys.stderr.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw()
            sys.stderr.write("\n")


class JobProgress:
    """A progress line for a distributed job, drawn from the ledger's counters.

    Works from any machine pointed at the job's Redis (``run`` and ``status --watch``): the
    rate is measured between two samples of the counters (smoothed), not taken from one
    process's own sends.
    """

    def __init__(self, *, enabled: bool, tty: bool | None = None) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._last: tuple[float, int, int] | None = None  # (time, settled, bytes)
        self.files_per_s = 0.0
        self.bytes_per_s = 0.0

    def line(self, counts: dict[str, int]) -> str:
        now = time.monotonic()
        settled = counts["stored"] + counts["failed"] + counts["skipped"]
        nbytes = counts.get("bytes_stored", 0)
        if self._last is not None and now - self._last[0] > 0.05:
            dt = now - self._last[0]
            alpha = min(1.0, dt / 5.0)  # ~5 s smoothing: steady numbers, still responsive
            self.files_per_s += alpha * ((settled - self._last[1]) / dt - self.files_per_s)
            self.bytes_per_s += alpha * ((nbytes - self._last[2]) / dt - self.bytes_per_s)
        if self._last is None or now - self._last[0] > 0.05:
            self._last = (now, settled, nbytes)
        total = max(1, counts["planned"])
        width = 30
        filled = int(width * settled / total)
        eta = (
            f"ETA {counts['in_flight'] / self.files_per_s:.0f}s"
            if self.files_per_s > 0.01 and counts["in_flight"] > 0
            else "ETA -"
        )
        return (
            f"{'█' * filled}{'░' * (width - filled)} {settled}/{counts['planned']} files, "
            f"{human_bytes(nbytes)}, {self.files_per_s:.0f} files/s, "
            f"{human_bytes(self.bytes_per_s)}/s, {counts['failed']} failed, "
            f"{counts['skipped']} skipped, {eta}"
        )

    def update(self, counts: dict[str, int]) -> None:
        if not self.enabled:
            return
        text = self.line(counts)
        if self.tty:
            sys.stderr.write(f"\r  {text}   ")
        else:
            sys.stderr.write(f"  {text}\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        """A line of its own (the destination stopped answering...), shown also when the
        progress line is not (not a terminal); the progress line is drawn again below it."""
        if self.enabled and self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
