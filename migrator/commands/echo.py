"""``migrator echo``: C-ECHO (verification) against a DICOM node."""

from __future__ import annotations

import time

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
    target = f"{host}:{port} ({called_ae}{', TLS' if tls_context is not None else ''})"
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
        click.echo(f"✗ C-ECHO to {target} failed: {exc}", err=True)
        raise SystemExit(int(ExitStatus.ASSOCIATION_REJECTED)) from None
    except ConnectError as exc:
        click.echo(f"✗ C-ECHO to {target} failed: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    associated = time.perf_counter()
    worst = ExitStatus.OK
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            response = assoc.c_echo()
            rtt = (time.perf_counter() - t0) * 1000
            if response.status == 0:
                click.echo(f"✓ C-ECHO to {target}: Success (0x0000) in {rtt:.1f} ms")
            else:
                worst = ExitStatus.PARTIAL_FAILURE
                click.echo(
                    f"✗ C-ECHO to {target}: {fmt(response.status)} "
                    f"{meaning(response.status)} in {rtt:.1f} ms"
                )
    except ConnectError as exc:
        click.echo(f"✗ C-ECHO to {target} failed: {exc}", err=True)
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    finally:
        assoc.release()
    click.echo(
        f"  association: {(associated - started) * 1000:.1f} ms, peer implementation: "
        f"{assoc.peer_implementation or 'unknown'}"
    )
    raise SystemExit(int(worst))
