"""Fuzzing `migrator scp` from a raw socket: malformed PDUs and hostile datasets.

One receiver process serves the whole module (``--max-conns 3`` so that a leaked
association shows, ``--io-timeout 1`` so that stalled peers are dropped quickly, TMPDIR in
the watched tree so that a spool file left behind shows). Every test ends by proving that

* the process is alive and answers a C-ECHO on a fresh association,
* no association thread was leaked (the statistics line reaches ``active_associations=0``),
* nothing under the test's tree changed outside OUTPUT, and everything in OUTPUT is a
  ``<Study>/<Series>/<SOP>.dcm`` made of valid UIDs (no ``.part`` leftovers).

The PDUs are written by hand (as pynetdicom's own "parrot" tests do), and so are the
datasets, element by element in Implicit VR Little Endian: pydicom would refuse to encode
most of these UIDs.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.dul.association import Association, AssociationLost, Timeouts
from migrator.dul.dimse import VERIFICATION_SOP_CLASS, c_echo_rq, c_store_rq
from migrator.dul.pdu import ProposedContext, encode_associate_rq
from migrator.errors import AssociationRejected
from migrator.validation import is_valid_uid
from tests.peers.migrator_scp import RunningScp, start_migrator_scp

pytestmark = pytest.mark.timeout(180)

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
CONTEXTS = [
    ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT,)),
    ProposedContext(3, CT, (IMPLICIT,)),
]
FAST = Timeouts(connect=5, acse=5, dimse=10, network=5)

HOSTILE_UIDS: list[bytes] = [
    b"../../etc/passwd",
    b"1.2/../..",
    b"1.2\x00../../x",
    b"\x00",
    b"..",
    b".",
    b"/",
    b"/etc/passwd",
    b"1.2.3/4",
    b"1.2.3\\..\\..\\x",
    b"C:\\Windows\\x",
    b"~",
    b"$HOME",
    b"%2e%2e%2f%2e%2e",
    b"1.2.3\n4",
    b" 1.2.3",
    b"1.2.03",
    b"1.2.",
    b"1..2",
    b"1." + b"2" * 63,  # 65 characters
    b"1.2" * 4000,  # 12 000 characters
    b"\xc3\xa9\xff\xfe",
    b"",
]


# -- the receiver and the tree it must not escape ------------------------------------------


@dataclass
class Target:
    scp: RunningScp
    root: Path
    #: the tree outside OUTPUT before the current test (set by ``alive``)
    baseline: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.scp.output_dir


def _snapshot(root: Path, out: Path, log: Path) -> dict[str, tuple[int, int, int]]:
    """Everything under ``root`` except OUTPUT and the receiver's log: path -> stat."""
    seen: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here == out:
            dirnames.clear()
            continue
        for name in [*dirnames, *filenames]:
            path = here / name
            if path in (out, log):
                continue
            st_ = path.lstat()
            if name == "spool":  # pynetdicom's TMPDIR: files come and go, none may stay
                seen[name] = (st_.st_mode, 0, 0)
                continue
            seen[str(path.relative_to(root))] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return seen


def _check_output(out: Path) -> int:
    """Every file in OUTPUT is <valid>/<valid>/<valid>.dcm; returns how many."""
    count = 0
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        assert not path.is_symlink() or rel.parts[0] == "planted", path
        if path.is_dir():
            continue
        if rel.parts[0] == "planted":
            continue
        count += 1
        assert len(rel.parts) == 3, rel
        assert rel.suffix == ".dcm", rel
        assert all(is_valid_uid(p) for p in (*rel.parts[:2], rel.stem)), rel
    return count


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz-root")
    for name in ("outside", "spool"):
        (root / name).mkdir()
    (root / "outside" / "passwd").write_text("root:x:0:0\n")
    out = root / "out"
    out.mkdir()
    # A symlink planted in OUTPUT that leads outside: a Study UID equal to its name must
    # not write through it.
    (out / "planted").symlink_to(root / "outside", target_is_directory=True)
    scp = start_migrator_scp(
        root / "scp",
        "--max-conns",
        "3",
        "--io-timeout",
        "1",
        "--stats-interval",
        "0.2",
        output_dir=out,
        env={"TMPDIR": str(root / "spool")},
    )
    before = _snapshot(root, out, scp.log_path)
    target = Target(scp, root)
    try:
        yield target
        assert scp.proc.poll() is None, scp.log_text()
        assert _snapshot(root, out, scp.log_path) == before
        summary = scp.stop()
        assert "Successful stores" in summary
    finally:
        scp.kill()


