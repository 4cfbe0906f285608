"""Fast unit checks of the per-series retrieval bookkeeping (migrator/sources/retrieve.py)
with a fake source; the real archives are in test_source_dimse_retrieve.py and
test_source_dcmqrscp.py.

What matters to a user: requests stay within an association's 128 presentation contexts
and a bounded spool, every instance ends as served or failed with a reason, and an instance
that did not come is asked for exactly once more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.errors import SourceError
from migrator.sources.retrieve import CHUNK, MAX_CLASSES, Counts, Received, SeriesGroup


class FakeSource:
    def __init__(self, tmp_path: Path, holds: set[str]) -> None:
        self.tmp = tmp_path
        self.holds = holds
        self.requests: list[dict[str, str]] = []

    def __call__(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        self.requests.append(dict(wanted))
        got = Received(counts=Counts(status=0))
        for sop in wanted:
            if sop in self.holds:
                path = self.tmp / sop
                path.write_bytes(b"x")
                got.files[sop] = (str(path), 1)
        got.counts.completed = len(got.files)
        return got


def test_requests_stay_within_the_contexts_and_the_spool_bound(tmp_path: Path) -> None:
    """150 instances of 14 SOP classes: each request <= CHUNK instances and MAX_CLASSES
    classes (11 x 11 syntaxes + 2 <= 128 contexts); made as the instances are fetched."""
    classes = {f"1.2.3.{i}": f"1.2.840.10008.5.1.4.1.1.{i % 14 + 1}" for i in range(150)}
    group = SeriesGroup("1.2", "1.2.1", dict(classes))
    source = FakeSource(tmp_path, set(classes))
    group.take("1.2.3.0", source)
    assert len(source.requests) == 1  # lazily: only the request holding what is fetched
    for sop in classes:
        if sop != "1.2.3.0":
            group.take(sop, source)
    assert sum(len(r) for r in source.requests) == 150
    for r in source.requests:
        assert len(r) <= CHUNK and len(set(r.values())) <= MAX_CLASSES
    assert MAX_CLASSES * 11 + 2 <= 128


def test_a_missing_instance_is_asked_once_more_then_fails(tmp_path: Path) -> None:
    sops = {f"1.2.3.{i}": "1.2.840.10008.5.1.4.1.1.2" for i in range(10)}
    source = FakeSource(tmp_path, set(sops) - {"1.2.3.7"})
    group = SeriesGroup("1.2", "1.2.1", dict(sops))
    served = [group.take(s, source)[0] for s in sops if s != "1.2.3.7"]
    assert len(served) == 9
    with pytest.raises(SourceError) as err:
        group.take("1.2.3.7", source)
    assert [len(r) for r in source.requests] == [10, 1]
    assert str(err.value).startswith(
        "the source sent 9 of 10 instances of series 1.2.1 asked for; this one did not come "
        "after a retry"
    )
    # Failed once, said again without asking the source again.
    with pytest.raises(SourceError):
        group.take("1.2.3.7", source)
    assert len(source.requests) == 2
