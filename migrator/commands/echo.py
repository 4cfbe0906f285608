"""``migrator echo``: C-ECHO (verification) against a DICOM node."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from migrator.commands.common import (
    fail_config,
    opt,
    peer_options,
    setup_logging,
    tls_options,
    tls_settings,
)
from migrator.dicomfile import IMPLICIT_LE
from migrator.dul.association import Association, Timeouts
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.pdu import ProposedContext
from migrator.errors import AssociationRejected, ConfigError, ConnectError
from migrator.exitcodes import ExitStatus
from migrator.status import fmt, meaning

if TYPE_CHECKING:
    import ssl

    from migrator.settings import Settings


def target(host: str, port: int, called_ae: str, tls: bool) -> str:
    """How `echo` (and the preflight of `run`) names the node in its messages."""
    return f"{host}:{port} ({called_ae}{', TLS' if tls else ''})"


def preflight(settings: Settings) -> tuple[str, ExitStatus] | None:
    """C-ECHO to a job's destination before anything is planned (`run`, `plan`, `retry`;
    a DICOMweb destination gets one QIDO-RS request instead, ``dicomweb_preflight``):
    None when it answers; else the line `migrator echo` prints and its exit status (3: it
    cannot be reached, 4: it rejects the association), within the connect and ACSE
    timeouts. A PACS that accepts the association but not the Verification SOP class
    passes: the association is what a C-STORE needs. TLS files that cannot be read here
    (a cluster's workers have their own) skip the check."""
    if settings.dicomweb is not None:
        from migrator.dicomweb.preflight import dicomweb_preflight

        return dicomweb_preflight(settings)
    context: ssl.SSLContext | None = None
    if settings.tls_settings is not None:
        try:
            context = settings.tls_settings.client_context()
        except ConfigError:
            return None
    where = target(settings.host, settings.port, settings.called_ae, context is not None)
    try:
        assoc = Association.request(
            settings.host,
            settings.port,
            settings.called_ae,
            settings.calling_ae,
            [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,))],
            timeouts=settings.timeouts,
            tls=context,
        )
    except AssociationRejected as exc:
        return f"✗ C-ECHO to {where} failed: {exc}", ExitStatus.ASSOCIATION_REJECTED
    except ConnectError as exc:
        return f"✗ C-ECHO to {where} failed: {exc}", ExitStatus.CANNOT_CONNECT
    try:
        if assoc.accepted_syntaxes(VERIFICATION_SOP_CLASS):
            assoc.c_echo()
    except ConnectError as exc:
        return f"✗ C-ECHO to {where} failed: {exc}", ExitStatus.CANNOT_CONNECT
    finally:
        assoc.release()
    return None


@click.command("echo")
@click.argument("host", envvar="MIGRATOR_HOST")
@click.argument("port", type=click.IntRange(1, 65535), default=11112, required=False)
@peer_options
@tls_options
@opt(
    "--count",
    "-c",
    env="ECHO_COUNT",
    type=click.IntRange(1, 10000),
    default=1,
    show_default=True,
    help="Number of C-ECHO requests on the association.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for protocol details).")
def echo_command(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    acse_timeout: float,
    dimse_timeout: float,
    network_timeout: float,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    count: int,
    verbose: int,
) -> None:
    """Check that a DICOM node answers C-ECHO (like DCMTK echoscu).

    \b
    Examples:
      migrator echo pacs.example.org 104 --called-ae PACS
      migrator echo 127.0.0.1 4242 --called-ae ORTHANC --calling-ae MIGRATOR -c 5
      migrator echo pacs.example.org 2762 --called-ae PACS --tls --tls-ca ca.pem
      migrator echo pacs.example.org 2762 --called-ae PACS --tls --tls-ca ca.pem \\
          --tls-cert me.pem --tls-key me.key

    Exit codes: 0 success; 1 the node answered a non-success status; 2 bad arguments (also
    unreadable or mismatched TLS files); 3 cannot connect (refused, unreachable, timeout,
    aborted, TLS handshake refused); 4 association rejected (the reason is printed).
    """
    setup_logging(verbose, False)
    try:
        tls_config = tls_settings(tls, tls_ca, tls_cert, tls_key)
        # Unreadable or mismatched files: exit 2 now, not a "cannot connect" later.
        tls_context = tls_config.client_context() if tls_config is not None else None
    except ConfigError as exc:
        fail_config(str(exc))
        return
    timeouts = Timeouts(
        connect=network_timeout, acse=acse_timeout, dimse=dimse_timeout, network=network_timeout
    )
    where = target(host, port, called_ae, tls_context is not None)
    started = time.perf_counter()
    try:
        assoc = Association.request(
            host,
            port,
            called_ae,
            calling_ae,
            [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,))],
            timeouts=timeouts,
            tls=tls_context,
        )
    except AssociationRejected as exc:
        click.echo(f"✗ C-ECHO to {where} failed: {exc}", err=True)
        raise SystemExit(int(ExitStatus.ASSOCIATION_REJECTED)) from None
    except ConnectError as exc:
        click.echo(f"✗ C-ECHO to {where} failed: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    associated = time.perf_counter()
    worst = ExitStatus.OK
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            response = assoc.c_echo()
            rtt = (time.perf_counter() - t0) * 1000
            if response.status == 0:
                click.echo(f"✓ C-ECHO to {where}: Success (0x0000) in {rtt:.1f} ms")
            else:
                worst = ExitStatus.PARTIAL_FAILURE
                click.echo(
                    f"✗ C-ECHO to {where}: {fmt(response.status)} "
                    f"{meaning(response.status)} in {rtt:.1f} ms"
                )
    except ConnectError as exc:
        click.echo(f"✗ C-ECHO to {where} failed: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    finally:
        assoc.release()
    click.echo(
        f"  association: {(associated - started) * 1000:.1f} ms, peer implementation: "
        f"{assoc.peer_implementation or 'unknown'}"
    )
    raise SystemExit(int(worst))
