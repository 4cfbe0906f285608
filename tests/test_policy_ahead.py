"""Reading ahead: while every lane waits for its answer, the per-file policy makes the next
file ready (fetch, re-inspect, transform), so that a coercion or a download overlaps the
destination's time instead of following it. The file is then settled exactly as if it had
been read at its start. Connections are socket pairs answering after a scripted delay
(tests/test_policy_collect.py); the same rules through real peers and both front ends:
test_coerce_peers.py."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from migrator.coerce import CoercionError, CoercionSkipped
from migrator.dicomfile import DicomHeader
from migrator.limits.adaptive import Autotune
from migrator.limits.rate import NullLimiter
from migrator.outcomes import FileOutcome, State
from migrator.settings import Settings
from migrator.sources.base import Payload, SourceItem
from migrator.transfer.destination import SendResult
from migrator.transfer.policy import Ended, Transfer
from migrator.transfer.pool import ConnectionPool
from tests.test_policy_collect import SocketConn, SocketDestination
from tests.test_policy_unit import Source, jobs

ANSWER_S = 0.2


class ExitSource(Source):
    """Its payloads are let go only by their context's ``__exit__``, as a class-based
    context's would be: not when a forgotten context is garbage-collected (which would close
    the parent's generator-based one in CPython, and hide a missing close)."""

    def __init__(self) -> None:
        super().__init__()
        #: Holds entered and not exited: a set of held URIs would hide a file fetched
        #: twice whose first hold was never let go
        self.open_holds = 0

    def fetch(self, item: SourceItem) -> _Hold:  # type: ignore[override]
        return _Hold(self, item.uri)


class _Hold:
    def __init__(self, source: ExitSource, uri: str, payload: Payload | None = None) -> None:
        self.source, self.uri = source, uri
        self.payload = payload or Payload(data=b"same bytes")

    def __enter__(self) -> Payload:
        self.source.held.add(self.uri)
        self.source.open_holds += 1
        self.source.most_held = max(self.source.most_held, len(self.source.held))
        return self.payload

    def __exit__(self, *exc: object) -> None:
        self.source.held.discard(self.uri)
        self.source.open_holds -= 1


def send(
    n: int,
    transform: Callable[[DicomHeader, Payload], tuple[DicomHeader, Payload]],
    *,
    stop_after: int = 0,
    source: Source | None = None,
    held_at_record: dict[str, set[str]] | None = None,
    on_record: Callable[[FileOutcome], None] | None = None,
    autotune: Autotune | None = None,
) -> tuple[dict[str, FileOutcome], Ended, SocketConn]:
    """``n`` files over one lane whose every answer takes ANSWER_S; ``stop_after``: a stop
    is requested once that many files are settled; ``held_at_record``: the payloads held
    when each outcome was recorded."""
    source = source or Source()
    dest = SocketDestination(lambda _: {f"1.2.3.{i}": ANSWER_S for i in range(n)})
    got: dict[str, FileOutcome] = {}

    def record(_job: object, o: FileOutcome) -> None:
        got[o.sop_instance_uid] = o
        if held_at_record is not None:
            held_at_record[o.sop_instance_uid] = set(source.held)
        if on_record is not None:
            on_record(o)

    t = Transfer(
        Settings("fake", retry_backoff=0.01, retries=1, concurrency=1),
        ConnectionPool(dest, capacity=1),
        NullLimiter(),
        record,
        transform=transform,
        stop=(lambda: len(got) >= stop_after) if stop_after else None,
        autotune=autotune,
    )
    try:
        ended = t.run(jobs(source, n))
    finally:
        for conn in dest.opened:
            conn.abort()
    conn = dest.opened[0]
    assert isinstance(conn, SocketConn)
    return got, ended, conn


