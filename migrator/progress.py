"""Progress on stderr: one line redrawn in place on a terminal, plain periodic lines else.

No progress library: the two candidates cost start-up (measured in `migrator run`'s
context: tqdm +5–8 ms of imports, rich.progress +26–48 ms) for what is ~250 lines here, and
neither is a dependency of the project. What the line must do, and does:

- the rate is measured over a sliding window (the last ``WINDOW`` seconds of samples), not
  from zero at start-up nor decaying after a pause: no rate (and no ETA) is shown until the
  window spans a second, then files/s and MB/s over it;
- it fits the terminal: the bar shrinks, then the least useful parts go, so a redraw never
  wraps onto a new line (80 columns included); it is cleared to the end of the line;
- when stderr is not a terminal (a log file, CI), a plain line every ``PLAIN_EVERY``
  seconds and at the end, instead of carriage returns.
"""

from __future__ import annotations

import collections
import shutil
import sys
import threading
import time
from collections.abc import Callable

from migrator.outcomes import FileOutcome, State
from migrator.units import human_bytes

#: Seconds of samples the rate is measured over.
WINDOW = 10.0
#: Seconds between two plain lines when stderr is not a terminal.
PLAIN_EVERY = 10.0
#: Seconds between two redraws on a terminal.
REDRAW_EVERY = 0.2


def fit(parts: list[str], width: int, bar: tuple[int, int] | None = None) -> str:
    """``parts`` joined by ", " within ``width`` columns, the bar (done, total) first when
    there is room: the bar shrinks from 30 to 10 cells, then parts are dropped from the
    end (the most important come first)."""
    parts = list(parts)
    while True:
        text = ", ".join(parts)
        room = width - len(text) - 1
        if bar is not None and room >= 10:
            cells = min(30, room)
            done, total = bar
            filled = int(cells * done / total) if total else cells
            return f"{'█' * filled}{'░' * (cells - filled)} {text}"
        if len(text) <= width or len(parts) <= 1:
            return text[: max(0, width)]
        parts.pop()


def terminal_width() -> int:
    return max(20, shutil.get_terminal_size((80, 24)).columns - 3)


class Window:
    """Rates over the last ``span`` seconds of (time, files, bytes) samples."""

    def __init__(self, span: float = WINDOW) -> None:
        self.span = span
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque()

    def add(self, files: int, nbytes: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, files, nbytes))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.span:
            self.samples.popleft()

    def rates(self) -> tuple[float, float] | None:
        """(files/s, bytes/s) over the window; None until it spans a second."""
        if len(self.samples) < 2:
            return None
        t0, f0, b0 = self.samples[0]
        t1, f1, b1 = self.samples[-1]
        if t1 - t0 < 1.0:
            return None
        return (f1 - f0) / (t1 - t0), (b1 - b0) / (t1 - t0)


class _Output:
    """Where lines go: redrawn in place on a terminal, plain and periodic otherwise."""

    def __init__(self, tty: bool | None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._last = float("-inf")
        self._drawn = False

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        every = REDRAW_EVERY if self.tty else PLAIN_EVERY
        if not force and now - self._last < every:
            return
        self._last = now
        if self.tty:
            sys.stderr.write(f"\r  {text}\033[K")
            self._drawn = True
        else:
            sys.stderr.write(f"  {text}\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty and self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False


class Progress:
    """`store`'s progress: counted from its own outcomes."""

    def __init__(self, *, enabled: bool, tty: bool | None = None) -> None:
        self.enabled = enabled
        self.total = 0
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window = Window()
        self._out = _Output(tty)

    def start(self, total: int) -> None:
        self.total = total
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

    def line(self, width: int | None = None) -> str:
        with self._lock:
            done, nbytes, failed = self.done, self.bytes, self.failed
        self._window.add(done, nbytes)
        rates = self._window.rates()
        parts = [f"{done}/{self.total} files", f"{failed} failed"]
        if rates is None:
            parts += ["measuring the rate…"]
        else:
            files_s, bytes_s = rates
            eta = (self.total - done) / files_s if files_s > 0 else None
            parts += [f"{files_s:.0f} files/s", f"{human_bytes(bytes_s)}/s"]
            parts.append(f"ETA {eta:.0f}s" if eta is not None else "ETA -")
        parts.append(human_bytes(nbytes))
        return fit(parts, width or terminal_width(), (done, self.total))

    def _loop(self) -> None:
        while not self._stop.wait(REDRAW_EVERY):
            self._out.show(self.line())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._out.show(self.line(), force=True)
            self._out.end()


class JobProgress:
    """A progress line for a distributed job, drawn from the ledger's counters.

    Works from any machine pointed at the job's Redis (``run``, ``retry`` and ``status
    --watch``): the rate is measured over the last ``WINDOW`` seconds of samples of the
    counters, not taken from one process's own sends. ``follow`` draws it from a thread
    while the caller is busy (`run` sending batches itself while its workers boot).
    """

    def __init__(self, *, enabled: bool, tty: bool | None = None) -> None:
        self.enabled = enabled
        self.files_per_s = 0.0
        self.bytes_per_s = 0.0
        self._window = Window()
        self._out = _Output(tty)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def tty(self) -> bool:
        return self._out.tty

    def line(self, counts: dict[str, int], width: int | None = None) -> str:
        settled = counts["stored"] + counts["failed"] + counts["skipped"]
        nbytes = counts.get("bytes_stored", 0)
        self._window.add(settled, nbytes)
        rates = self._window.rates()
        parts = [
            f"{settled}/{counts['planned']} files",
            f"{counts['failed']} failed",
            f"{counts['skipped']} skipped",
        ]
        if rates is None:
            self.files_per_s = self.bytes_per_s = 0.0
            parts.append("ETA -")
        else:
            self.files_per_s, self.bytes_per_s = rates
            eta = (
                f"ETA {counts['in_flight'] / self.files_per_s:.0f}s"
                if self.files_per_s > 0.01 and counts["in_flight"] > 0
                else "ETA -"
            )
            parts += [
                f"{self.files_per_s:.0f} files/s",
                f"{human_bytes(self.bytes_per_s)}/s",
                eta,
            ]
        parts.append(human_bytes(nbytes))
        return fit(parts, width or terminal_width(), (settled, max(1, counts["planned"])))

    def update(self, counts: dict[str, int], *, force: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._out.show(self.line(counts), force=force)

    def follow(self, read: Callable[[], dict[str, int]], every: float = 0.25) -> None:
        """Draw from ``read()`` every ``every`` seconds in a thread, until ``unfollow``."""
        if not self.enabled or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.update(read())
                except Exception:  # a progress line never ends a run
                    return

        self._stop.clear()
        self._thread = threading.Thread(target=loop, daemon=True, name="progress")
        self._thread.start()

    def unfollow(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def note(self, text: str) -> None:
        """A line of its own (the destination stopped answering...), shown also when the
        progress line is not (not a terminal); the progress line is drawn again below it."""
        with self._lock:
            if self.enabled and self.tty:
                sys.stderr.write("\r\033[K")
            sys.stderr.write(f"{text}\n")
            sys.stderr.flush()

    def close(self, counts: dict[str, int] | None = None) -> None:
        """The last line (``counts``: the final state, drawn once more), then a newline."""
        self.unfollow()
        if not self.enabled:
            return
        with self._lock:
            if counts is not None:
                self._out.show(self.line(counts), force=True)
            self._out.end()
