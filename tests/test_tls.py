"""DICOM TLS end to end: `migrator store`, `run` and `echo` to `migrator scp --tls`.

A throwaway PKI is made per test module with ``cryptography`` (EC P-256: milliseconds):
a CA, the receiver's certificate (valid for 127.0.0.1 and localhost), a client certificate
signed by the CA, and a rogue CA with its own client certificate. Every peer is a real
process: the receiver is `python -m migrator.commands.scp`, the senders the CLI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from migrator import synth
from migrator.dul import wire
from migrator.dul.association import Association, Timeouts
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.pdu import ProposedContext
from migrator.dul.tls import TlsSettings
from migrator.exitcodes import ExitStatus
from tests.enginehelpers import assert_invariant, common_args, finish, only_job, start_run
from tests.peers.migrator_scp import RunningScp, start_migrator_scp
from tests.peers.redis import RedisPeer
from tests.storehelpers import run_migrator, sop_uid

pytestmark = pytest.mark.timeout(120)


# -- a throwaway PKI ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: client certificate + key in one file (no --tls-key needed)
    client_combined: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    #: a server certificate from the right CA for another host name
    wrong_host_cert: Path
    wrong_host_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server_names: list[str] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if server_names:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = _key()
    ca = _cert("Test DICOM CA", ca_key, None, ca=True)
    server_key = _key()
    server = _cert(
        "migrator-scp", server_key, (ca, ca_key), server_names=["127.0.0.1", "localhost"]
    )
    client_key = _key()
    client = _cert("MIGRATOR", client_key, (ca, ca_key), client=True)
    rogue_key = _key()
    rogue = _cert("Rogue CA", rogue_key, None, ca=True)
    rogue_client_key = _key()
    rogue_client = _cert("MIGRATOR", rogue_client_key, (rogue, rogue_key), client=True)
    other_key = _key()
    other = _cert("elsewhere", other_key, (ca, ca_key), server_names=["pacs.example.org"])
    return Pki(
        ca=write("ca.pem", pem(ca)),
        server_cert=write("server.pem", pem(server)),
        server_key=write("server.key", _pem_key(server_key)),
        client_cert=write("client.pem", pem(client)),
        client_key=write("client.key", _pem_key(client_key)),
        client_combined=write("client-combined.pem", pem(client) + _pem_key(client_key)),
        rogue_ca=write("rogue-ca.pem", pem(rogue)),
        rogue_client_cert=write("rogue-client.pem", pem(rogue_client)),
        rogue_client_key=write("rogue-client.key", _pem_key(rogue_client_key)),
        wrong_host_cert=write("wrong-host.pem", pem(other)),
        wrong_host_key=write("wrong-host.key", _pem_key(other_key)),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synth.write_corpus(tmp_path_factory.mktemp("tls-corpus"), count=6, size="tiny", seed=7)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One instance of ~3 MB: several 1 MiB read blocks, many PDUs, over TLS."""
    folder = tmp_path_factory.mktemp("tls-big")
    ds = synth.make_dataset(seed=99, rows=1024, cols=1536)
    return synth.write_dataset(ds, folder / "big.dcm")


