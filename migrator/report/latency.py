"""C-STORE latencies in a report: a histogram of fixed bins, and percentiles.

The ledger of a large job holds tens of millions of outcomes, so latency percentiles come from
a bounded reservoir sample (exact up to ``LATENCY_SAMPLE`` files).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

#: Latencies kept for percentiles; beyond that a uniform random sample of this size.
LATENCY_SAMPLE = 100_000
#: Upper bounds (seconds) of the latency histogram's bins; the last bin is open-ended.
LATENCY_BINS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)


@dataclass(slots=True)
class Latency:
    """C-STORE latencies (request start to response) of the files that got a response."""

    count: int = 0
    total: float = 0.0
    maximum: float = 0.0
    bins: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BINS) + 1))
    sample: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)
        self.bins[_bin_index(seconds)] += 1
        if len(self.sample) < LATENCY_SAMPLE:
            self.sample.append(seconds)
        else:  # reservoir sampling: every latency has the same chance to be in the sample
            j = self._rng.randrange(self.count)
            if j < LATENCY_SAMPLE:
                self.sample[j] = seconds

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile (0 < p <= 100) of the sample; 0 when there is none."""
        if not self.sample:
            return 0.0
        ordered = sorted(self.sample)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    def bin_labels(self) -> list[str]:
        labels = []
        low = 0.0
        for high in LATENCY_BINS:
            labels.append(f"{_ms(low)}–{_ms(high)}")
            low = high
        labels.append(f"≥ {_ms(low)}")
        return labels


def _bin_index(seconds: float) -> int:
    # bisect_right: a latency equal to a bound belongs to the next bin ("< high").
    return bisect.bisect_right(LATENCY_BINS, seconds)


def _ms(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return f"{seconds:g} s"
