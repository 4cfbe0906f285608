"""The old PACS's retrieval when something other than an instance goes wrong (issue 17 review):
a busy or refusing source at association time, our own disk that cannot hold what came, an
error in our own C-GET handler, and the C-MOVE receiver's lock file and spool.

What a user checks: the reason a file fails with (the source busy, or our disk, not "the
source sent N of M"), how many associations the old PACS was asked for (one per request, not
one per half of a list), a warning that says what went wrong in our handler, and that the
move port's lock works for another OS user's leftovers. The C-GET ones use a real Orthanc;
the association ones a listener that answers every request with an A-ASSOCIATE-RJ (what a
busy archive does), since no real archive can be made to reject on demand.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from migrator.dul.acceptor import StoreRequest
from migrator.dul.acse import AcceptedContext, encode_associate_rj
from migrator.errors import ConfigError, SourceError, TransientError
from migrator.settings import Settings
from migrator.sources import expect, held, movescp
from migrator.sources.base import SourceItem
from migrator.sources.dimse import DimseSource
from migrator.sources.inspect import inspect_item, inspect_with_retries
from migrator.sources.movescp import MoveReceiver, _Handler
from tests.peers.orthanc import OrthancPeer, free_move_port
from tests.test_source_dimse import OUR_AE, _old_pacs, _source
from tests.test_source_dimse_retrieve import _archive

pytestmark = pytest.mark.timeout(180)

CT = "1.2.840.10008.5.1.4.1.1.2"


class Rejecter:
    """Answers every association request with A-ASSOCIATE-RJ (result, source 1, reason 1)
    and counts them; waits for the requester to close, so it reads the answer."""

    def __init__(self, result: int) -> None:
        self.result = result
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Rejecter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    if not conn.recv(65536):
                        continue
                    self.requests += 1
                    conn.sendall(encode_associate_rj(self.result, 1, 1))
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass


def _items(port: int, count: int) -> list[SourceItem]:
    base = f"dimse://OLDPACS@127.0.0.1:{port}/studies/1.2.3/series/1.2.3.4/instances"
    return [SourceItem(f"{base}/1.2.3.4.{i}?class={CT}", 0) for i in range(count)]


def test_a_busy_source_is_asked_again_later_not_failed_instance_by_instance() -> None:
    """A transient A-ASSOCIATE-RJ: the fetch fails transiently (retried with the send's
    retries and backoff), one association per attempt, never halves of the list."""
    with Rejecter(result=2) as pacs:
        source = DimseSource(f"dimse://OLDPACS@127.0.0.1:{pacs.port}", Settings(host="unused"))
        items = _items(pacs.port, 10)
        expect((source, i) for i in items)
        first = inspect_item(source, items[0])
        assert isinstance(first, TransientError), first
        read = inspect_with_retries(source, items[0], retries=2, backoff=0.01)
        assert isinstance(read, SourceError), read
        assert "rejected" in str(read) and "gave up after 3 attempts" in str(read), read
        # 1 + 3 attempts; pynetdicom sometimes misses an RJ behind the close and our upper
        # layer asks again to read it (migrator/verify/pacs.py): at most 2 per attempt.
        assert 4 <= pacs.requests <= 8, pacs.requests


def test_a_source_that_refuses_us_fails_the_request_with_one_association() -> None:
    """A permanent A-ASSOCIATE-RJ (our AE unknown there): each of the 10 instances fails
    with the rejection, after one association (or its probe), not 19 for halves."""
    with Rejecter(result=1) as pacs:
        source = DimseSource(f"dimse://OLDPACS@127.0.0.1:{pacs.port}", Settings(host="unused"))
        items = _items(pacs.port, 10)
        expect((source, i) for i in items)
        reads = [inspect_item(source, i) for i in items]
        for read in reads:
            assert isinstance(read, SourceError) and "rejected" in str(read), read
            assert not read.retryable
        assert 1 <= pacs.requests <= 2, pacs.requests


@pytest.fixture
def old_pacs(orthanc_factory: Callable[..., OrthancPeer], tmp_path: Path) -> Iterator[str]:
    """An Orthanc holding 3 instances of one series; yields its dimse:// URI."""
    pacs = _old_pacs(orthanc_factory)
    _archive(pacs, tmp_path, count=3, series=1)
    yield _source(pacs)


def test_an_instance_our_disk_cannot_hold_says_our_disk(
    old_pacs: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool cannot be written (here: its directory is gone; ENOSPC alike): the reason
    names our directory and its error, not the source, after the send's retries. (Spool
    files only, as for instances too large to keep in memory: migrator/sources/held.py.)"""
    monkeypatch.setattr(held, "MEMORY_BYTES", 0)
    source = DimseSource(old_pacs, Settings(host="unused"), calling_ae=OUR_AE)
    items = [SourceItem(e.uri, 0) for e in source.iter_entries()]
    gone = tmp_path / "gone"
    source._held.new_path = lambda: str(gone / "x.dcm")  # type: ignore[method-assign]
    expect((source, i) for i in items)
    read = inspect_with_retries(source, items[0], retries=1, backoff=0.01)
    assert isinstance(read, SourceError), read
    assert str(read).startswith(
        f"cannot write the retrieved instance to {gone}: No such file or directory"
    ), read
    assert "the source sent" not in str(read)


def test_an_error_in_our_c_get_handler_is_said_at_warning(
    old_pacs: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source hears only 0xC211 (unable to process): our log says why."""
    monkeypatch.setattr(held, "MEMORY_BYTES", 0)  # spool files: where the error is
    source = DimseSource(old_pacs, Settings(host="unused"), calling_ae=OUR_AE)
    items = [SourceItem(e.uri, 0) for e in source.iter_entries()]

    def broken() -> str:
        raise RuntimeError("spool broken")

    source._held.new_path = broken  # type: ignore[method-assign]
    expect((source, i) for i in items)
    with caplog.at_level(logging.WARNING, logger="migrator.sources"):
        read = inspect_item(source, items[0])
    assert isinstance(read, TransientError), read  # the send's retries then fail it
    assert "cannot keep the retrieved instance here: RuntimeError: spool broken" in str(read)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("migrator.sources")]
    assert any(
        "a C-GET sub-operation could not be kept: RuntimeError: spool broken" in m for m in said
    ), said


