"""A small thread-safe work scheduler: FIFO by listing order, with delayed retries.

Retries re-enter the queue with a not-before time (backoff), so other files keep flowing
while one waits. ``get`` returns None once nothing is queued and nothing is in flight, or
once ``stop`` was called.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class Scheduler(Generic[T]):
    def __init__(self, items: list[T]) -> None:
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, T]] = [(0.0, next(self._seq), it) for it in items]
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stopped = False

    def get(self, *, block: bool = True) -> T | None:
        """The next ready item; None when everything is done (or stopped), or, with
        ``block=False``, when nothing is ready right now."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                if self._heap:
                    ready_at = self._heap[0][0]
                    now = time.monotonic()
                    if ready_at <= now:
                        _, _, item = heapq.heappop(self._heap)
                        self._in_flight += 1
                        return item
                    if not block:
                        return None
                    self._cond.wait(ready_at - now)
                    continue
                if self._in_flight == 0 or not block:
                    return None
                self._cond.wait()

    def done(self) -> None:
        """The item last returned by ``get`` is finished."""
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def retry(self, item: T, delay: float) -> None:
        """Put an item back, to be handed out again after ``delay`` seconds."""
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), item))
            self._in_flight -= 1
            self._cond.notify_all()

    def stop(self) -> list[T]:
        """Stop handing out work; return what was still queued."""
        with self._cond:
            self._stopped = True
            left = [item for _, _, item in sorted(self._heap)]
            self._heap.clear()
            self._cond.notify_all()
            return left
