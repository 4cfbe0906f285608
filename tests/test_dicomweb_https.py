"""DICOMweb over https with a private CA and client certificates (mutual TLS), both ways:
to a STOW-RS destination (`--dicomweb-ca/-cert/-key`) and from a QIDO/WADO-RS source with
credentials (`--source-ca/-cert/-key`, `--source-basic-auth-file`).

The https server is a relay in front of a real Orthanc with its DICOMweb plugin, using a
throwaway PKI (tests/test_tls.py): its certificate is signed by a CA no system trusts, and
it refuses every client without a certificate signed by that CA. What a user checks: every
instance arrives; without our CA, or without our certificate, nothing is sent and the
command says why (exit 3 at the preflight, a clear line).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from migrator import synth
from tests.behaviourhelpers import FRONT_ENDS, send
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.http_relay import StowFaultRelay
from tests.peers.orthanc import OrthancPeer
from tests.test_tls import Pki, make_pki

pytestmark = pytest.mark.timeout(240)

FILES = 12


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no request
    return ctx


@pytest.fixture
def https_orthanc(
    orthanc_factory: Callable[..., OrthancPeer], pki: Pki
) -> Iterator[tuple[OrthancPeer, StowFaultRelay]]:
    pacs = orthanc_factory(dicomweb=True, auth=("mig", "s3cret"))
    with StowFaultRelay(pacs.url, [], tls=_server_context(pki)) as relay:
        yield pacs, relay


def _client(pki: Pki, prefix: str) -> list[str]:
    return [
        f"--{prefix}-ca",
        str(pki.ca),
        f"--{prefix}-cert",
        str(pki.client_cert),
        f"--{prefix}-key",
        str(pki.client_key),
    ]


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_stow_rs_over_mutual_tls_with_a_private_ca(
    front_end: str,
    https_orthanc: tuple[OrthancPeer, StowFaultRelay],
    pki: Pki,
    tmp_path: Path,
) -> None:
    pacs, relay = https_orthanc
    synth.write_corpus(tmp_path / "src", count=FILES, size="tiny", seed=41)
    auth = tmp_path / "auth.txt"
    auth.write_text("mig:s3cret\n")
    dest = ["--dicomweb", f"{relay.url}/dicom-web", "--dicomweb-basic-auth-file", str(auth)]
    result = send(
        front_end, tmp_path / "src", 0, "", tmp_path, *_client(pki, "dicomweb"), dest=dest
    )
    assert result.rc == 0, result.tail()
    assert result.totals()["stored"] == FILES
    assert pacs.count_instances() == FILES
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    ("leave_out", "said"),
    [
        ("--dicomweb-ca", "certificate verification failed: self-signed certificate in"),
        # TLS 1.3: the refusal comes as an alert or as a closed connection, by timing.
        ("--dicomweb-cert", "client certificate"),
    ],
)
def test_without_our_ca_or_our_certificate_nothing_is_sent(
    leave_out: str,
    said: str,
    https_orthanc: tuple[OrthancPeer, StowFaultRelay],
    pki: Pki,
    tmp_path: Path,
) -> None:
    pacs, relay = https_orthanc
    synth.write_corpus(tmp_path / "src", count=3, size="tiny", seed=42)
    auth = tmp_path / "auth.txt"
    auth.write_text("mig:s3cret\n")
    client = _client(pki, "dicomweb")
    at = client.index(leave_out)
    del client[at : at + 2]
    if leave_out == "--dicomweb-cert":
        del client[client.index("--dicomweb-key") : client.index("--dicomweb-key") + 2]
    dest = ["--dicomweb", f"{relay.url}/dicom-web", "--dicomweb-basic-auth-file", str(auth)]
    result = send("run", tmp_path / "src", 0, "", tmp_path, *client, dest=dest)
    assert result.rc == 3, result.tail()
    assert "the TLS handshake failed" in result.output and said in result.output, result.tail()
    assert pacs.count_instances() == 0
    assert not relay.posts()


def test_a_dicomweb_source_over_mutual_tls_with_credentials(
    https_orthanc: tuple[OrthancPeer, StowFaultRelay],
    storescp: StoreScpPeer,
    pki: Pki,
    tmp_path: Path,
) -> None:
    pacs, relay = https_orthanc
    for f in synth.write_corpus(tmp_path / "src", count=FILES, size="tiny", seed=43):
        pacs.upload(f.read_bytes())
    source = f"dicomweb+{relay.url}/dicom-web"
    auth = tmp_path / "auth.txt"
    auth.write_text("mig:s3cret\n")
    creds = [*_client(pki, "source"), "--source-basic-auth-file", str(auth)]
    result = send("run", tmp_path, storescp.port, storescp.aet, tmp_path, *creds, sources=[source])
    assert result.rc == 0, result.tail()
    assert result.totals()["stored"] == FILES
    assert len(storescp.received_files()) == FILES
    assert "s3cret" not in result.output

    # Wrong password: the listing is refused, said once, nothing sent.
    auth.write_text("mig:wrong\n")
    refused = send(
        "run",
        tmp_path,
        storescp.port,
        storescp.aet,
        tmp_path,
        *creds,
        "--job",
        "other",
        sources=[source],
    )
    assert refused.rc != 0, refused.tail()
    assert "refuses our QIDO-RS queries (HTTP 401)" in refused.output, refused.tail()
    assert "--source-basic-auth-file" in refused.output
    assert len(storescp.received_files()) == FILES
