"""The acceptor of our upper layer (migrator/dul/acceptor.py) against real requestors:
our own (migrator/dul/association.py), pynetdicom's and DCMTK's storescu, in-process on a
kernel-chosen port. What a receiving side relies on: negotiation by policy, rejection,
datasets streamed to the sink in bounded pieces, the status answered, C-ECHO, release,
aborts both ways, the idle timer.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

from migrator import synth
from migrator.dul import acceptor, dimse
from migrator.dul.acceptor import (
    AbortAssociation,
    Accepted,
    End,
    StoreOutcome,
    StoreRequest,
)
from migrator.dul.acse import (
    REJECT_LOCAL_LIMIT,
    AssociateRQ,
    ContextPolicy,
    decode_associate_rq,
    encode_associate_ac,
    negotiate,
)
from migrator.dul.association import Association, Timeouts
from migrator.dul.listener import Listener
from migrator.dul.pdu import ProposedContext, decode_associate_ac, encode_associate_rq
from migrator.errors import AssociationLost, AssociationRejected

pytestmark = pytest.mark.timeout(60)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"
POLICY = ContextPolicy(
    {dimse.VERIFICATION_SOP_CLASS: {IMPLICIT}, CT: {IMPLICIT, EXPLICIT}, MR: {EXPLICIT}}
)
FAST = Timeouts(connect=5, acse=5, dimse=10, network=5)


# -- codec (no network) ------------------------------------------------------------------


def test_an_association_request_round_trips_and_is_negotiated_by_policy() -> None:
    proposed = [
        ProposedContext(1, CT, (J2K, EXPLICIT, IMPLICIT)),  # first acceptable one wins
        ProposedContext(3, MR, (IMPLICIT,)),  # abstract syntax known, syntax not
        ProposedContext(5, "1.2.3.4", (IMPLICIT,)),  # unknown abstract syntax
    ]
    rq = decode_associate_rq(encode_associate_rq("CALLED", "CALLING", proposed, 32768)[6:])
    assert (rq.called_ae, rq.calling_ae, rq.user.max_pdu) == ("CALLED", "CALLING", 32768)
    assert rq.contexts == proposed
    accepted, results = negotiate(rq, POLICY)
    assert [(c.context_id, c.transfer_syntax) for c in accepted.values()] == [(1, EXPLICIT)]
    assert [r for _, r, _ in results] == [0, 4, 3]
    # Our requestor reads the answer as meant.
    ac = decode_associate_ac(encode_associate_ac(rq, results, 16384)[6:])
    assert ac.contexts == {1: (0, EXPLICIT), 3: (4, ""), 5: (3, "")}
    assert ac.peer_max_pdu == 16384


def test_a_store_response_decodes_with_its_status_and_comment() -> None:
    fields = dimse.decode_command(dimse.c_store_rsp(7, CT, "1.2.3", 0xC000, "bad UID"))
    assert fields[dimse.COMMAND_FIELD] == dimse.C_STORE_RSP
    assert fields[dimse.MESSAGE_ID_BEING_RESPONDED_TO] == 7
    assert fields[dimse.STATUS] == 0xC000
    assert fields[dimse.ERROR_COMMENT] == "bad UID"
    assert fields[dimse.AFFECTED_SOP_INSTANCE] == "1.2.3"
    # An unusable UID is left out rather than echoed.
    assert dimse.AFFECTED_SOP_INSTANCE not in dimse.decode_command(dimse.c_store_rsp(7, CT, "", 0))


# -- a receiver in this process -----------------------------------------------------------


@dataclass
class MemorySink:
    pieces: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    status: int = 0
    abort: bool = False
    discarded: bool = False

    def write(self, data: memoryview) -> None:
        self.pieces.append(len(data))
        self.data += data

    def finish(self) -> StoreOutcome:
        if self.abort:
            raise AbortAssociation("test")
        return StoreOutcome(self.status)

    def discard(self) -> None:
        self.discarded = True


@dataclass
class Recorder:
    """The handler: keeps every store, ends and echoes; behaves as told."""

    reject: tuple[int, int, int] | None = None
    status: int = 0
    abort_on_store: bool = False
    stores: list[tuple[StoreRequest, MemorySink]] = field(default_factory=list)
    ends: list[tuple[End, str]] = field(default_factory=list)
    echoes: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def admit(self, assoc: Accepted, rq: AssociateRQ) -> tuple[int, int, int] | None:
        return self.reject

    def established(self, assoc: Accepted) -> None:
        pass

    def echo(self, assoc: Accepted) -> int:
        self.echoes += 1
        return 0

    def store(self, assoc: Accepted, request: StoreRequest) -> MemorySink:
        sink = MemorySink(status=self.status, abort=self.abort_on_store)
        self.stores.append((request, sink))
        return sink

    def ended(self, assoc: Accepted, how: End, why: str) -> None:
        self.ends.append((how, why))
        self.done.set()


@pytest.fixture
def serve() -> Iterator[tuple[Recorder, int, acceptor.Settings]]:
    handler = Recorder()
    settings = acceptor.Settings(policy=POLICY, max_pdu=16384, idle_timeout=5, stall_timeout=5)

    def handle(sock: socket.socket, address: tuple[str, int], token: object) -> None:
        settings.handshake_deadline = time.monotonic() + 5
        acceptor.serve(Accepted(sock, address[0], address[1]), handler, settings)

    listener = Listener("127.0.0.1", 0, handle)
    listener.start()
    try:
        yield handler, listener.address[1], settings
    finally:
        listener.stop()
        listener.join(2)


CONTEXTS = [
    ProposedContext(1, dimse.VERIFICATION_SOP_CLASS, (IMPLICIT,)),
    ProposedContext(3, CT, (EXPLICIT,)),
]


def _request(port: int, max_pdu: int = 16384) -> Association:
    return Association.request(
        "127.0.0.1", port, "ACCEPTOR", "REQUESTOR", CONTEXTS, max_pdu=max_pdu, timeouts=FAST
    )


def test_our_requestor_echoes_and_stores_a_large_dataset_in_bounded_pieces(
    serve: tuple[Recorder, int, acceptor.Settings],
) -> None:
    handler, port, _ = serve
    assoc = _request(port, max_pdu=8192)
    assert assoc.peer_max_pdu == 16384
    assert assoc.c_echo().status == 0
    payload = bytes(range(256)) * 12_000  # 3 MB: ~190 PDUs of our 16 KiB maximum
    assert assoc.c_store(3, CT, "1.2.3.4", payload).status == 0
    assoc.release()
    assert handler.done.wait(5)
    (request, sink) = handler.stores[0]
    assert (request.sop_class, request.sop_instance) == (CT, "1.2.3.4")
    assert request.context.transfer_syntax == EXPLICIT
    assert bytes(sink.data) == payload
    assert max(sink.pieces) <= 16384  # never more than one PDU's worth at a time
    assert handler.echoes == 1
    assert handler.ends == [(End.RELEASED, "released")]


def test_the_sinks_status_is_what_the_requestor_gets(
    serve: tuple[Recorder, int, acceptor.Settings],
) -> None:
    handler, port, _ = serve
    handler.status = 0xA700
    assoc = _request(port)
    assert assoc.c_store(3, CT, "1.2.3.5", b"\x08\x00" * 10).status == 0xA700
    assoc.release()


def test_a_rejection_reaches_the_requestor_with_its_reason(
    serve: tuple[Recorder, int, acceptor.Settings],
) -> None:
    handler, port, _ = serve
    handler.reject = REJECT_LOCAL_LIMIT
    with pytest.raises(AssociationRejected, match="local limit exceeded") as err:
        _request(port)
    assert (err.value.result, err.value.source, err.value.reason) == REJECT_LOCAL_LIMIT
    assert handler.done.wait(5)
    assert handler.ends[0][0] is End.REJECTED


def test_a_handler_abort_loses_the_association_and_the_sink_is_not_left_open(
    serve: tuple[Recorder, int, acceptor.Settings],
) -> None:
    handler, port, _ = serve
    handler.abort_on_store = True
    assoc = _request(port)
    with pytest.raises(AssociationLost, match="A-ABORT"):
        assoc.c_store(3, CT, "1.2.3.6", b"\x08\x00" * 10)
    assert handler.done.wait(5)
    assert handler.ends[0][0] is End.ABORTED


def test_a_peer_abort_mid_dataset_discards_the_sink(
    serve: tuple[Recorder, int, acceptor.Settings],
) -> None:
    handler, port, _ = serve
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(encode_associate_rq("ACCEPTOR", "RAW", CONTEXTS, 16384))
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
        command = dimse.c_store_rq(1, CT, "1.2.3.7")
        sock.sendall(_pdata(3, 0x03, command) + _pdata(3, 0x00, b"\x08\x00\x16\x00"))
        sock.sendall(bytes.fromhex("07000000000400000000"))  # A-ABORT
        assert handler.done.wait(5)
    assert handler.ends[0][0] is End.PEER_ABORTED
    assert handler.stores[0][1].discarded


def test_an_idle_association_gets_an_abort(
    serve: tuple[Recorder, int, acceptor.Settings],
) -> None:
    handler, port, settings = serve
    settings.idle_timeout = 0.5
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(encode_associate_rq("ACCEPTOR", "RAW", CONTEXTS, 16384))
        head = sock.recv(6)
        sock.recv(int.from_bytes(head[2:], "big"), socket.MSG_WAITALL)
        t0 = time.monotonic()
        assert sock.recv(1) == b"\x07"  # A-ABORT
        assert 0.4 < time.monotonic() - t0 < 3
    assert handler.done.wait(5)
    assert handler.ends[0][0] is End.IDLE


def _pdata(ctx: int, control: int, data: bytes) -> bytes:
    body = (len(data) + 2).to_bytes(4, "big") + bytes([ctx, control]) + data
    return b"\x04\x00" + len(body).to_bytes(4, "big") + body


def test_pynetdicom_requestor_stores_and_sees_rejected_contexts(
    serve: tuple[Recorder, int, acceptor.Settings], tmp_path: Path
) -> None:
    handler, port, _ = serve
    path = synth.write_dataset(synth.make_dataset(seed=3), tmp_path / "ct.dcm")
    ds = dcmread(path)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CT, [EXPLICIT])
    ae.add_requested_context(MR, [IMPLICIT])
    assoc = ae.associate("127.0.0.1", port, ae_title="ACCEPTOR")
    assert assoc.is_established
    assert [(str(c.abstract_syntax), c.result) for c in assoc.rejected_contexts] == [(MR, 4)]
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    assert handler.done.wait(5)
    request, sink = handler.stores[0]
    assert request.sop_instance == ds.SOPInstanceUID
    assert len(sink.data) > 0


def test_dcmtk_storescu_sends_every_file(
    serve: tuple[Recorder, int, acceptor.Settings], tmp_path: Path
) -> None:
    handler, port, _ = serve
    files = [
        synth.write_dataset(synth.make_dataset(seed=i), tmp_path / f"{i}.dcm") for i in range(5)
    ]
    proc = subprocess.run(
        ["storescu", "-aec", "ACCEPTOR", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert handler.done.wait(5)
    assert sorted(r.sop_instance for r, _ in handler.stores) == sorted(
        dcmread(f).SOPInstanceUID for f in files
    )
    assert handler.ends == [(End.RELEASED, "released")]


def test_a_listener_stops_at_once_and_accepts_until_then() -> None:
    """`stop` wakes the accept loop (no wait for its poll): a C-MOVE's receiver stops after
    every move, and ~0.25 s a move made a 3,000-instance migration by C-MOVE 5x slower."""
    accepted = threading.Event()

    def handle(sock: socket.socket, address: tuple[str, int], token: object) -> None:
        accepted.set()
        sock.close()

    for _ in range(3):
        listener = Listener("127.0.0.1", 0, handle)
        listener.start()
        port = listener.address[1]
        accepted.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            assert accepted.wait(5)
        time.sleep(0.05)  # the accept loop back in its wait
        t0 = time.monotonic()
        listener.stop()
        assert time.monotonic() - t0 < 0.1
        listener.join(1)
        with pytest.raises(OSError):  # no longer listening
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