def test_the_next_file_is_transformed_while_the_answer_to_the_last_is_awaited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transformed: dict[str, float] = {}
    source = Source()
    held_at_start: dict[str, set[str]] = {}
    start = SocketConn.start

    def held_then_start(conn: SocketConn, header: DicomHeader, payload: Payload) -> object:
        held_at_start[header.sop_instance_uid] = set(source.held)
        return start(conn, header, payload)

    monkeypatch.setattr(SocketConn, "start", held_then_start)

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        transformed[header.sop_instance_uid] = time.monotonic()
        return header, payload

    got, ended, conn = send(3, transform, source=source)
    assert ended.error is None and not ended.left
    # A read-ahead file's payload is held until it is on the wire (a staged STOW-RS part
    # is read when its request is sent), then let go.
    assert all(f"mem://{i}" in held_at_start[f"1.2.3.{i}"] for i in range(3)), held_at_start
    assert source.held == set()
    assert [got[f"1.2.3.{i}"].state for i in range(3)] == [State.STORED] * 3
    assert all(o.attempts == 1 for o in got.values())
    for i in (1, 2):
        # Made ready while file i-1 waited for its answer; sent once that answer came.
        answered = conn.started[f"1.2.3.{i - 1}"] + ANSWER_S
        assert transformed[f"1.2.3.{i}"] < answered, (i, transformed, conn.started)
        assert conn.started[f"1.2.3.{i}"] >= answered
    assert conn.sent == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]


def test_a_file_the_transform_refuses_while_read_ahead_is_settled_as_at_its_start() -> None:
    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        if header.sop_instance_uid == "1.2.3.1":
            raise CoercionError("not sent: PatientID (rule r, line 3): too long")
        if header.sop_instance_uid == "1.2.3.2":
            raise CoercionSkipped("not sent: not in the table (missing: skip)")
        return header, payload

    held: dict[str, set[str]] = {}
    got, ended, conn = send(4, transform, held_at_record=held)
    assert ended.error is None and not ended.left
    # File 1 was refused while file 0 waited for its answer: its payload was let go then,
    # not kept until its turn.
    assert "mem://1" not in held["1.2.3.0"], held
    failed, skipped = got["1.2.3.1"], got["1.2.3.2"]
    assert failed.state is State.FAILED and "PatientID (rule r, line 3)" in failed.reason
    assert skipped.state is State.SKIPPED and "missing: skip" in skipped.reason
    # Refused before anything was sent: no attempt counted, nothing on the wire.
    assert failed.attempts == 0 and skipped.attempts == 0
    assert conn.sent == ["1.2.3.0", "1.2.3.3"]
    assert got["1.2.3.3"].state is State.STORED


def test_a_transfer_stopped_with_a_file_read_ahead_leaves_it_and_lets_its_payload_go() -> None:
    source = ExitSource()
    transformed: list[str] = []

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        transformed.append(header.sop_instance_uid)
        return header, payload

    got, ended, conn = send(3, transform, stop_after=1, source=source)
    assert list(got) == ["1.2.3.0"]
    assert ended.error is None
    assert [j.uri for j in ended.left] == ["mem://1", "mem://2"]  # unsettled, for the caller
    assert transformed == ["1.2.3.0", "1.2.3.1"]  # file 1 was made ready, never started
    assert conn.sent == ["1.2.3.0"]
    assert source.held == set()  # and its payload was let go


def test_an_unforeseen_error_while_reading_ahead_ends_the_transfer_at_once() -> None:
    """Not a file's problem (a bug, a Redis error, Celery's soft time limit, which is an
    Exception raised once): reading ahead does not keep it, or a time limit would be lost.
    The transfer ends at once; the file on the wire is left unanswered (for the next
    delivery to look up at the destination) and its association discarded. Nothing
    fetched for the file read ahead is held."""
    source = ExitSource()
    calls: list[str] = []

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        calls.append(header.sop_instance_uid)
        if header.sop_instance_uid == "1.2.3.1":
            raise RuntimeError("a bug")
        return header, payload

    with pytest.raises(RuntimeError, match="a bug"):
        send(3, transform, source=source)
    assert calls == ["1.2.3.0", "1.2.3.1"]  # raised while read ahead, not read again
    assert source.held == set() and source.open_holds == 0


