"""The one back-off between attempts: exponential, with jitter, capped."""

from __future__ import annotations

import random

#: The longest pause between two attempts, whatever the attempt number.
MAX_BACKOFF = 30.0


def backoff(base: float, attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` ≥ 1: the ones made):
    ``base`` doubled per attempt, capped, times a jitter of 0.5-1.5, so that senders turned
    away together (a busy PACS or source, one coming back) do not all return at once."""
    delay = min(MAX_BACKOFF, base * 2 ** (attempt - 1))
    return float(delay * random.uniform(0.5, 1.5))
