"""`migrator scp` against peers that hold its slots (issue 15, point 4), all real processes.

* a slowloris: as many silent TCP connections as ``--max-conns``, then a real sender
  (`migrator store`, DCMTK's `storescu`) still gets through at once; the silent ones are
  closed after ``--handshake-timeout``, also one that trickles its A-ASSOCIATE-RQ;
* ``--max-conns-per-address``: one address (127.0.0.2) cannot take every slot;
* an unknown PDU type: A-ABORT at once, the slot free for the next sender, no traceback;
* ``--idle-timeout``: an idle association is aborted after it, time spent in a C-STORE
  does not count.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator import synth
from migrator.dul.association import Association, Timeouts
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.pdu import ProposedContext, encode_associate_rq
from migrator.errors import AssociationRejected
from tests.peers.dcmtk import run_storescu
from tests.peers.migrator_scp import RunningScp, start_migrator_scp
from tests.storehelpers import run_migrator

pytestmark = pytest.mark.timeout(120)

IMPLICIT = "1.2.840.10008.1.2"
CONTEXTS = [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT,))]
FAST = Timeouts(connect=5, acse=5, dimse=10, network=5)
OTHER_ADDRESS = "127.0.0.2"  # loopback too: a second peer address on one machine


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BxI", pdu_type, len(body)) + body


def connect(scp: RunningScp, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((scp.host, scp.port), timeout=10, source_address=(source, 0))


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's (type, body); (0, b"") when the connection is closed."""
    head = _recv_exact(sock, 6)
    if len(head) < 6:
        return 0, b""
    return head[0], _recv_exact(sock, struct.unpack(">I", head[2:])[0])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def associate(scp: RunningScp, source: str = "127.0.0.1") -> tuple[socket.socket, int, bytes]:
    """A raw connection that sent an A-ASSOCIATE-RQ: (socket, answer PDU type, body)."""
    sock = connect(scp, source)
    sock.sendall(encode_associate_rq(scp.ae_title, "HARDENING", CONTEXTS, 16384))
    kind, body = read_pdu(sock)
    return sock, kind, body


def echo(scp: RunningScp) -> None:
    assoc = Association.request(
        scp.host, scp.port, scp.ae_title, "HARDENING", CONTEXTS, timeouts=FAST
    )
    try:
        assert assoc.c_echo().status == 0
    finally:
        assoc.release()


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the peer closed ``sock`` (reads and drops what comes before)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        raise AssertionError(f"still open after {seconds} s") from None
    except OSError:
        pass  # reset: closed too
    return time.monotonic() - start


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = tmp_path / "in"
    out.mkdir()
    return [
        synth.write_dataset(synth.make_dataset(seed=7, instance_number=i), out / f"{i}.dcm")
        for i in range(1, 4)
    ]


@pytest.fixture
def scp(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningScp]:
    args = getattr(request, "param", ())
    with start_migrator_scp(tmp_path / "scp", *args) as running:
        yield running


def assert_clean_log(scp: RunningScp) -> str:
    log = scp.log_text()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    return log


# -- slowloris -------------------------------------------------------------------------------


def test_silent_connections_as_many_as_max_conns_do_not_lock_a_sender_out(
    scp: RunningScp, files: list[Path], tmp_path: Path
) -> None:
    """The issue's reproduction: 10 silent connections (the default --max-conns) used to
    hold every slot for 30 s. Now they hold none: `migrator store` and `storescu` get
    through at once, and the silent ones are closed after --handshake-timeout (5 s)."""
    silent = [connect(scp) for _ in range(10)]
    try:
        time.sleep(0.5)  # every one accepted
        start = time.monotonic()
        proc = run_migrator(
            "store",
            "--host",
            scp.host,
            "--port",
            str(scp.port),
            "--called-ae",
            scp.ae_title,
            "--retries",
            "0",
            *map(str, files),
            timeout=60,
        )
        store_seconds = time.monotonic() - start
        assert proc.returncode == 0, proc.stdout + proc.stderr
        dcmtk = run_storescu(scp.host, scp.port, files, called_ae=scp.ae_title, timeout=30)
        dcmtk_seconds = time.monotonic() - start - store_seconds
        assert dcmtk.returncode == 0, dcmtk.stdout
        # Both well before the silent connections' 5 s are up (store: interpreter start-up
        # included).
        assert store_seconds < 4.5, store_seconds
        assert dcmtk_seconds < 2, dcmtk_seconds
        assert len(list(scp.output_dir.rglob("*.dcm"))) == len(files)
        for sock in silent:
            closed_within(sock, 8)
    finally:
        for sock in silent:
            sock.close()
    summary = scp.stop()
    log = assert_clean_log(scp)
    assert log.count("no association request within 5 s (--handshake-timeout)") == 10, log
    assert "Connections closed without an association request: 10 (--handshake-timeout)" in summary
    assert "rejected association" not in log, log