class PathSource(ExitSource):
    """Files on disk, sent from where they are (as a folder's are); a file that is not
    there is written anew (version 1) when it is fetched."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def fetch(self, item: SourceItem) -> _Hold:  # type: ignore[override]
        path = self.folder / item.uri.removeprefix("mem://")
        if not path.exists():
            path.write_bytes(b"version 1")
        return _Hold(self, item.uri, Payload(path=str(path)))


def reading(
    seen: list[tuple[str, bytes]],
) -> Callable[[DicomHeader, Payload], tuple[DicomHeader, Payload]]:
    """A transform that notes each file it is given and what its file held then."""

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        assert payload.path is not None
        seen.append((header.sop_instance_uid, Path(payload.path).read_bytes()))
        return header, payload

    return transform


def test_a_file_changed_after_it_was_read_ahead_is_read_again_at_its_start(
    tmp_path: Path,
) -> None:
    """What is sent is read from the file as it is when its send starts, as without reading
    ahead: a file rewritten while it waited (here, while the last answer was awaited; in
    use, a connection backoff or a rate-limit wait) is read again."""
    seen: list[tuple[str, bytes]] = []
    transform = reading(seen)

    def rewrite(o: FileOutcome) -> None:
        if o.sop_instance_uid == "1.2.3.0":  # file 1 was read ahead meanwhile
            (tmp_path / "1").write_bytes(b"version 2, longer")

    source = PathSource(tmp_path)
    got, ended, _ = send(3, transform, source=source, on_record=rewrite)
    assert ended.error is None and not ended.left
    assert [uid for uid, _ in seen] == ["1.2.3.0", "1.2.3.1", "1.2.3.1", "1.2.3.2"], seen
    assert seen[2] == ("1.2.3.1", b"version 2, longer")
    assert all(o.state is State.STORED for o in got.values())
    assert source.open_holds == 0  # the first reading's hold too


def test_a_file_gone_after_it_was_read_ahead_is_read_again_at_its_start(
    tmp_path: Path,
) -> None:
    """(This source writes a missing file anew: reading again shows in what it reads.)"""
    seen: list[tuple[str, bytes]] = []
    transform = reading(seen)

    def remove(o: FileOutcome) -> None:
        if o.sop_instance_uid == "1.2.3.0":
            (tmp_path / "1").write_bytes(b"version 0")  # read ahead as version 0, then gone
            (tmp_path / "1").unlink()

    (tmp_path / "1").write_bytes(b"version 0")
    got, ended, _ = send(2, transform, source=PathSource(tmp_path), on_record=remove)
    assert ended.error is None and not ended.left
    assert [uid for uid, _ in seen] == ["1.2.3.0", "1.2.3.1", "1.2.3.1"], seen
    assert seen[2] == ("1.2.3.1", b"version 1")  # as the source has it at the start
    assert got["1.2.3.1"].state is State.STORED


def test_an_answer_that_came_while_reading_ahead_is_no_latency_sample_for_j_auto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When an answer came during a slow read ahead (a download, a C-GET of a series) is
    not known: -j auto does not count it (a slow read would look like a slow PACS and cut
    the associations); the answers awaited without reading ahead are counted."""
    finish = SocketConn.finish

    def timed(conn: SocketConn, pending: object) -> SendResult:
        sent = finish(conn, pending)
        assert isinstance(pending, DicomHeader)
        took = time.monotonic() - conn.started[pending.sop_instance_uid]
        return dataclasses.replace(sent, seconds=took)

    monkeypatch.setattr(SocketConn, "finish", timed)
    tune = Autotune(1)
    samples: list[float] = []
    monkeypatch.setattr(tune, "answered", samples.append)

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        if header.sop_instance_uid == "1.2.3.1":
            time.sleep(3 * ANSWER_S)  # read ahead while file 0's answer (ANSWER_S) comes
        return header, payload

    got, ended, _ = send(2, transform, autotune=tune)
    assert ended.error is None and [o.state for o in got.values()] == [State.STORED] * 2
    # File 0's answer came during the read: not counted; file 1's (nothing left to read
    # ahead) is, and is the PACS's own time.
    assert len(samples) == 1 and ANSWER_S * 0.9 <= samples[0] < 2 * ANSWER_S, samples


