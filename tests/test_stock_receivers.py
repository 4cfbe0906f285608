"""Against receivers as they ship (Nagle on), C-STOREs are not held by delayed ACKs (issue 16).

Stock DCMTK `storescp` and stock Orthanc write a C-STORE response in two segments and hold
the second until the first is ACKed; a sender whose kernel delays that ACK waits ~40 ms per
file (~22 files/s per association, TESTING.md §12). Our reads re-arm TCP_QUICKACK: the
C-STORE latency the report measures (request sent to answer read) then stays far below the
delayed-ACK timer, through both front ends. Correctness, not speed: the bound is the 40 ms
timer's, with a wide margin.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from migrator import synth
from migrator.netutil import quick_ack
from tests.behaviourhelpers import send
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer

pytestmark = [pytest.mark.timeout(180)]

FILES = 120
#: A delayed ACK costs ~40 ms on Linux: half of that is far above what an answer takes on
#: loopback (~0.3 ms) and far below the timer.
BOUND_S = 0.02


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stock") / "in"
    synth.write_corpus(folder, count=FILES, size="tiny", seed=1601)
    return folder


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_quick_ack_switches_the_socket_to_quick_ack_mode() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            quick_ack(client)
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
        finally:
            client.close()
            peer.close()
    quick_ack(socket.socket(socket.AF_UNIX))  # not TCP: no error


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's delayed ACK")
@pytest.mark.parametrize("front_end", ["store", "run"])
@pytest.mark.parametrize("receiver", ["storescp", "orthanc"])
def test_a_stock_receiver_answers_without_delayed_ack_waits(
    front_end: str,
    receiver: str,
    corpus: Path,
    tmp_path: Path,
    storescp_factory: Callable[..., StoreScpPeer],
    orthanc_factory: Callable[..., OrthancPeer],
) -> None:
    if receiver == "storescp":
        peer = storescp_factory(ignore=True, nodelay=False)
        port, aet = peer.port, peer.aet
    else:
        orthanc = orthanc_factory(nodelay=False, verbose=False)
        port, aet = orthanc.dicom_port, orthanc.aet
    result = send(front_end, corpus, port, aet, tmp_path, "-j", "1", workers=1)
    assert result.rc == 0, result.tail()
    assert result.report is not None
    latency = result.report["latency"]
    assert latency["count"] == FILES, latency
    assert latency["p50_s"] < BOUND_S and latency["p90_s"] < BOUND_S, (latency, result.tail())
