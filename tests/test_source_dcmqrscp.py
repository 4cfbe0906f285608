"""DCMTK ``dcmqrscp`` as the old PACS (issue 17): a second, independent Q/R SCP.

It answers C-FIND at IMAGE level without a SOP Class UID, so the C-GET offers the common
storage classes; C-MOVE goes to our own Storage SCP, registered in its host table. What a
user checks: the destination's instance set equals the source's, the report's invariant,
the exit code; ``--retrieve auto`` against a source without C-GET (``--disable-get``)
still brings everything (by C-MOVE); an unknown move destination is said as such.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from migrator.synth.corpora import write_corpus
from tests.behaviourhelpers import Result, send
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import free_move_port

pytestmark = pytest.mark.timeout(300)

OUR_AE = "MIGRATOR"
MOVE_AE = "MIGRATOR-MOVE"


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    """12 instances, 2 studies, 4 series, explicit and implicit VR: SOP UID -> file."""
    files = write_corpus(
        tmp_path / "a",
        count=6,
        studies=1,
        series_per_study=2,
        seed=41,
        transfer_syntax=ExplicitVRLittleEndian,
    ) + write_corpus(
        tmp_path / "b",
        count=6,
        studies=1,
        series_per_study=2,
        seed=42,
        transfer_syntax=ImplicitVRLittleEndian,
    )
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


@pytest.fixture
def move_port() -> int:
    return free_move_port()


def _pacs(tmp_path: Path, files: Sequence[Path], move_port: int, *args: str) -> DcmqrscpPeer:
    peer = DcmqrscpPeer(
        tmp_path / "dcmqrscp",
        aet="OLDPACS",
        peers={OUR_AE: 1, MOVE_AE: move_port},
        extra_args=["-v", *args],
    )
    peer.add(files)
    return peer.start()


@pytest.fixture
def stopping() -> Iterator[list[DcmqrscpPeer]]:
    peers: list[DcmqrscpPeer] = []
    yield peers
    for p in peers:
        p.stop()


def _send(
    front_end: str, pacs: DcmqrscpPeer, storescp: StoreScpPeer, tmp_path: Path, *extra: str
) -> Result:
    return send(
        front_end,
        tmp_path,
        storescp.port,
        storescp.aet,
        tmp_path,
        "--source-calling-ae",
        OUR_AE,
        *extra,
        sources=[f"dimse://{pacs.aet}@127.0.0.1:{pacs.port}"],
    )


def _received(storescp: StoreScpPeer) -> set[str]:
    return storescp.received_sop_uids()


@pytest.mark.parametrize(
    ("front_end", "retrieve"), [("store", "get"), ("run", "move"), ("store", "auto")]
)
def test_the_destination_gets_dcmqrscps_instance_set(
    front_end: str,
    retrieve: str,
    corpus: dict[str, Path],
    move_port: int,
    storescp: StoreScpPeer,
    stopping: list[DcmqrscpPeer],
    tmp_path: Path,
) -> None:
    """auto: against dcmqrscp --disable-get, which refuses C-GET's context: C-MOVE."""
    no_get = ["--disable-get"] if retrieve == "auto" else []
    pacs = _pacs(tmp_path, list(corpus.values()), move_port, *no_get)
    stopping.append(pacs)
    move = ["--move-ae", MOVE_AE, "--move-port", str(move_port)]
    result = _send(front_end, pacs, storescp, tmp_path, "--retrieve", retrieve, *move)
    assert result.rc == 0, result.tail()
    totals = result.totals()
    assert totals["planned"] == totals["stored"] == len(corpus), totals
    assert _received(storescp) == set(corpus)
    for arrived in storescp.received_files():
        given = pydicom.dcmread(corpus[str(pydicom.dcmread(arrived).SOPInstanceUID)])
        assert pydicom.dcmread(arrived).PixelData == given.PixelData
    # One request per series (4), by C-GET or C-MOVE as asked (auto: C-MOVE here).
    log = pacs.log_path.read_text()
    requests = (log.count("C-GET RQ"), log.count("C-MOVE RQ"))
    assert requests == ((4, 0) if retrieve == "get" else (0, 4)), requests


def test_a_move_destination_dcmqrscp_does_not_know_is_said(
    corpus: dict[str, Path],
    move_port: int,
    storescp: StoreScpPeer,
    stopping: list[DcmqrscpPeer],
    tmp_path: Path,
) -> None:
    pacs = _pacs(tmp_path, list(corpus.values())[:3], move_port)
    stopping.append(pacs)
    move = ["--move-ae", "STRANGER", "--move-port", str(move_port)]
    result = _send("store", pacs, storescp, tmp_path, "--retrieve", "move", *move)
    assert result.rc == 1, result.tail()
    totals = result.totals()
    assert totals["planned"] == totals["failed"] == 3, totals
    reasons = {f["reason"] for f in result.report["files"]}  # type: ignore[index]
    assert reasons == {
        "the source refused the move destination AE STRANGER: register it there (with this "
        f"host and port {move_port}; C-MOVE 0xA801 Move destination unknown)"
    }, reasons
    assert not storescp.received_files()