@pytest.fixture
def alive(target: Target) -> Iterator[Target]:
    """Runs the test, then proves the receiver survived it unharmed."""
    before = _snapshot(target.root, target.out, target.scp.log_path)
    target.baseline = before
    yield target
    assert_healthy(target, before)


def healthy_after_example(target: Target) -> None:
    """After each Hypothesis example: ``alive`` runs once per test function, not per
    example, so without this a crash or a stray file would be blamed on the whole test
    (or go unseen if a later example hid it). The receiver is up and answers a C-ECHO on
    a new association, wrote nothing outside OUTPUT, only valid paths in it, and logged no
    crash. (Waiting for its associations to drain is left to ``alive``: ~0.2 s each.)"""
    scp = target.scp
    assert scp.proc.poll() is None, f"migrator scp died:\n{scp.log_text()[-5000:]}"
    echo(scp)
    assert _snapshot(target.root, target.out, scp.log_path) == target.baseline
    _check_output(target.out)
    log = scp.log_text()
    for crash in ("handler error", "Exception in thread", "Traceback"):
        assert crash not in log, log[-5000:]


def assert_healthy(target: Target, before: dict[str, tuple[int, int, int]]) -> None:
    scp = target.scp
    assert scp.proc.poll() is None, f"migrator scp died:\n{scp.log_text()[-5000:]}"
    echo(scp)
    # No association thread left behind (a stalled or confused one would hold a slot).
    deadline = time.monotonic() + 10
    while True:
        lines = re.findall(r"active_associations=(\d+)", scp.log_text()[-4000:])
        if lines and lines[-1] == "0":
            break
        assert time.monotonic() < deadline, scp.log_text()[-3000:]
        time.sleep(0.1)
    assert _snapshot(target.root, target.out, scp.log_path) == before
    _check_output(target.out)
    log = scp.log_text()
    assert "handler error" not in log  # a bug in our C-STORE handler
    assert "Exception in thread" not in log  # a dead pynetdicom thread
    assert "Traceback" not in log  # a broken peer is one warning line


def echo(scp: RunningScp) -> None:
    assoc = Association.request(scp.host, scp.port, scp.ae_title, "FUZZER", CONTEXTS, timeouts=FAST)
    try:
        assert assoc.c_echo().status == 0
    finally:
        assoc.release()


# -- raw PDUs ----------------------------------------------------------------------------


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BxI", pdu_type, len(body) if length is None else length) + body


def pdata(ctx: int, control: int, data: bytes, item_length: int | None = None) -> bytes:
    n = len(data) + 2 if item_length is None else item_length
    return pdu(0x04, struct.pack(">IBB", n, ctx, control) + data)