@pytest.mark.parametrize("scp", [("--handshake-timeout", "2")], indirect=True)
def test_a_peer_trickling_its_association_request_is_closed_after_the_handshake_timeout(
    scp: RunningScp,
) -> None:
    """A byte every 0.3 s resets any per-read timeout; the handshake deadline holds."""
    rq = encode_associate_rq(scp.ae_title, "TRICKLE", CONTEXTS, 16384)
    sock = connect(scp)
    start = time.monotonic()
    closed = None
    with sock:
        for byte in rq[:40]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = time.monotonic() - start
                break
            sock.settimeout(0.3)
            try:
                if not sock.recv(1):
                    closed = time.monotonic() - start
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = time.monotonic() - start
                break
    assert closed is not None, "still open after 40 bytes at 0.3 s each"
    assert 1.8 < closed < 4, closed
    scp.wait_for_log(r"no association request within 2 s \(--handshake-timeout\)")
    echo(scp)
    scp.stop()
    assert_clean_log(scp)


# -- per-address limit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scp", [("--max-conns", "4", "--max-conns-per-address", "2")], indirect=True
)
def test_one_address_holds_at_most_max_conns_per_address(scp: RunningScp) -> None:
    held = []
    try:
        for _ in range(2):
            sock, kind, _ = associate(scp, OTHER_ADDRESS)
            held.append(sock)
            assert kind == 0x02  # A-ASSOCIATE-AC
        sock, kind, body = associate(scp, OTHER_ADDRESS)
        held.append(sock)
        assert kind == 0x03, kind  # A-ASSOCIATE-RJ
        assert tuple(body[1:4]) == (2, 3, 2)  # transient, presentation, local limit
        echo(scp)  # another address still gets in
        echo(scp)
    finally:
        for sock in held:
            sock.close()
    scp.wait_for_log(
        r"rejected association from HARDENING@127\.0\.0\.2:\d+: transient, local limit "
        r"exceeded \(--max-conns-per-address 2 associations from 127\.0\.0\.2 already active\)"
    )
    assert "Associations: 4 accepted, 1 rejected" in scp.stop()
    assert_clean_log(scp)


@pytest.mark.parametrize("scp", [("--max-conns", "2")], indirect=True)
def test_max_conns_counts_associations_not_connections(scp: RunningScp) -> None:
    """Silent connections take no slot; two associations do, and a third is rejected."""
    silent = [connect(scp) for _ in range(5)]
    held = []
    try:
        for _ in range(2):
            sock, kind, _ = associate(scp)
            held.append(sock)
            assert kind == 0x02
        with pytest.raises(AssociationRejected, match="local limit exceeded"):
            echo(scp)
    finally:
        for sock in [*silent, *held]:
            sock.close()
    scp.wait_for_log(r"--max-conns 2 associations already active")
    time.sleep(0.3)
    echo(scp)  # the slots come back when the associations end
    scp.stop()
    assert_clean_log(scp)


# -- unknown PDU type ------------------------------------------------------------------------


