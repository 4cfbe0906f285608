"""``migrator report``: a job's report, from its ledger, in any format, at any moment."""

from __future__ import annotations

import click

from migrator.commands.common import fail_config, opt
from migrator.commands.jobs import _ledger, _safe_url, redis_option
from migrator.exitcodes import ExitStatus


@click.command("report")
@click.argument("job")
@redis_option
@opt(
    "--format",
    "fmt",
    env="REPORT_FORMAT",
    type=click.Choice(["text", "json", "csv", "html"]),
    default=None,
    help="text: the summary with failures by DICOM status; json: everything, machine-"
    "readable; csv: one row per file not stored; html: one self-contained page with charts. "
    "Default: from the --output extension, text without --output.",
)
@opt(
    "--output",
    "-o",
    env="REPORT_OUTPUT",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write here instead of standard output (replaced atomically).",
)
@opt(
    "--no-file-list",
    env="REPORT_NO_FILE_LIST",
    is_flag=True,
    help="JSON without the per-file list (for jobs of millions of files; the CSV lists "
    "the files not stored).",
)
def report_command(
    job: str, redis_url: str, fmt: str | None, output: str | None, no_file_list: bool
) -> None:
    """Report on a job from its ledger: totals, failures by DICOM status, SOP classes,
    syntaxes, throughput, workers, C-STORE latency.

    Works while the job runs (files without an outcome are reported as in flight) and
    from any machine pointed at the job's Redis. Secrets in the job's configuration and
    in URLs are masked.

    \b
    Examples:
      migrator report job-3f2a9c01de --redis-url redis://redis:6379/0
      migrator report job-3f2a9c01de -o job.html        # charts, one file, no network
      migrator report job-3f2a9c01de --format csv -o not-stored.csv
      migrator report job-3f2a9c01de --format json | jq .totals

    Exit codes: 0 report made (whatever the job's state); 2 unknown job or bad
    arguments; 3 Redis unreachable.
    """
    from migrator.report import format_for_path, from_ledger, render, write_atomic

    fmt = fmt or (format_for_path(output, default="text") if output else "text")
    ledger = _ledger(redis_url, job)
    try:
        data = from_ledger(
            ledger, keep_files=fmt == "json" and not no_file_list, redis_url=redis_url
        )
    except Exception as exc:  # redis errors after the first contact: the server went away
        click.echo(
            f"migrator: error: reading job {job} from {_safe_url(redis_url)}: {exc}", err=True
        )
        raise SystemExit(int(ExitStatus.CANNOT_CONNECT)) from None
    content = render(data, fmt)
    if output is None:
        click.echo(content, nl=False)
        return
    try:
        write_atomic(output, content)
    except OSError as exc:
        fail_config(f"cannot write {output}: {exc}")
    click.echo(f"{job}: {fmt} report written to {output}", err=True)