def raw_exchange(scp: RunningScp, *chunks: bytes, linger: float = 0.3) -> bytes:
    """Connect, send the chunks, read whatever comes back for ``linger`` s, close."""
    answer = b""
    with socket.create_connection((scp.host, scp.port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            for chunk in chunks:
                sock.sendall(chunk)
        sock.settimeout(linger)
        with contextlib.suppress(OSError):
            while len(answer) < 65536:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
    return answer


def associate_rq() -> bytes:
    return encode_associate_rq("MIGRATOR-SCP", "FUZZER", CONTEXTS, 16384)


def associated(scp: RunningScp) -> socket.socket:
    """A raw socket with an accepted association (A-ASSOCIATE-AC read)."""
    sock = socket.create_connection((scp.host, scp.port), timeout=5)
    sock.sendall(associate_rq())
    head = _recv_exact(sock, 6)
    assert head[0] == 0x02, head
    _recv_exact(sock, struct.unpack(">I", head[2:6])[0])
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


MALFORMED: dict[str, list[bytes]] = {
    "empty": [b""],
    "one byte": [b"\x01"],
    "truncated header": [b"\x01\x00\x00\x00"],
    "unknown PDU type": [pdu(0x99, b"\x00" * 10)],
    "PDU type 0": [pdu(0x00, b"")],
    "A-ASSOCIATE-AC to an acceptor": [pdu(0x02, b"\x00\x01\x00\x00" + b" " * 64)],
    "A-ASSOCIATE-RJ to an acceptor": [pdu(0x03, b"\x00\x01\x01\x01")],
    "A-ASSOCIATE-RQ empty body": [pdu(0x01, b"")],
    "A-ASSOCIATE-RQ short fixed part": [pdu(0x01, b"\x00\x01\x00\x00ABC")],
    "A-ASSOCIATE-RQ length says less": [
        associate_rq()[:2] + b"\x00\x00\x00\x10" + associate_rq()[6:]
    ],
    "A-ASSOCIATE-RQ length says more, then close": [pdu(0x01, associate_rq()[6:], 100000)],
    "A-ASSOCIATE-RQ huge declared length": [pdu(0x01, associate_rq()[6:], 0xFFFFFFFF)],
    "A-ASSOCIATE-RQ garbage items": [
        pdu(0x01, associate_rq()[6:74] + bytes(range(256)) * 3),
    ],
    "A-ASSOCIATE-RQ item length beyond the PDU": [
        pdu(0x01, associate_rq()[6:74] + b"\x10\x00\xff\xff" + b"1.2.840"),
    ],
    "A-ASSOCIATE-RQ context item with zero length": [
        pdu(
            0x01,
            associate_rq()[6:74]
            + b"\x10\x00\x00\x15"
            + b"1.2.840.10008.3.1.1.1"
            + b"\x20\x00\x00\x00",
        ),
    ],
    "A-ASSOCIATE-RQ protocol version 0xFFFF": [
        pdu(0x01, b"\xff\xff" + associate_rq()[8:]),
    ],
    "A-ASSOCIATE-RQ AE titles of NULs and escapes": [
        pdu(
            0x01,
            associate_rq()[6:10]
            + b"\x00" * 16
            + b"\x1b[31m../..\\\x00\x00\x00\x00\x00"
            + associate_rq()[42:],
        ),
    ],
    "P-DATA before association": [pdata(1, 0x03, c_echo_rq(1))],
    "P-DATA huge item length before association": [pdata(1, 0x03, b"", item_length=0xFFFFFFF0)],
    "A-RELEASE-RQ before association": [pdu(0x05, b"\x00" * 4)],
    "A-RELEASE-RP before association": [pdu(0x06, b"\x00" * 4)],
    "A-ABORT before association": [pdu(0x07, b"\x00\x00\x02\x00")],
    "P-DATA huge declared length": [pdu(0x04, b"\x00" * 64, 0xFFFFFFFF)],
    "HTTP request": [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
    "TLS ClientHello to a plain port": [bytes.fromhex("16030100a5010000a10303") + b"\x00" * 160],
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_pdu_on_a_fresh_connection(alive: Target, name: str) -> None:
    raw_exchange(alive.scp, *MALFORMED[name])


AFTER_ASSOCIATION: dict[str, list[bytes]] = {
    "PDV item length beyond the PDU": [pdata(1, 0x03, c_echo_rq(1), item_length=0x7FFFFFFF)],
    "PDV item length 0": [pdata(1, 0x03, b"", item_length=0)],
    "PDV item length 1": [pdu(0x04, b"\x00\x00\x00\x01\x01")],
    "PDV on a context never proposed": [pdata(99, 0x03, c_echo_rq(1))],
    "PDV on an even (unproposable) context id": [pdata(2, 0x03, c_echo_rq(1))],
    "command of random bytes": [pdata(1, 0x03, bytes(range(256)))],
    "command group length lies": [
        pdata(1, 0x03, b"\x00\x00\x00\x00\x04\x00\x00\x00\xff\xff\xff\x7f" + c_echo_rq(1)[12:])
    ],
    "dataset before any command": [pdata(3, 0x02, b"\x08\x00\x18\x00\x02\x00\x00\x001\x00")],
    "C-STORE command then abort mid-dataset": [
        pdata(3, 0x03, c_store_rq(1, CT, "1.2.3")),
        pdata(3, 0x00, b"\x08\x00\x16\x00"),
        pdu(0x07, b"\x00\x00\x00\x00"),
    ],
    "C-STORE command then close mid-dataset": [
        pdata(3, 0x03, c_store_rq(1, CT, "1.2.3")),
        pdata(3, 0x00, b"\x08\x00\x16\x00" + b"\xff" * 100),
    ],
    "C-STORE whose dataset declares 4 GB elements": [
        pdata(3, 0x03, c_store_rq(1, CT, "1.2.3")),
        pdata(3, 0x02, b"\x08\x00\x18\x00\xff\xff\xff\xff" + b"1.2.3\x00"),
    ],
    "P-DATA larger than the negotiated max PDU": [
        pdata(3, 0x03, c_store_rq(1, CT, "1.2.3")),
        pdata(3, 0x02, b"\x00" * 40000),
    ],
    "second A-ASSOCIATE-RQ": [associate_rq()],
    "A-RELEASE-RQ with a tail": [pdu(0x05, b"\x00" * 4 + b"junk")],
    "unknown PDU type": [pdu(0x42, b"hello")],
    "truncated next header": [b"\x04\x00\x00"],
    # found by test_random_pdus checking health after each example: pynetdicom's AA-3
    # raised ValueError on the source and its DUL thread died with a traceback
    "A-ABORT with an invalid source": [pdu(0x07, b"\x00\x00\x70\x00")],
    "A-ABORT with an invalid reason": [pdu(0x07, b"\x00\x00\x02\x70")],
}


@pytest.mark.parametrize("name", list(AFTER_ASSOCIATION))
def test_malformed_pdu_inside_an_association(alive: Target, name: str) -> None:
    sock = associated(alive.scp)
    with sock:
        with contextlib.suppress(OSError):
            for chunk in AFTER_ASSOCIATION[name]:
                sock.sendall(chunk)
        sock.settimeout(0.3)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass


def test_peers_that_stall_mid_pdu_are_dropped(alive: Target) -> None:
    """As many associations stalled mid-PDU as --max-conns lock everyone out, until
    --io-timeout drops them (pynetdicom alone would wait for them forever: it reads a PDU
    in blocking recv calls and checks its timers only between PDUs). Connections stalled
    in the middle of their A-ASSOCIATE-RQ take no slot: they never asked for one."""
    scp = alive.scp
    stalled = []
    try:
        for chunk in (b"\x01\x00\x00", pdu(0x01, b"\x00\x01", 500)):
            sock = socket.create_connection((scp.host, scp.port), timeout=5)
            sock.sendall(chunk)
            stalled.append(sock)
        time.sleep(0.2)
        echo(scp)  # the two half requests hold nothing
        for _ in range(3):  # --max-conns 3
            sock = associated(scp)
            sock.sendall(pdata(1, 0x03, c_echo_rq(1))[:9])  # half a P-DATA
            stalled.append(sock)
        time.sleep(0.2)
        with pytest.raises(AssociationRejected, match="local limit exceeded"):
            echo(scp)  # the slots are taken...
        time.sleep(1.5)  # ... until --io-timeout (1 s) drops the stalled peers
        echo(scp)
    finally:
        for sock in stalled:
            sock.close()
    scp.wait_for_log(r"dropped: no data for 1 s in the middle of a PDU \(--io-timeout\)")


@pytest.mark.parametrize("associate_first", [False, True])
def test_a_pdu_far_larger_than_our_maximum_is_not_buffered(
    alive: Target, associate_first: bool
) -> None:
    """pynetdicom reads a whole PDU into memory, whatever length it declares: a peer
    declaring 2 GB and sending it would take 2 GB. Ours drops it after the header."""
    scp = alive.scp
    sock = associated(scp) if associate_first else socket.create_connection((scp.host, scp.port))
    dropped = False
    with sock:
        sock.settimeout(5)
        try:
            sock.sendall(pdu(0x04 if associate_first else 0x01, b"", 0x7FFFFFF0))
            for _ in range(64):  # up to 64 MiB, the receiver never asks for more
                sock.sendall(b"\x00" * (1024 * 1024))
        except OSError:
            dropped = True  # reset by the receiver while we were still sending
    assert dropped
    scp.wait_for_log(r"announced a PDU of 2147483632 bytes")


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(min_size=1, max_size=3000))
def test_random_bytes_on_a_fresh_connection(alive: Target, data: bytes) -> None:
    raw_exchange(alive.scp, data, linger=0.05)
    healthy_after_example(alive)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pdu_type=st.sampled_from([0x01, 0x04, 0x05, 0x06, 0x07]),
    body=st.binary(max_size=600),
    declared=st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)),
    after_association=st.booleans(),
)
def test_random_pdus(
    alive: Target, pdu_type: int, body: bytes, declared: int | None, after_association: bool
) -> None:
    chunk = pdu(pdu_type, body, declared)
    if not after_association:
        raw_exchange(alive.scp, chunk, linger=0.05)
    else:
        with associated(alive.scp) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(chunk)
            sock.settimeout(0.05)
            with contextlib.suppress(OSError):
                sock.recv(65536)
    healthy_after_example(alive)


