"""`migrator scp --processes N`: several receiving processes behind one port.

What a user relies on: every file sent lands once, the summary adds up the processes'
counts, --max-conns holds for the receiver as a whole (not per process), SIGTERM stops
every process, and a receiving process that dies stops the receiver with exit status 1
instead of leaving it half alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from migrator.netutil import patch_pynetdicom_nodelay
from tests.peers.migrator_scp import make_instance, receivers

CT = "1.2.840.10008.5.1.4.1.1.2"

patch_pynetdicom_nodelay()


@pytest.fixture
def scps(tmp_path: Path) -> Iterator[Any]:
    """Receivers started in this test's tmp dir; none outlives the test."""
    with receivers(tmp_path) as start:
        yield start


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _associate(port: int, **kw: Any) -> Association:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title="MIGRATOR-SCP", **kw)


def _files(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_file()}


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"receiving processes left running: {pids}"
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_two_processes_receive_every_file_once_and_the_summary_adds_them_up(
    scps: Any, tmp_path: Path
) -> None:
    """Four DCMTK storescu at once, three files each: every file lands once, and the
    parent's summary adds up what its two receiving processes counted."""
    from migrator.synth import write_corpus

    scp = scps("--no-organize", "--processes", "2")
    children = _children(scp.proc.pid)
    assert len(children) == 2, children
    scp.wait_for_log(r"2 receiving processes \(pids \d+, \d+\) share the port")
    sent = set()
    senders = []
    for n in range(4):
        folder = tmp_path / f"in-{n}"
        files = write_corpus(folder, count=3, size="tiny", seed=1710 + n)
        sent |= {_sop_of(path) + ".dcm" for path in files}
        senders.append(
            subprocess.Popen(
                [
                    *("storescu", "+sd", "+r", "-aec", scp.ae_title),
                    *("127.0.0.1", str(scp.port), str(folder)),
                ],
                env={**os.environ, "TCP_NODELAY": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    for sender in senders:
        _, err = sender.communicate(timeout=60)
        assert sender.returncode == 0, err
    assert len(sent) == 12
    assert _files(scp.output_dir) == sent
    summary = scp.stop()
    assert "C-STORE requests: 12" in summary
    assert "Successful stores: 12" in summary
    assert "Associations: 4 accepted, 0 rejected" in summary
    _wait_gone(children)


def _sop_of(path: Path) -> str:
    from migrator.dicomfile.inspect import inspect_file

    return inspect_file(str(path)).sop_instance_uid


@pytest.mark.timeout(90)
def test_max_conns_holds_for_the_receiver_not_for_each_process(scps: Any) -> None:
    """--max-conns 2 with 2 processes: of 4 simultaneous associations, 2 are accepted and
    2 rejected transiently (2, 3, 2), wherever the kernel hands them; a slot freed in one
    process is free for the next association, whichever process takes it."""
    scp = scps("--no-organize", "--processes", "2", "--max-conns", "2")
    results: list[tuple[int, int, int]] = []

    def on_recv(event: evt.Event) -> None:
        p = event.primitive
        if getattr(p, "result", None) is not None:
            results.append((p.result, p.result_source, p.diagnostic))

    assocs = [_associate(scp.port, evt_handlers=[(evt.EVT_ACSE_RECV, on_recv)]) for _ in range(4)]
    held = [a for a in assocs if a.is_established]
    assert len(held) == 2, (results, scp.log_text()[-2000:])
    assert [r for r in results if r[0] != 0] == [(2, 3, 2), (2, 3, 2)]
    held[0].release()
    for _ in range(50):  # the slot is freed once the process has seen the release
        again = _associate(scp.port)
        if again.is_established:
            break
        time.sleep(0.1)
    assert again.is_established
    ds = make_instance("1.2.826.0.1.10", "1.2.826.0.1.10.1", "1.2.826.0.1.10.1.1")
    assert int(again.send_c_store(ds).Status) == 0
    again.release()
    held[1].release()
    summary = scp.stop()
    assert "Associations: 3 accepted, " in summary
    assert _files(scp.output_dir) == {"1.2.826.0.1.10.1.1.dcm"}


@pytest.mark.timeout(60)
def test_sigterm_aborts_the_associations_of_every_process_and_stops_them(scps: Any) -> None:
    scp = scps("--processes", "2")
    children = _children(scp.proc.pid)
    assocs = [_associate(scp.port) for _ in range(3)]
    assert all(a.is_established for a in assocs)
    summary = scp.stop()
    assert "Associations: 3 accepted, 0 rejected" in summary
    for assoc in assocs:
        for _ in range(100):
            if assoc.is_aborted:
                break
            time.sleep(0.05)
        assert assoc.is_aborted
    _wait_gone(children)


@pytest.mark.timeout(60)
def test_a_killed_receiving_process_stops_the_receiver_with_exit_1(scps: Any) -> None:
    scp = scps("--processes", "2")
    children = _children(scp.proc.pid)
    os.kill(children[0], signal.SIGKILL)
    assert scp.proc.wait(15) == 1
    log_text = scp.log_text()
    assert f"receiving process {children[0]} ended on its own (killed by SIGKILL)" in log_text
    assert "Successful stores: 0" in log_text  # the summary is still printed
    _wait_gone(children)


@pytest.mark.timeout(60)
def test_a_receiving_process_told_to_stop_stops_the_receiver_cleanly(scps: Any) -> None:
    """Ctrl-C or systemd's stop reach every process of the group, the children perhaps
    first: a child that stops as told stops the receiver, exit 0, summary printed."""
    scp = scps("--processes", "2")
    children = _children(scp.proc.pid)
    os.kill(children[1], signal.SIGTERM)
    assert scp.proc.wait(15) == 0, scp.log_text()
    log_text = scp.log_text()
    assert f"receiving process {children[1]} stopped: stopping the receiver" in log_text
    assert "shutdown summary:" in log_text
    _wait_gone(children)


def test_fault_injection_needs_one_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "migrator", "scp", "0", "--bind", "127.0.0.1"),
            *("-o", str(tmp_path / "out"), "--processes", "2", "--fail-status", "A700"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "--fail-status and --fail-first count C-STOREs across the whole receiver" in (
        result.stderr
    )
    assert "--processes 1" in result.stderr


def test_the_shared_book_keeps_each_address_apart_and_never_loses_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard's shared counts (4 slots here): each address counted on its own; when
    every slot counts something, one more address gets no slot (its connection is closed
    at accept) and nothing is counted for it; a slot whose counts are back to zero serves
    a new address; the totals always equal the sum of what the addresses hold."""
    import multiprocessing

    from migrator.scp import processes

    monkeypatch.setattr(processes, "SLOTS", 4)
    book = processes.SharedBook(multiprocessing.get_context("fork"))
    hosts = [f"10.0.0.{n}" for n in range(4)]
    for n, host in enumerate(hosts):
        for _ in range(n + 1):
            assert book.pending(host) is not None
            book.add(host, 1, 0)
    assert [book.pending(h) for h in hosts] == [1, 2, 3, 4]
    assert book.pending("10.0.0.99") is None  # no slot left: closed at accept
    book.add(hosts[0], -1, 1)  # pending -> associated: the slot stays taken
    assert book.pending("10.0.0.99") is None
    book.add(hosts[0], 0, -1)  # its last association closed: the slot is free again
    assert book.pending("10.0.0.99") == 0
    book.add("10.0.0.99", 1, 0)
    assert book.pending("10.0.0.99") == 1 and book.associated(hosts[0]) == 0
    assert book.totals() == (2 + 3 + 4 + 1, 0)
    assert [book.pending(h) for h in hosts[1:]] == [2, 3, 4]
