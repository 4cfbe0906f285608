"""DICOM TLS against another implementation: DCMTK 3.6.7 (OpenSSL), not our own peer.

test_tls.py runs our sender against our receiver; both use ``migrator/dul/tls.py``, so a
mistake shared by the two (a wrong verification default, a protocol or certificate
handling only we accept) would pass there. Here each side of ours meets DCMTK:

* `migrator store --tls` → ``storescp +tls`` (DCMTK's default BCP 195 non-downgrading
  profile; it requires and verifies our client certificate);
* ``storescu +tls`` → `migrator scp --tls --tls-ca` (we are the receiver: we verify the
  client certificate, DCMTK verifies ours).

The same throwaway PKI as test_tls.py (EC P-256, a CA, server and client certificates, a
rogue CA with its own client certificate).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from migrator import synth
from migrator.exitcodes import ExitStatus
from tests.peers.dcmtk import StoreScpPeer, dcmtk_binary, run_storescu
from tests.peers.migrator_scp import RunningScp, start_migrator_scp
from tests.storehelpers import run_migrator, sop_uid
from tests.test_tls import Pki, make_pki

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    files = synth.write_corpus(tmp_path_factory.mktemp("corpus"), count=3, seed=31)
    # and one of ~3 MB: many PDUs, several TLS records per PDU
    ds = synth.make_dataset(seed=32, rows=1024, cols=1536)
    return [*files, synth.write_dataset(ds, files[0].parent / "big.dcm")]


def _storescp_tls(tmp: Path, pki: Pki) -> StoreScpPeer:
    """``storescp +tls KEY CERT -pw +cf CA``: requires a client certificate from our CA."""
    tls = ["+tls", str(pki.server_key), str(pki.server_cert), "-pw", "+cf", str(pki.ca)]
    return StoreScpPeer(tmp / "storescp", fork=False, extra_args=tls)


@pytest.fixture
def storescp_tls(tmp_path: Path, pki: Pki) -> Iterator[StoreScpPeer]:
    with _storescp_tls(tmp_path, pki) as peer:
        yield peer


def _store(peer: StoreScpPeer, files: list[Path], *tls: str | Path) -> tuple[int, str]:
    proc = run_migrator(
        "store",
        "--host",
        peer.host,
        "--port",
        str(peer.port),
        "--called-ae",
        peer.aet,
        "--retries",
        "0",
        *tls,
        *files,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _same_dataset(sent: Path, got: Path) -> None:
    a, b = pydicom.dcmread(sent), pydicom.dcmread(got)
    assert b.SOPInstanceUID == a.SOPInstanceUID
    assert b.PixelData == a.PixelData
    assert b.PatientName == a.PatientName


# -- we send, DCMTK receives -------------------------------------------------------------


def test_store_over_mutual_tls_to_dcmtk_storescp(
    storescp_tls: StoreScpPeer, pki: Pki, corpus: list[Path]
) -> None:
    code, out = _store(
        storescp_tls,
        corpus,
        "--tls",
        "--tls-ca",
        pki.ca,
        "--tls-cert",
        pki.client_cert,
        "--tls-key",
        pki.client_key,
    )
    assert code == ExitStatus.OK, out + storescp_tls.log()
    got = {sop_uid(p): p for p in storescp_tls.received_files()}
    assert set(got) == {sop_uid(p) for p in corpus}
    for sent in corpus:
        _same_dataset(sent, got[sop_uid(sent)])


@pytest.mark.parametrize("client", ["none", "rogue"])
def test_dcmtk_storescp_refuses_a_sender_without_a_certificate_it_trusts(
    storescp_tls: StoreScpPeer, pki: Pki, corpus: list[Path], client: str
) -> None:
    """storescp requires a client certificate from its CA: without one, or with one from
    another CA, the handshake fails, `store` says it cannot connect, nothing arrives."""
    cert = [] if client == "none" else ["--tls-cert", pki.rogue_client_cert]
    key = [] if client == "none" else ["--tls-key", pki.rogue_client_key]
    code, out = _store(storescp_tls, corpus[:1], "--tls", "--tls-ca", pki.ca, *cert, *key)
    assert code == ExitStatus.CANNOT_CONNECT, out
    assert "TLS" in out and "Traceback" not in out, out
    assert storescp_tls.received_files() == []
    assert storescp_tls.is_running()


def test_store_refuses_a_dcmtk_receiver_whose_certificate_it_cannot_verify(
    storescp_tls: StoreScpPeer, pki: Pki, corpus: list[Path]
) -> None:
    code, out = _store(
        storescp_tls,
        corpus[:1],
        "--tls",
        "--tls-ca",
        pki.rogue_ca,
        "--tls-cert",
        pki.client_cert,
        "--tls-key",
        pki.client_key,
    )
    assert code == ExitStatus.CANNOT_CONNECT, out
    assert "certificate verification failed" in out, out
    assert storescp_tls.received_files() == []


# -- DCMTK sends, we receive -------------------------------------------------------------


@pytest.fixture
def scp_tls(tmp_path: Path, pki: Pki) -> Iterator[RunningScp]:
    args = ["--tls", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    with start_migrator_scp(tmp_path / "scp", *args, "--tls-ca", str(pki.ca)) as scp:
        yield scp


def _storescu(
    scp: RunningScp, files: list[Path], *tls: str | Path
) -> subprocess.CompletedProcess[str]:
    return run_storescu(
        scp.host,
        scp.port,
        files,
        called_ae=scp.ae_title,
        extra_args=[str(a) for a in tls],
        timeout=60,
    )


def _written(scp: RunningScp) -> dict[str, Path]:
    return {p.stem: p for p in scp.output_dir.rglob("*.dcm")}


def test_dcmtk_storescu_over_mutual_tls_to_our_receiver(
    scp_tls: RunningScp, pki: Pki, corpus: list[Path]
) -> None:
    proc = _storescu(scp_tls, corpus, "+tls", pki.client_key, pki.client_cert, "-pw", "+cf", pki.ca)
    assert proc.returncode == 0, proc.stdout + scp_tls.log_text()
    got = _written(scp_tls)
    assert set(got) == {sop_uid(p) for p in corpus}
    for sent in corpus:
        _same_dataset(sent, got[sop_uid(sent)])


@pytest.mark.parametrize("client", ["anonymous", "rogue"])
def test_our_receiver_refuses_a_dcmtk_sender_without_a_certificate_it_trusts(
    scp_tls: RunningScp, pki: Pki, corpus: list[Path], client: str
) -> None:
    """``--tls-ca``: a client must show a certificate from that CA. storescu with anonymous
    TLS (no certificate) or one from another CA is refused in the handshake; nothing is
    written, and the receiver still serves a trusted client afterwards."""
    if client == "anonymous":
        tls: list[str | Path] = ["+tla", "+cf", pki.ca]
        why = "the peer presented no client certificate"
    else:
        tls = ["+tls", pki.rogue_client_key, pki.rogue_client_cert, "-pw", "+cf", pki.ca]
        why = "certificate verification failed"
    proc = _storescu(scp_tls, corpus[:1], *tls)
    assert proc.returncode != 0, proc.stdout
    assert "Association Request Failed" in proc.stdout, proc.stdout
    scp_tls.wait_for_log(rf"TLS handshake with 127\.0\.0\.1:\d+ failed: {why}")
    assert _written(scp_tls) == {}
    good = _storescu(
        scp_tls, corpus[:1], "+tls", pki.client_key, pki.client_cert, "-pw", "+cf", pki.ca
    )
    assert good.returncode == 0, good.stdout
    assert set(_written(scp_tls)) == {sop_uid(corpus[0])}


def test_dcmtk_storescu_refuses_our_receiver_when_it_does_not_trust_our_ca(
    scp_tls: RunningScp, pki: Pki, corpus: list[Path]
) -> None:
    proc = _storescu(
        scp_tls,
        corpus[:1],
        "+tls",
        pki.client_key,
        pki.client_cert,
        "-pw",
        "+cf",
        pki.rogue_ca,
    )
    assert proc.returncode != 0, proc.stdout
    assert "TLS error: certificate verify failed" in proc.stdout, proc.stdout
    scp_tls.wait_for_log(r"TLS handshake with .* failed: the peer does not trust the CA")
    assert _written(scp_tls) == {}


def test_dcmtk_echoscu_over_mutual_tls_to_our_receiver(scp_tls: RunningScp, pki: Pki) -> None:
    cmd = [
        dcmtk_binary("echoscu"),
        "-aet",
        "ECHOSCU",
        "-aec",
        scp_tls.ae_title,
        "+tls",
        str(pki.client_key),
        str(pki.client_cert),
        "-pw",
        "+cf",
        str(pki.ca),
        scp_tls.host,
        str(scp_tls.port),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