def tls_scp(tmp: Path, pki: Pki, *, mutual: bool = True, **kw: str) -> RunningScp:
    args = ["--tls", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    if mutual:
        args += ["--tls-ca", str(pki.ca)]
    return start_migrator_scp(tmp, *args)


def received(scp: RunningScp) -> set[str]:
    return {p.stem for p in scp.output_dir.rglob("*.dcm")}


def store(scp: RunningScp, *args: str | Path, files: list[Path]) -> tuple[int, str]:
    proc = run_migrator(
        "store",
        *common_args((scp.host, scp.port), scp.ae_title),
        "--retries",
        "0",
        *args,
        *files,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


# -- store -> scp ------------------------------------------------------------------------


def test_store_over_mutual_tls_delivers_every_file_byte_for_byte(
    tmp_path: Path, pki: Pki, corpus: list[Path], big_file: Path
) -> None:
    files = [*corpus, big_file]
    with tls_scp(tmp_path, pki) as scp:
        code, out = store(
            scp,
            "--tls",
            "--tls-ca",
            pki.ca,
            "--tls-cert",
            pki.client_cert,
            "--tls-key",
            pki.client_key,
            "-j",
            "2",
            files=files,
        )
        assert code == 0, out
        summary = scp.stop()
    assert received(scp) == {sop_uid(p) for p in files}
    assert "Successful stores: 7" in summary, summary
    # The dataset bytes arrived exactly as sent (the receiver writes them as received).
    written = next(scp.output_dir.rglob(f"{sop_uid(big_file)}.dcm")).read_bytes()
    original = big_file.read_bytes()
    assert written[-len(original) // 2 :] == original[-len(original) // 2 :]
    assert "DICOM TLS only" in scp.log_text()


def test_certificate_and_key_in_one_file_and_env_variables(
    tmp_path: Path, pki: Pki, corpus: list[Path]
) -> None:
    with tls_scp(tmp_path, pki) as scp:
        proc = run_migrator(
            "store",
            *common_args((scp.host, scp.port), scp.ae_title),
            *corpus[:2],
            env={
                "MIGRATOR_TLS": "1",
                "MIGRATOR_TLS_CA": str(pki.ca),
                "MIGRATOR_TLS_CERT": str(pki.client_combined),
            },
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert received(scp) == {sop_uid(p) for p in corpus[:2]}


def test_without_a_client_certificate_the_receiver_refuses(
    tmp_path: Path, pki: Pki, corpus: list[Path]
) -> None:
    with tls_scp(tmp_path, pki) as scp:
        code, out = store(scp, "--tls", "--tls-ca", pki.ca, files=corpus[:2])
        assert code == ExitStatus.CANNOT_CONNECT, out
        assert "TLS" in out and "client certificate" in out, out
        assert "Traceback" not in out
        scp.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: .*certificate")
        assert received(scp) == set()
        _echo_over_tls(scp, pki)  # and it still serves the right clients


def test_a_client_certificate_from_another_ca_is_refused(
    tmp_path: Path, pki: Pki, corpus: list[Path]
) -> None:
    with tls_scp(tmp_path, pki) as scp:
        code, out = store(
            scp,
            "--tls",
            "--tls-ca",
            pki.ca,
            "--tls-cert",
            pki.rogue_client_cert,
            "--tls-key",
            pki.rogue_client_key,
            files=corpus[:2],
        )
        assert code == ExitStatus.CANNOT_CONNECT, out
        assert "TLS with 127.0.0.1" in out or "TLS handshake with 127.0.0.1" in out, out
        assert "unknown CA" in out or "refused our certificate" in out, out
        scp.wait_for_log(r"TLS handshake with .* failed: certificate verification failed")
        assert received(scp) == set()


def test_the_sender_refuses_a_receiver_it_cannot_verify(
    tmp_path: Path, pki: Pki, corpus: list[Path]
) -> None:
    # The receiver's certificate is signed by a CA the sender does not trust...
    with tls_scp(tmp_path / "a", pki, mutual=False) as scp:
        code, out = store(scp, "--tls", "--tls-ca", pki.rogue_ca, files=corpus[:1])
        assert code == ExitStatus.CANNOT_CONNECT, out
        assert "certificate verification failed" in out, out
        assert received(scp) == set()
    # ... or names another host.
    args = ["--tls", "--tls-cert", str(pki.wrong_host_cert), "--tls-key", str(pki.wrong_host_key)]
    with start_migrator_scp(tmp_path / "b", *args) as scp:
        code, out = store(scp, "--tls", "--tls-ca", pki.ca, files=corpus[:1])
        assert code == ExitStatus.CANNOT_CONNECT, out
        assert "IP address mismatch" in out or "Hostname mismatch" in out, out


def test_plain_tcp_to_a_tls_receiver_fails_clearly(
    tmp_path: Path, pki: Pki, corpus: list[Path]
) -> None:
    with tls_scp(tmp_path, pki) as scp:
        t0 = time.monotonic()
        code, out = store(scp, files=corpus[:1])
        assert time.monotonic() - t0 < 20
        assert code == ExitStatus.CANNOT_CONNECT, out
        assert "is it a DICOM TLS port?" in out, out
        assert "Traceback" not in out
        assert received(scp) == set()
        _echo_over_tls(scp, pki)


def test_tls_to_a_plain_receiver_fails_clearly(
    tmp_path: Path, corpus: list[Path], pki: Pki
) -> None:
    with start_migrator_scp(tmp_path) as scp:
        code, out = store(scp, "--tls", "--tls-ca", pki.ca, files=corpus[:1])
        assert code == ExitStatus.CANNOT_CONNECT, out
        assert "TLS handshake with" in out, out
        assert "Traceback" not in out
        assert received(scp) == set()


def test_bad_tls_options_are_usage_errors(tmp_path: Path, pki: Pki, corpus: list[Path]) -> None:
    base = ["store", "--host", "127.0.0.1", "--port", "9", *map(str, corpus[:1])]
    cases = [
        (["--tls-ca", str(pki.ca)], "without --tls"),
        (["--tls", "--tls-ca", str(tmp_path / "missing.pem")], "does not exist"),
        (["--tls", "--tls-key", str(pki.client_key)], "--tls-key needs --tls-cert"),
        (["--tls", "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.server_key)], "key"),
        (["--tls", "--tls-ca", str(pki.client_key)], "no usable PEM certificate"),
    ]
    for extra, expected in cases:
        proc = run_migrator(*base, *extra)
        assert proc.returncode == ExitStatus.BAD_CONFIG, (extra, proc.stderr)
        assert expected in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "PRIVATE KEY" not in proc.stderr
    scp_cases = [
        (["--tls"], "--tls-cert"),
        (["--tls", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)], "key"),
    ]
    for extra, expected in scp_cases:
        proc = run_migrator("scp", "0", "--bind", "127.0.0.1", "-o", tmp_path / "out", *extra)
        assert proc.returncode == ExitStatus.BAD_CONFIG, (extra, proc.stderr)
        assert expected in proc.stderr, (extra, proc.stderr)


def test_tls_options_are_in_the_help() -> None:
    for command, env in (
        ("store", "MIGRATOR_TLS_CA"),
        ("run", "MIGRATOR_TLS_CA"),
        ("echo", "MIGRATOR_TLS_CA"),
        ("scp", "MIGRATOR_SCP_TLS_CA"),
    ):
        proc = run_migrator(command, "--help")
        assert proc.returncode == 0
        for text in ("--tls", "--tls-ca", "--tls-cert", "--tls-key", env):
            assert text in proc.stdout, (command, text)


def test_a_stalled_tls_handshake_does_not_block_other_clients(tmp_path: Path, pki: Pki) -> None:
    """pynetdicom shakes hands in its accept loop; ours does it per connection."""
    with tls_scp(tmp_path, pki) as scp:
        silent = [socket.create_connection((scp.host, scp.port)) for _ in range(3)]
        try:
            t0 = time.monotonic()
            _echo_over_tls(scp, pki)
            assert time.monotonic() - t0 < 5
        finally:
            for s in silent:
                s.close()


def test_a_silent_tls_client_is_closed_after_the_handshake_timeout(
    tmp_path: Path, pki: Pki
) -> None:
    """--handshake-timeout covers the TLS handshake: a client that connects and never
    says hello is closed after it, with one line (not also a "TLS handshake failed")."""
    args = ["--tls", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    with start_migrator_scp(tmp_path, *args, "--handshake-timeout", "1") as scp:
        with socket.create_connection((scp.host, scp.port)) as silent:
            t0 = time.monotonic()
            silent.settimeout(10)
            with contextlib.suppress(OSError):
                while silent.recv(4096):
                    pass
            closed = time.monotonic() - t0
        assert 0.8 < closed < 3, closed
        _echo_over_tls(scp, pki)  # and the receiver serves TLS as before
        scp.wait_for_log(r"no association request within 1 s \(--handshake-timeout\)")
        scp.stop()
    log = scp.log_text()
    assert "TLS handshake with" not in log, log
    assert "Traceback" not in log, log


# -- migrator echo -> scp ----------------------------------------------------------------


def echo(scp: RunningScp, *args: str | Path) -> tuple[int, str, float]:
    """`migrator echo` to ``scp``: exit code, stdout + stderr, seconds taken."""
    t0 = time.monotonic()
    proc = run_migrator(
        "echo",
        scp.host,
        str(scp.port),
        "--called-ae",
        scp.ae_title,
        "--network-timeout",
        "10s",
        "--acse-timeout",
        "10s",
        *args,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def test_echo_over_mutual_tls_succeeds(tmp_path: Path, pki: Pki) -> None:
    client: list[str | Path] = ["--tls-cert", pki.client_cert, "--tls-key", pki.client_key]
    with tls_scp(tmp_path, pki) as scp:
        code, out, _ = echo(scp, "--tls", "--tls-ca", pki.ca, *client, "-c", "3")
        assert code == 0, out
        assert out.count("Success (0x0000)") == 3, out
        assert f"{scp.host}:{scp.port} ({scp.ae_title}, TLS)" in out, out
        # The same from the environment, with certificate and key in one file.
        proc = run_migrator(
            "echo",
            scp.host,
            str(scp.port),
            "--called-ae",
            scp.ae_title,
            env={
                "MIGRATOR_TLS": "1",
                "MIGRATOR_TLS_CA": str(pki.ca),
                "MIGRATOR_TLS_CERT": str(pki.client_combined),
            },
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Success (0x0000)" in proc.stdout


def test_echo_over_tls_is_refused_without_the_right_ca_or_client_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    rogue: list[str | Path] = [
        "--tls-cert",
        pki.rogue_client_cert,
        "--tls-key",
        pki.rogue_client_key,
    ]
    client: list[str | Path] = ["--tls-cert", pki.client_cert, "--tls-key", pki.client_key]
    with tls_scp(tmp_path, pki) as scp:
        # (options, what the error must say): no client certificate (the receiver requires
        # one), one from another CA, a receiver signed by a CA we do not trust, plain TCP.
        cases: list[tuple[list[str | Path], tuple[str, ...]]] = [
            (["--tls", "--tls-ca", pki.ca], ("client certificate",)),
            (["--tls", "--tls-ca", pki.ca, *rogue], ("unknown CA", "refused our certificate")),
            (["--tls", "--tls-ca", pki.rogue_ca, *client], ("certificate verification failed",)),
            ([], ("is it a DICOM TLS port?",)),
        ]
        for args, expected in cases:
            code, out, took = echo(scp, *args)
            assert code == ExitStatus.CANNOT_CONNECT, (args, out)
            assert any(text in out for text in expected), (args, out)
            assert "Success" not in out and "Traceback" not in out, (args, out)
            assert took < 20, (args, took)
        scp.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: .*certificate")
        _echo_over_tls(scp, pki)  # and it still serves the right clients


def test_echo_tls_options_are_checked_before_connecting(tmp_path: Path, pki: Pki) -> None:
    base = ["echo", "127.0.0.1", "9"]  # nothing is reached: every case is a usage error
    cases = [
        (["--tls-ca", str(pki.ca)], "without --tls"),
        (["--tls", "--tls-ca", str(tmp_path / "missing.pem")], "does not exist"),
        (["--tls", "--tls-key", str(pki.client_key)], "--tls-key needs --tls-cert"),
        (["--tls", "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.server_key)], "key"),
    ]
    for extra, expected in cases:
        proc = run_migrator(*base, *extra)
        assert proc.returncode == ExitStatus.BAD_CONFIG, (extra, proc.stderr)
        assert expected in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr and "PRIVATE KEY" not in proc.stderr


# -- the library requestor over TLS ------------------------------------------------------


ECHO_CONTEXTS = [ProposedContext(1, VERIFICATION_SOP_CLASS, ("1.2.840.10008.1.2",))]
FAST = Timeouts(connect=5, acse=5, dimse=5, network=5)


def _tls_association(scp: RunningScp, pki: Pki) -> Association:
    settings = TlsSettings(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    return Association.request(
        scp.host,
        scp.port,
        scp.ae_title,
        "TLSTEST",
        ECHO_CONTEXTS,
        timeouts=FAST,
        tls=settings.client_context(),
    )


def _echo_over_tls(scp: RunningScp, pki: Pki) -> None:
    assoc = _tls_association(scp, pki)
    try:
        assert assoc.tls
        assert assoc.c_echo().status == 0
    finally:
        assoc.release()


def test_tls_associations_write_joined_buffers_and_plain_ones_keep_sendmsg(
    tmp_path: Path, pki: Pki
) -> None:
    """SSLSocket has no sendmsg; plain TCP keeps its one-syscall gathering write."""
    with tls_scp(tmp_path / "tls", pki) as scp:
        assoc = _tls_association(scp, pki)
        try:
            assert assoc.tls and assoc._send_bufs is wire.sendall_tls
            for _ in range(3):
                assert assoc.c_echo().status == 0
        finally:
            assoc.release()
    with start_migrator_scp(tmp_path / "plain") as scp:
        assoc = Association.request(
            scp.host, scp.port, scp.ae_title, "PLAIN", ECHO_CONTEXTS, timeouts=FAST
        )
        try:
            assert not assoc.tls and assoc._send_bufs is wire.sendmsg_all
            assert assoc.c_echo().status == 0
        finally:
            assoc.release()


class _RecordingSocket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def test_tls_writes_are_bounded_whatever_the_message_size() -> None:
    """A 1 MiB read block split in 16 KiB PDUs: ~256 KiB writes, bytes in order."""
    bufs: list[bytes | memoryview] = []
    payload = memoryview(bytes(range(256)) * 4096)  # 1 MiB
    wire.append_fragments(bufs, 3, payload, 16378, command=False, final=True)
    sock = _RecordingSocket()
    wire.sendall_tls(sock, bufs)  # type: ignore[arg-type]
    assert b"".join(sock.writes) == b"".join(bytes(b) for b in bufs)
    assert max(map(len, sock.writes)) <= wire.TLS_WRITE + 16384
    assert len(sock.writes) <= 1024 * 1024 // wire.TLS_WRITE + 1


# -- migrator run ------------------------------------------------------------------------


def test_run_with_local_workers_over_tls(
    tmp_path: Path, pki: Pki, corpus: list[Path], redis_server: RedisPeer
) -> None:
    with tls_scp(tmp_path / "scp", pki) as scp:
        source = corpus[0].parent
        tls_args = [
            "--tls",
            "--tls-ca",
            str(pki.ca),
            "--tls-cert",
            str(pki.client_cert),
            "--tls-key",
            str(pki.client_key),
        ]
        proc = start_run(
            source,
            *common_args((scp.host, scp.port), scp.ae_title),
            "--redis-url",
            redis_server.url,
            "--workers",
            "1",
            *tls_args,
        )
        code, out = finish(proc, timeout=90)
        assert code == 0, out
        assert received(scp) == {sop_uid(p) for p in corpus}
        ledger = only_job(redis_server.client())
        counts = assert_invariant(ledger)
        assert counts["stored"] == len(corpus)
        config = ledger.config()
        assert config["tls"] is True
        assert config["tls_key"] == str(pki.client_key)  # a path, never the key itself
        assert "PRIVATE KEY" not in str(config)
        # Resuming the job without --tls is refused, not silently sent in plain TCP.
        proc = start_run(
            source,
            *common_args((scp.host, scp.port), scp.ae_title),
            "--redis-url",
            redis_server.url,
            "--workers",
            "1",
        )
        code, out = finish(proc, timeout=60)
        assert code == ExitStatus.BAD_CONFIG, out
        assert "created with TLS" in out, out


def test_a_worker_without_the_tls_files_cannot_connect_rather_than_crash(tmp_path: Path) -> None:
    """Paths in the job config name files on each worker; a worker lacking them fails the
    association (the batch is retried later, maybe elsewhere), it does not raise a
    configuration error out of the task."""
    from migrator.errors import ConnectError
    from migrator.settings import Settings
    from migrator.transfer.dimse import DimseDestination

    config = Settings(host="127.0.0.1", port=9, tls=True, tls_ca=str(tmp_path / "absent.pem"))
    pair = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1")
    with pytest.raises(ConnectError, match=r"TLS on this sender: .*absent\.pem does not exist"):
        DimseDestination(config).connect(pair, {pair})
    assert Settings.from_dict(config.to_dict()) == config
    assert Settings.from_dict({"host": "h"}).tls_settings is None  # jobs made before TLS


def test_a_peer_that_never_answers_or_resets_the_association_request(tmp_path: Path) -> None:
    """Found while adding TLS: a timeout or a reset while waiting for A-ASSOCIATE-AC escaped
    Association.request as a bare OSError, killed `store`'s sending thread and lost the
    file from the summary (planned 0, exit 5). Now it is a ConnectError: exit 3, every
    file failed with the reason."""
    import threading

    files = synth.write_corpus(tmp_path / "c", count=2, size="tiny", seed=5)
    for behaviour, expected in (("silent", "ACSE timeout"), ("reset", "connection")):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        held: list[socket.socket] = []

        def serve(
            listener: socket.socket = listener,
            behaviour: str = behaviour,
            held: list[socket.socket] = held,
        ) -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = listener.accept()
                    if behaviour == "reset":
                        conn.recv(65536)
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                        conn.close()  # RST
                    else:
                        held.append(conn)

        threading.Thread(target=serve, daemon=True).start()
        try:
            proc = run_migrator(
                "store",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--acse-timeout",
                "1s",
                "--retries",
                "0",
                *files,
                timeout=60,
            )
        finally:
            listener.close()
            for conn in held:
                conn.close()
        out = proc.stdout + proc.stderr
        assert proc.returncode == ExitStatus.CANNOT_CONNECT, (behaviour, out)
        assert "Traceback" not in out, out
        assert "planned 2 = stored 0 + failed 2" in out, out
        assert expected in out, (behaviour, out)
