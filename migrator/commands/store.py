"""``migrator store``: send files, folders and S3 prefixes to a PACS (a storescu for people)."""

from __future__ import annotations

import sys

import click

from migrator.commands.common import (
    DURATION,
    fail_config,
    opt,
    report_option,
    send_options,
    setup_logging,
    tls_options,
    tls_settings,
)
from migrator.dul.association import Timeouts
from migrator.errors import ConfigError
from migrator.exitcodes import EXIT_CODES_HELP
from migrator.limits.rate import Limits
from migrator.outcomes import FileOutcome, StoreResult
from migrator.progress import Progress
from migrator.store import StoreScu, StoreSettings
from migrator.summary import render_text
from migrator.syntaxes import resolve


@click.command("store", epilog=EXIT_CODES_HELP)
@click.argument("files", nargs=-1, metavar="[FILES|s3://bucket/prefix]...")
@opt(
    "--dir",
    "dirs",
    env="DIR",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Send every file in this folder (repeatable).",
)
@opt("-R", "--recursive", env="RECURSIVE", is_flag=True, help="Descend into sub-folders.")
@send_options
@tls_options
@opt(
    "--timeout",
    env="TIMEOUT",
    type=DURATION,
    default=None,
    help="Overall deadline for the whole transfer (e.g. 30s, 5m, 2h); files not sent by "
    "then are reported as failed.",
)
@opt(
    "--concurrency",
    "-j",
    env="CONCURRENCY",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Parallel associations.",
)
@report_option
@click.option("-v", "--verbose", count=True, help="Log each file (-vv: protocol details).")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary's first line and errors.")
def store_command(
    files: tuple[str, ...],
    dirs: tuple[str, ...],
    recursive: bool,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    acse_timeout: float,
    dimse_timeout: float,
    network_timeout: float,
    timeout: float | None,
    max_pdu: int,
    rate_limit: float | None,
    rate_limit_bytes: float | None,
    burst: int,
    concurrency: int,
    throttle_delay: float,
    transfer_syntax: str | None,
    allow_lossy_decompression: bool,
    retries: int,
    s3_endpoint: str | None,
    s3_region: str | None,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    report: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Send DICOM files to a PACS with C-STORE, and account for every file.

    Reads only headers to choose presentation contexts, streams files as they are when the
    PACS accepts their transfer syntax, re-encodes losslessly when it does not, retries
    transient failures on fresh associations, and ends with a summary of what was stored,
    what failed and why.

    \b
    Examples:
      migrator store --host pacs --port 104 --called-ae PACS --dir /archive -R
      migrator store --host 10.0.0.5 --called-ae ORTHANC a.dcm b.dcm -j 4
      migrator store --host pacs --called-ae PACS --rate-limit 50 --dir /nas/ct -R
      migrator store --host pacs --called-ae PACS s3://archive/2019/ \\
          --s3-endpoint http://minio:9000 --report run.json
      migrator store --host pacs.example.org --port 2762 --called-ae PACS --tls \\
          --tls-ca ca.pem --tls-cert me.pem --tls-key me.key --dir /archive -R
    """
    setup_logging(verbose, quiet)
    if not files and not dirs:
        fail_config("nothing to send: give FILES, s3://bucket/prefix or --dir DIR")
    try:
        limits = Limits(
            files_per_s=rate_limit,
            bytes_per_s=rate_limit_bytes * 1e6 if rate_limit_bytes else None,
            burst_files=burst,
        )
        forced = resolve(transfer_syntax) if transfer_syntax else None
        tls_config = tls_settings(tls, tls_ca, tls_cert, tls_key)
        if tls_config is not None:
            tls_config.client_context()  # unreadable or mismatched files: exit 2 now
    except ConfigError as exc:
        fail_config(str(exc))
        return
    settings = StoreSettings(
        host=host,
        port=port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        timeout=timeout,
        timeouts=Timeouts(
            connect=network_timeout,
            acse=acse_timeout,
            dimse=dimse_timeout,
            network=network_timeout,
        ),
        max_pdu=max_pdu,
        limits=limits,
        concurrency=concurrency,
        throttle_delay=throttle_delay / 1000.0,
        transfer_syntax=forced,
        allow_lossy=allow_lossy_decompression,
        retries=retries,
        tls=tls_config,
    )
    progress = Progress(enabled=not quiet and sys.stderr.isatty())

    def on_error(outcome: FileOutcome) -> None:
        progress.add(outcome)
        if verbose:
            click.echo(f"  ✗ {outcome.uri}: {outcome.state}: {outcome.reason}", err=True)

    scu = StoreScu(
        settings,
        on_transfer_started=progress.start,
        on_file_sent=progress.add,
        on_file_error=on_error,
    )
    s3_settings = None
    for arg in files:
        if arg.startswith("s3://"):
            if s3_settings is None:
                from migrator.sources.s3 import S3Settings

                s3_settings = S3Settings(endpoint_url=s3_endpoint, region=s3_region)
            try:
                scu.add_s3(arg, s3_settings)
            except ConfigError as exc:
                fail_config(str(exc))
        else:
            scu.add_file(arg)
    for folder in dirs:
        scu.add_folder(folder, recursive=recursive)
    try:
        result = scu.send()
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        raise SystemExit(130) from None
    finally:
        progress.stop()
    _finish(result, settings, report, quiet)


def _finish(result: StoreResult, settings: StoreSettings, report: str | None, quiet: bool) -> None:
    text = render_text(result)
    click.echo(text.splitlines()[0] if quiet else text)
    if report:
        config = {
            "host": settings.host,
            "port": settings.port,
            "called_ae": settings.called_ae,
            "calling_ae": settings.calling_ae,
            "concurrency": settings.concurrency,
            "transfer_syntax": settings.transfer_syntax,
            "retries": settings.retries,
            "tls": settings.tls is not None,
        }
        from migrator.report import from_store_result, write_report

        # The format follows the extension (.html, .csv, .txt); JSON for any other name.
        write_report(report, from_store_result(result, config))
    assert result.planned == result.stored + result.failed + result.skipped
    raise SystemExit(int(result.exit_status))