# -- the C-MOVE receiver -------------------------------------------------------------------


def test_the_move_ports_lock_file_of_another_user_is_no_obstacle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file is per user: one that another OS user left under the shared name (here
    a directory, which no one can open as a file, not even root) does not stop the move."""
    monkeypatch.setattr(movescp, "LOCK_DIR", str(tmp_path))
    receiver = MoveReceiver(_free_port(), ("1.2.840.10008.1.2",), lambda: str(tmp_path / "x"))
    (tmp_path / f"migrator-move-{receiver.port}.lock").mkdir()
    with receiver.receiving({"1.2.3"}) as handler:
        assert handler.files == {}
    assert (tmp_path / f"migrator-move-{os.getuid()}-{receiver.port}.lock").is_file()


def test_a_lock_file_that_cannot_be_opened_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(movescp, "LOCK_DIR", str(tmp_path))
    receiver = MoveReceiver(_free_port(), ("1.2.840.10008.1.2",), lambda: str(tmp_path / "x"))
    lock = tmp_path / f"migrator-move-{os.getuid()}-{receiver.port}.lock"
    lock.mkdir()
    with (
        pytest.raises(ConfigError, match=f"cannot open the lock file {lock} "),
        receiver.receiving({"1.2.3"}),
    ):
        pass


class _Assoc:
    calling_ae = "OLDPACS"


def _request(sop: str) -> StoreRequest:
    return StoreRequest(1, CT, sop, AcceptedContext(1, CT, "1.2.840.10008.1.2"))


def test_a_second_copy_of_an_instance_in_flight_is_refused(tmp_path: Path) -> None:
    """The same instance on two associations: the second is refused (0xA900), the first
    kept; no spool file is left but the one kept."""
    paths = iter(str(tmp_path / f"{n}.dcm") for n in range(10))
    handler = _Handler({"1.2.3"}, lambda: next(paths))
    first = handler.store(_Assoc(), _request("1.2.3"))  # type: ignore[arg-type]
    second = handler.store(_Assoc(), _request("1.2.3"))  # type: ignore[arg-type]
    first.write(memoryview(b"data"))
    second.write(memoryview(b"data"))
    assert second.finish().status == 0xA900
    assert first.finish().status == 0x0000
    assert list(handler.files) == ["1.2.3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.dcm"]


def test_an_instance_that_finishes_after_the_move_leaves_no_spool_file(tmp_path: Path) -> None:
    paths = iter(str(tmp_path / f"{n}.dcm") for n in range(10))
    handler = _Handler({"1.2.3"}, lambda: next(paths))
    late = handler.store(_Assoc(), _request("1.2.3"))  # type: ignore[arg-type]
    handler.close()  # the move ended
    late.write(memoryview(b"data"))
    late.finish()
    assert handler.received_files() == {}
    assert list(tmp_path.iterdir()) == []


def test_an_instance_our_disk_cannot_hold_is_answered_out_of_resources(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    handler = _Handler({"1.2.3"}, lambda: str(gone / "x.dcm"))
    sink = handler.store(_Assoc(), _request("1.2.3"))  # type: ignore[arg-type]
    assert sink.finish().status == 0xA700
    assert handler.local_error == (
        f"cannot write the retrieved instance to {gone}: No such file or directory"
    )
    assert handler.received_files() == {}


def test_small_instances_of_a_move_are_kept_in_memory_larger_ones_spooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept in memory while small and within the source's bound (held.py), else written to
    a spool file as the pieces come: the same bytes either way (File Meta + dataset);
    what finishes after the move gives its memory back."""
    monkeypatch.setattr(movescp, "MEMORY_ITEM", 1000)
    spool = held.HeldFiles("test-move-")
    handler = _Handler({"1.2.3", "1.2.4", "1.2.5"}, spool.new_path, spool)
    small = handler.store(_Assoc(), _request("1.2.3"))  # type: ignore[arg-type]
    large = handler.store(_Assoc(), _request("1.2.4"))  # type: ignore[arg-type]
    late = handler.store(_Assoc(), _request("1.2.5"))  # type: ignore[arg-type]
    small.write(memoryview(b"small"))
    for _ in range(30):
        large.write(memoryview(b"x" * 100))  # past 1000 bytes: to a file from then on
    assert small.finish().status == large.finish().status == 0x0000
    kept = handler.received_files()
    assert isinstance(kept["1.2.3"][0], bytes) and kept["1.2.3"][0].endswith(b"small")
    path = kept["1.2.4"][0]
    assert isinstance(path, str) and os.path.dirname(path) == spool.spool
    with open(path, "rb") as f:
        data = f.read()
    assert data[128:132] == b"DICM" and data.endswith(b"x" * 3000)
    assert kept["1.2.4"][1] == len(data)
    assert spool.in_memory == kept["1.2.3"][1]
    handler.close()  # the move ended
    late.write(memoryview(b"late"))
    assert late.finish().status == 0x0000
    assert "1.2.5" not in handler.received_files()
    assert spool.in_memory == kept["1.2.3"][1]  # the late one's given back


def _free_port() -> int:
    """Free on every interface: MoveReceiver listens on all of them."""
    return free_move_port()