# -- hostile datasets over valid associations ---------------------------------------------


def element(group: int, elem: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element, padded to even length."""
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", group, elem, len(value)) + value


def dataset(study: bytes, series: bytes, sop: bytes, *, patient: bytes = b"FUZZ^PATIENT") -> bytes:
    return b"".join(
        [
            element(0x0008, 0x0016, CT.encode()),
            element(0x0008, 0x0018, sop),
            element(0x0010, 0x0010, patient),
            element(0x0010, 0x0020, b"FUZZ-ID"),
            element(0x0020, 0x000D, study),
            element(0x0020, 0x000E, series),
            element(0x7FE0, 0x0010, b"\x00\x01" * 8),
        ]
    )


def command_uid(raw: bytes) -> str:
    """The SOP Instance UID for the C-STORE request: as sent when it is ASCII."""
    return raw.decode("latin-1").encode("ascii", "replace").decode("ascii")


class Sender:
    """One association reused across C-STOREs (reopened when the receiver drops it)."""

    def __init__(self, scp: RunningScp) -> None:
        self.scp = scp
        self.assoc: Association | None = None

    def store(self, sop_in_command: str, data: bytes) -> int | None:
        if self.assoc is None or not self.assoc.is_alive:
            self.assoc = Association.request(
                self.scp.host, self.scp.port, self.scp.ae_title, "FUZZER", CONTEXTS, timeouts=FAST
            )
        try:
            return self.assoc.c_store(3, CT, sop_in_command, data).status
        except AssociationLost:
            self.assoc = None
            return None

    def close(self) -> None:
        if self.assoc is not None:
            self.assoc.release()


@pytest.fixture
def sender(target: Target) -> Iterator[Sender]:
    """One association for a test (all its examples); released before ``alive`` checks."""
    s = Sender(target.scp)
    yield s
    s.close()


def as_read(raw: bytes) -> str:
    """The UID as the receiver reads it (trailing NUL/space padding and outer blanks go)."""
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def expect_outcome(
    target: Target, study: bytes, series: bytes, sop: bytes, status: int | None
) -> None:
    raw = [u.decode("latin-1") for u in (study, series, sop)]
    read = [as_read(u) for u in (study, series, sop)]
    if all(is_valid_uid(u) for u in raw):
        assert status == 0, (raw, status)
    elif not all(is_valid_uid(u) for u in read):
        assert status != 0, (raw, status)
        # Refused with a status; or, when the request's own SOP Instance UID is empty or
        # longer than 64 characters (pynetdicom refuses to decode it), aborted (A-ABORT:
        # None here).
        assert status is not None or not 0 < len(read[2]) <= 64, (raw, status)
    # else: only padding or blanks around a valid UID: stored under the clean UID, or
    # refused because the request's UID reads differently; both are safe.
    if status == 0:
        assert target.out.joinpath(*read[:2], read[2] + ".dcm").is_file(), read


@pytest.mark.parametrize("position", ["study", "series", "sop"])
def test_hostile_uids_are_refused_and_nothing_escapes(
    alive: Target, sender: Sender, position: str
) -> None:
    for bad in HOSTILE_UIDS:
        uids = {"study": b"1.2.826.0.1.1", "series": b"1.2.826.0.1.1.2", "sop": b"1.2.826.0.1.9"}
        uids[position] = bad
        status = sender.store(command_uid(uids["sop"]), dataset(**uids))
        if position == "sop" and command_uid(bad).encode() != bad:
            assert status not in (0, None), (bad, status)  # command and dataset differ
            continue
        expect_outcome(alive, uids["study"], uids["series"], uids["sop"], status)


def test_a_planted_symlink_in_output_is_not_followed(alive: Target, sender: Sender) -> None:
    status = sender.store("1.2.826.0.1.77", dataset(b"planted", b"1.2.3", b"1.2.826.0.1.77"))
    assert status not in (0, None)  # "planted" is no UID
    assert not (alive.root / "outside" / "1.2.3").exists()


def test_valid_instance_still_lands_where_it_should(alive: Target, sender: Sender) -> None:
    uids = (b"1.2.826.0.1.5", b"1.2.826.0.1.5.1", b"1.2.826.0.1.5.1.1")
    status = sender.store(uids[2].decode(), dataset(*uids))
    expect_outcome(alive, *uids, status)


_uid_component = st.one_of(st.just("0"), st.integers(1, 10**12).map(str))
valid_uids = (
    st.lists(_uid_component, min_size=2, max_size=8).map(".".join).filter(lambda u: len(u) <= 64)
)
any_uid = st.one_of(
    valid_uids.map(str.encode),
    st.sampled_from(HOSTILE_UIDS),
    st.text(alphabet="0123456789./\\\x00 -_~", max_size=80).map(str.encode),
    st.binary(max_size=80),
)


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(study=any_uid, series=any_uid, sop=any_uid, patient=st.binary(max_size=70))
def test_random_datasets_over_a_valid_association(
    alive: Target, sender: Sender, study: bytes, series: bytes, sop: bytes, patient: bytes
) -> None:
    status = sender.store(command_uid(sop), dataset(study, series, sop, patient=patient))
    if command_uid(sop).encode() == sop:
        expect_outcome(alive, study, series, sop, status)
    else:
        assert status not in (0, None)
    healthy_after_example(alive)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=2000), sop=valid_uids)
def test_random_dataset_bytes_over_a_valid_association(
    alive: Target, sender: Sender, data: bytes, sop: str
) -> None:
    status = sender.store(sop, data)
    assert status != 0  # garbage is never "stored"
    healthy_after_example(alive)
