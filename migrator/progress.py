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