@pytest.mark.parametrize("scp", [("--max-conns", "1")], indirect=True)
@pytest.mark.parametrize("associated_first", [True, False], ids=["associated", "fresh"])
def test_an_unknown_pdu_type_is_aborted_at_once_and_frees_the_slot(
    scp: RunningScp, associated_first: bool
) -> None:
    """It used to keep its slot for 60 s (pynetdicom read the unknown PDU's body as the
    next header and waited for the rest) and leave a traceback in the log."""
    if associated_first:
        sock, kind, _ = associate(scp)
        assert kind == 0x02
    else:
        sock = connect(scp)
    with sock:
        start = time.monotonic()
        sock.sendall(pdu(0x42, b"hello"))
        kind, body = read_pdu(sock)
        assert kind == 0x07, (kind, body)  # A-ABORT
        assert tuple(body[2:4]) == (2, 1)  # service provider, unrecognized PDU
        assert closed_within(sock, 2) < 1
        assert time.monotonic() - start < 1
        echo(scp)  # --max-conns 1: the slot is free already
    scp.wait_for_log(r"dropped: unknown PDU type 0x42 \(answered A-ABORT, unrecognized PDU\)")
    scp.stop()
    log = assert_clean_log(scp)
    assert log.count("unknown PDU type") == 1, log


# -- idle associations -----------------------------------------------------------------------


@pytest.mark.parametrize("scp", [("--max-conns", "1")], indirect=True)
def test_a_sender_that_associates_again_at_once_after_a_release_finds_its_slot_free(
    scp: RunningScp,
) -> None:
    """--max-conns 1 and a sender opening its next association the moment it reads the
    A-RELEASE-RP: the slot is free by then, every time (the SCP used to free it after
    answering and closing, and a quick sender was now and then rejected as "too many")."""
    for _ in range(200):
        echo(scp)


@pytest.mark.parametrize("scp", [("--idle-timeout", "2")], indirect=True)
def test_an_idle_association_is_aborted_after_the_idle_timeout(scp: RunningScp) -> None:
    sock, kind, _ = associate(scp)
    with sock:
        assert kind == 0x02
        start = time.monotonic()
        sock.settimeout(10)
        kind, body = read_pdu(sock)
        waited = time.monotonic() - start
    assert kind == 0x07, (kind, body)  # A-ABORT
    assert 1.8 < waited < 3.5, waited
    scp.wait_for_log(r"association from HARDENING@127\.0\.0\.1:\d+ aborted: no PDU for 2 s")
    scp.stop()
    assert_clean_log(scp)


@pytest.mark.parametrize(
    "scp", [("--idle-timeout", "1", "--response-delay", "1500")], indirect=True
)
def test_time_spent_storing_does_not_count_as_idle(scp: RunningScp, files: list[Path]) -> None:
    """Each C-STORE is answered 1.5 s late, longer than --idle-timeout 1 s: all stored on
    one association all the same."""
    proc = run_storescu(scp.host, scp.port, files, called_ae=scp.ae_title, timeout=30)
    assert proc.returncode == 0, proc.stdout
    assert len(list(scp.output_dir.rglob("*.dcm"))) == len(files)
    summary = scp.stop()
    assert "Associations: 1 accepted" in summary
    assert "--idle-timeout" not in scp.log_text().split("shutdown summary:")[0]
    assert_clean_log(scp)


# -- options ---------------------------------------------------------------------------------


def test_the_new_options_are_in_the_help_with_their_environment_names() -> None:
    proc = run_migrator("scp", "--help")
    assert proc.returncode == 0, proc.stderr
    for text in (
        "--handshake-timeout",
        "MIGRATOR_SCP_HANDSHAKE_TIMEOUT",
        "--idle-timeout",
        "MIGRATOR_SCP_IDLE_TIMEOUT",
        "--max-conns-per-address",
        "MIGRATOR_SCP_MAX_CONNS_PER_ADDRESS",
        "migrator scp 104 --max-conns 40 --max-conns-per-address 8",
    ):
        assert text in proc.stdout, text


@pytest.mark.parametrize("option", ["--handshake-timeout", "--idle-timeout"])
def test_a_zero_timeout_is_a_usage_error(option: str, tmp_path: Path) -> None:
    proc = run_migrator("scp", "0", "--output-dir", tmp_path / "out", option, "0", timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{option} must be more than 0 seconds" in proc.stderr