def test_an_interrupt_while_reading_ahead_ends_the_transfer_holding_nothing() -> None:
    source = ExitSource()

    class Interrupt(BaseException):
        pass

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        if header.sop_instance_uid == "1.2.3.1":
            raise Interrupt
        return header, payload

    with pytest.raises(Interrupt):
        send(3, transform, source=source)
    assert source.held == set()


def test_an_answer_that_came_after_a_quick_read_ahead_is_a_latency_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the answers that came during the read are left out: each of these came later
    (ANSWER_S after its request, the read taking microseconds), so each is counted."""
    tune = Autotune(1)
    samples: list[float] = []
    monkeypatch.setattr(tune, "answered", samples.append)
    got, ended, _ = send(3, lambda header, payload: (header, payload), autotune=tune)
    assert ended.error is None and len(got) == 3
    assert len(samples) == 3, samples


class _FromOutside(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded: an Exception raised in the sending
    thread wherever it happens to be."""


def _ended_from_outside(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> tuple[list[str], ConnectionPool]:
    """Three files over one lane, an exception from outside at ``where``: the URIs of the
    files left unanswered, and the pool."""
    source = Source()
    dest = SocketDestination(lambda _: {f"1.2.3.{i}": ANSWER_S for i in range(3)})
    pool = ConnectionPool(dest, capacity=1)
    calls = {"start": 0, "finish": 0}

    def raise_at(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def patched(self: SocketConn, *args: object) -> object:
            calls[name] += 1
            if name == where and calls[name] == 2:
                raise _FromOutside()
            return real(self, *args)

        return patched

    monkeypatch.setattr(SocketConn, "start", raise_at("start", SocketConn.start))
    monkeypatch.setattr(SocketConn, "finish", raise_at("finish", SocketConn.finish))

    def transform(header: DicomHeader, payload: Payload) -> tuple[DicomHeader, Payload]:
        if where == "read ahead" and header.sop_instance_uid == "1.2.3.2":
            raise _FromOutside()
        return header, payload

    t = Transfer(
        Settings("fake", retry_backoff=0.01, retries=1, concurrency=1),
        pool,
        NullLimiter(),
        lambda _job, _o: None,
        transform=transform,
    )
    try:
        with pytest.raises(_FromOutside):
            t.run(jobs(source, 3))
    finally:
        for conn in dest.opened:
            conn.abort()
    return [job.uri for job in t.unanswered], pool


@pytest.mark.parametrize(
    ("where", "unanswered"),
    [
        ("read ahead", ["mem://1"]),  # file 2 read while file 1's answer is awaited
        ("finish", ["mem://1"]),  # while file 1's answer is read
        ("start", ["mem://1"]),  # while file 1 is being sent
    ],
)
def test_an_exception_from_outside_leaves_the_file_on_the_wire_unanswered(
    monkeypatch: pytest.MonkeyPatch, where: str, unanswered: list[str]
) -> None:
    """Celery's soft time limit can strike anywhere. The file whose answer was not read is
    named (its batch's next delivery asks the destination for it instead of sending it
    twice: transfer/batch.py), and its association, which may hold half a request or an
    unread answer, is discarded, never reused."""
    got, pool = _ended_from_outside(monkeypatch, where)
    assert got == unanswered
    assert pool.discarded == 1 and len(pool) == 0
