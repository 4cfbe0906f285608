"""``migrator store``: send files, folders and S3 prefixes to a PACS (a storescu for people)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from migrator.commands.common import (
    CONCURRENCY,
    DURATION,
    fail,
    fail_config,
    opt,
    report_option,
    send_options,
    settings_from_options,
    setup_logging,
    tls_options,
)
from migrator.commands.dryrun import check_preview_options, coerce_preview, preview_options
from migrator.commands.sourceopts import (
    check_https,
    dicomweb_https_options,
    https_fields,
    source_options,
    study_query,
)
from migrator.errors import ConfigError, MigratorError
from migrator.exitcodes import EXIT_CODES_HELP
from migrator.heap import freeze_set_up
from migrator.outcomes import StoreResult
from migrator.progress import Progress
from migrator.settings import Settings
from migrator.store import StoreScu
from migrator.summary import render_text


def _frozen_then(start: Callable[[int], None]) -> Callable[[int], None]:
    """``start``, after freezing the heap (migrator/heap.py) once the files are inspected
    and before the first is sent: what ``StoreScu.send()`` did itself until it froze a
    library user's heap too. This process is ours, so the command does it, at the same
    point (the inspected files, which live as long as the command, are frozen too)."""

    def started(total: int) -> None:
        freeze_set_up()
        start(total)

    return started


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
    type=CONCURRENCY,
    default="1",
    show_default=True,
    help="Parallel associations (1-64), or auto: as many as the PACS and the link reward "
    "(more while throughput grows, fewer on 0xA7xx, busy rejections or rising latency).",
)
@opt(
    "--max-associations",
    env="MAX_ASSOCIATIONS",
    type=click.IntRange(1),
    default=None,
    help="At most this many simultaneous associations to the PACS (its own limit): "
    "-j auto grows up to it, -j N above it is lowered to it.",
)
@dicomweb_https_options
@source_options
@report_option
@opt(
    "--dry-run",
    env="DRY_RUN",
    is_flag=True,
    help="Send nothing: with --coerce, show what the rules do to a sample of the files "
    "(--sample, values masked unless --show-phi); exit 1 if they fail on one, e.g. "
    "--dir /archive -R --coerce rules.yaml --dry-run.",
)
@preview_options
@click.option("-v", "--verbose", count=True, help="Log each file (-vv: protocol details).")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary's first line and errors.")
def store_command(files: tuple[str, ...], dirs: tuple[str, ...], **o: Any) -> None:
    """Send DICOM files to a PACS with C-STORE, and account for every file.

    Reads only headers to choose presentation contexts, streams files as they are when the
    PACS accepts their transfer syntax, re-encodes losslessly when it does not, retries
    transient failures on fresh associations, and ends with a summary of what was stored,
    what failed and why.

    \b
    Examples:
      migrator store --host pacs --port 104 --called-ae PACS --dir /archive -R
      migrator store --host 10.0.0.5 --called-ae ORTHANC a.dcm b.dcm -j 4
      migrator store --host far-pacs --called-ae PACS --dir /archive -R -j auto \\
          --max-associations 16
      migrator store --host pacs --called-ae PACS --rate-limit 50 --dir /nas/ct -R
      migrator store --host pacs --called-ae PACS s3://archive/2019/ \\
          --s3-endpoint http://minio:9000 --report run.json
      migrator store dicomweb+https://old-pacs/dicom-web --source-token-file tok \\
          --from 2019-01-01 --to 2019-01-31 --host pacs --called-ae PACS
      migrator store --host pacs.example.org --port 2762 --called-ae PACS --tls \\
          --tls-ca ca.pem --tls-cert me.pem --tls-key me.key --dir /archive -R
      migrator store --host pacs --called-ae PACS --dir /archive -R \\
          --coerce rules.yaml --dry-run --sample 50
    """
    verbose, quiet = o["verbose"], o["quiet"]
    setup_logging(verbose, quiet)
    if not files and not dirs:
        fail_config("nothing to send: give FILES, s3://bucket/prefix or --dir DIR")
    for name in ("source_rate_limit", "source_max_associations"):
        if o.get(name) is not None:  # their state is the fleet's Redis, which store has not
            flag = "--" + name.replace("_", "-")
            fail_config(f"{flag} is for jobs (run, plan: shared through Redis), not store")
    settings = settings_from_options(
        o,
        concurrency=o["concurrency"],
        timeout=o["timeout"],
        max_associations=o["max_associations"],
        **https_fields(o),
    )
    check_https(settings)
    check_preview_options(o)
    from migrator.sources import open_source

    try:
        # a file given by name is itself, never walked
        sources = [
            open_source(arg, settings, recursive=False, query=study_query(o)) for arg in files
        ]
        sources += [open_source(d, settings, recursive=o["recursive"]) for d in dirs]
    except ConfigError as exc:
        fail_config(str(exc))
    if o["dry_run"]:
        _dry_run(sources, settings, o)
    progress = Progress(enabled=not quiet and sys.stderr.isatty())
    scu = StoreScu(
        settings,
        on_transfer_started=_frozen_then(progress.start),
        on_file_sent=progress.add,
        on_file_error=progress.add,
    )
    for source in sources:
        scu.add_source(source)
    try:
        result = scu.send()
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        raise SystemExit(130) from None
    except MigratorError as exc:  # a source that cannot be listed (S3 credentials...)
        progress.stop()
        fail(exc)  # (the progress line ends first)
    finally:
        progress.stop()
    _finish(result, settings, tuple(o["report"]), quiet)


def _dry_run(sources: list[Any], settings: Settings, o: dict[str, Any]) -> None:
    from migrator.coerce import preview as pv

    try:
        found = coerce_preview(sources, settings, o)
    except MigratorError as exc:
        fail(exc)
    if o["output_format"] == "json":
        click.echo(json.dumps({"coercion": pv.as_dict(found)}, indent=2))
    else:
        click.echo(pv.render_text(found))
    raise SystemExit(found.exit_status)


def _finish(result: StoreResult, settings: Settings, reports: tuple[str, ...], quiet: bool) -> None:
    text = render_text(result)
    click.echo(text.splitlines()[0] if quiet else text)
    if reports:
        config = {
            "host": settings.host,
            "port": settings.port,
            "called_ae": settings.called_ae,
            "calling_ae": settings.calling_ae,
            "concurrency": settings.concurrency,
            "transfer_syntax": settings.transfer_syntax,
            "retries": settings.retries,
            "tls": settings.tls,
            "dicomweb": settings.dicomweb,
        }
        from migrator.commands.session import write_reports
        from migrator.report import from_store_result

        # The format follows the extension (.html, .csv, .txt); JSON for any other name.
        write_reports(reports, from_store_result(result, config))
    assert result.planned == result.stored + result.failed + result.skipped
    raise SystemExit(int(result.exit_status))
