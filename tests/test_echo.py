"""`migrator echo` against Orthanc and DCMTK storescp, and its failures."""

from __future__ import annotations

import time
from collections.abc import Callable

from migrator.exitcodes import ExitStatus
from migrator.netutil import free_port
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer
from tests.storehelpers import run_migrator


def test_echo_succeeds_against_orthanc_and_storescp(
    orthanc: OrthancPeer, storescp: StoreScpPeer
) -> None:
    for port, aet in ((orthanc.dicom_port, "ORTHANC"), (storescp.port, "STORESCP")):
        proc = run_migrator("echo", "127.0.0.1", str(port), "--called-ae", aet, "-c", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("Success (0x0000)") == 3


def test_echo_to_a_closed_port_fails_fast_with_cannot_connect() -> None:
    port = free_port()
    t0 = time.monotonic()
    proc = run_migrator("echo", "127.0.0.1", str(port), "--network-timeout", "5s")
    assert time.monotonic() - t0 < 5
    assert proc.returncode == ExitStatus.CANNOT_CONNECT
    assert "connection refused" in proc.stderr


def test_echo_with_a_wrong_called_ae_is_rejected_with_the_reason(
    orthanc_factory: Callable[..., OrthancPeer],
) -> None:
    orthanc = orthanc_factory(check_called_aet=True)
    proc = run_migrator("echo", "127.0.0.1", str(orthanc.dicom_port), "--called-ae", "WRONGAET")
    assert proc.returncode == ExitStatus.ASSOCIATION_REJECTED
    assert "called AE title not recognized" in proc.stderr
    assert "permanent" in proc.stderr
    ok = run_migrator("echo", "127.0.0.1", str(orthanc.dicom_port), "--called-ae", "ORTHANC")
    assert ok.returncode == 0, ok.stderr


def test_invalid_ae_title_is_a_usage_error() -> None:
    proc = run_migrator("echo", "127.0.0.1", "104", "--called-ae", "THIS-IS-MUCH-TOO-LONG")
    assert proc.returncode == 2
    assert "longer than 16" in proc.stderr
