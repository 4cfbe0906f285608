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

from migrator.errors import SourceError, TransientError
from migrator.sources.retrieve import (
    CHUNK,
    MAX_CLASSES,
    Counts,
    Received,
    Refused,
    SeriesGroup,
    unwritable,
)


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


class RefusingSource(FakeSource):
    """Refuses a whole list holding a UID it lacks by the final status (Orthanc: 0xC000)."""

    def __call__(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        if set(wanted) - self.holds:
            self.requests.append(dict(wanted))
            raise Refused("the source refused the C-GET (0xC000)")
        return super().__call__(study, series, wanted)


def test_a_list_refused_by_its_final_status_is_asked_for_in_halves(tmp_path: Path) -> None:
    sops = {f"1.2.3.{i}": "1.2.840.10008.5.1.4.1.1.2" for i in range(8)}
    source = RefusingSource(tmp_path, set(sops) - {"1.2.3.5"})
    group = SeriesGroup("1.2", "1.2.1", dict(sops))
    served = [group.take(s, source)[0] for s in sops if s != "1.2.3.5"]
    assert len(served) == 7
    with pytest.raises(SourceError, match="did not come after a retry"):
        group.take("1.2.3.5", source)
    # 8 refused, then halves down to the instance refused, then that one once more.
    assert [len(r) for r in source.requests] == [8, 4, 4, 2, 1, 1, 2, 1]
    assert source.requests[-1] == {"1.2.3.5": sops["1.2.3.5"]}


class NoAssociation(FakeSource):
    """The source will not open an association (a permanent A-ASSOCIATE-RJ, say)."""

    def __call__(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        self.requests.append(dict(wanted))
        raise SourceError("C-GET association: rejected the association: calling AE not known")


def test_an_association_refused_fails_the_request_once_without_halves(tmp_path: Path) -> None:
    """One failed association for 10 instances: each fails with its reason; the source is
    not asked for halves of the list (19 associations down to single instances)."""
    sops = {f"1.2.3.{i}": "1.2.840.10008.5.1.4.1.1.2" for i in range(10)}
    source = NoAssociation(tmp_path, set(sops))
    group = SeriesGroup("1.2", "1.2.1", dict(sops))
    for sop in sops:
        with pytest.raises(SourceError, match="calling AE not known"):
            group.take(sop, source)
    assert [len(r) for r in source.requests] == [10]


class BusyOnce(FakeSource):
    def __call__(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        if not self.requests:
            self.requests.append(dict(wanted))
            raise TransientError("C-GET association: rejected (transient): busy")
        return super().__call__(study, series, wanted)


def test_a_busy_source_leaves_the_instances_to_be_asked_again(tmp_path: Path) -> None:
    sops = {f"1.2.3.{i}": "1.2.840.10008.5.1.4.1.1.2" for i in range(4)}
    source = BusyOnce(tmp_path, set(sops))
    group = SeriesGroup("1.2", "1.2.1", dict(sops))
    with pytest.raises(TransientError):
        group.take("1.2.3.0", source)
    assert not group.failed
    assert len([group.take(s, source) for s in sops]) == 4
    assert [len(r) for r in source.requests] == [4, 4]


class FullDiskOnce(FakeSource):
    """Our spool could not hold one instance the source sent, the first time."""

    def __call__(self, study: str, series: str, wanted: dict[str, str]) -> Received:
        got = super().__call__(study, series, wanted)
        if len(self.requests) == 1:
            path, _ = got.files.pop("1.2.3.3")
            Path(path).unlink()
            full = OSError(28, "No space left on device")
            got.local_error = unwritable(str(self.tmp), full)
        return got


def test_an_instance_our_disk_could_not_hold_says_so_and_is_asked_again(
    tmp_path: Path,
) -> None:
    """The reason names our own disk, not the source ("the source sent N of M"), and the
    instance is not failed: its fetch is retried (the send's retries) and then served."""
    sops = {f"1.2.3.{i}": "1.2.840.10008.5.1.4.1.1.2" for i in range(6)}
    source = FullDiskOnce(tmp_path, set(sops))
    group = SeriesGroup("1.2", "1.2.1", dict(sops))
    with pytest.raises(TransientError) as err:
        group.take("1.2.3.3", source)
    assert str(err.value) == (
        f"cannot write the retrieved instance to {tmp_path}: No space left on device"
    )
    assert not group.failed
    assert len([group.take(s, source) for s in sops if s != "1.2.3.3"]) == 5
    assert len(source.requests) == 1  # the others came: not asked again
    path, _ = group.take("1.2.3.3", source)  # the disk has room again
    assert Path(path).read_bytes() == b"x"
    assert [len(r) for r in source.requests] == [6, 1]
